"""Atomic file writes: a reader never sees a half-written output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "full_suffix"]


def full_suffix(path: str | Path) -> str:
    """Lower-case suffix including double ones such as ``.nii.gz``."""
    name = Path(path).name.lower()
    for s in (".nii.gz", ".seg.nrrd", ".tar.gz"):
        if name.endswith(s):
            return s
    return Path(name).suffix


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary file keeps the target's suffix so that writers choosing a format by
    extension still work. On any exception the temporary file is removed and ``path`` is
    left untouched. Before anything is created the output policy is applied
    (:func:`medseg.io.output_policy.check_target`): ``path`` may not be a folder nor an input
    registered with :func:`~medseg.io.output_policy.protect_inputs`, and with
    ``overwrite=False`` it may not exist.
    """
    from medseg.io.output_policy import check_target

    target = Path(path)
    check_target(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".partial{full_suffix(target)}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
