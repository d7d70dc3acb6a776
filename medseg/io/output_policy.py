"""The one output policy of every medseg command and API function that writes.

1. **Never write onto an input.** An output file may not be an input file: paths are compared
   resolved (``..``, ``./``, symlinks) *and* with :func:`os.path.samefile` (hard links, bind
   mounts). An output may not lie inside an input folder (a DICOM series folder, a study
   folder), and an output folder may not contain an input.
2. **Never overwrite an existing output unless asked** (``--overwrite`` on the command line,
   ``overwrite=True`` in the API). Folders that a command fills (``export``, ``uncertainty``,
   ``evaluate``) count as existing when the files it would write are there.
3. **Write atomically** (:func:`medseg.io.atomic.atomic_path`): a reader never sees a
   half-written file, and a failed write leaves the previous file untouched.
4. A file output that is an existing folder (``out.nii.gz/``), or a folder output that is an
   existing file, is a named :class:`~medseg.core.errors.OutputError`, never ``IsADirectoryError``.

Inputs are registered for a whole command with :func:`protect_inputs`; every
:func:`~medseg.io.atomic.atomic_path` under it refuses a target that collides with one, so a
file a command writes beside its main output (label-table sidecar, probabilities) is covered
too. API writers also protect the files their volume was read from (``meta["source"]``,
``meta["files"]``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from medseg.core.errors import OutputError, OutputExistsError

__all__ = [
    "protect_inputs",
    "protected_inputs",
    "same_path",
    "is_inside",
    "check_output_file",
    "check_output_dir",
    "check_target",
    "inputs_of",
]

_PROTECTED: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("medseg_protected_inputs", default=())

OVERWRITE_FIX = "pass --overwrite (overwrite=True in the API) to replace it, or choose another path"


def _resolve(path: str | Path) -> Path:
    try:
        return Path(os.path.abspath(path)).resolve()
    except (OSError, RuntimeError):  # symlink loop: compare unresolved
        return Path(os.path.abspath(path))


def same_path(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name the same file: equal resolved paths, or the same inode."""
    if _resolve(a) == _resolve(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def is_inside(child: str | Path, folder: str | Path) -> bool:
    """True when ``child`` lies at any depth inside ``folder`` (resolved; an ancestor may be the same inode)."""
    c, f = _resolve(child), _resolve(folder)
    if c != f and f in c.parents:
        return True
    if not Path(folder).is_dir():
        return False
    for parent in _resolve(child).parents:
        if parent.exists() and same_path(parent, folder):
            return True
    return False


def inputs_of(*objects: object) -> list[Path]:
    """Source paths recorded in volumes'/segmentations' ``meta`` (``source`` and ``files``)."""
    out: list[Path] = []
    for obj in objects:
        if obj is None:
            continue
        meta = getattr(obj, "meta", None)
        if meta is None:
            vol = getattr(obj, "label_map", None)
            meta = getattr(vol, "meta", None)
        if not meta:
            continue
        if meta.get("source"):
            out.append(Path(meta["source"]))
        out.extend(Path(f) for f in meta.get("files", ()) or () if isinstance(f, (str, os.PathLike)))
    return out


@contextlib.contextmanager
def protect_inputs(paths: Iterable[Optional[str | Path]]) -> Iterator[tuple[Path, ...]]:
    """Within the block, every atomic write refuses a target that is (or lies inside) one of ``paths``."""
    new = tuple(Path(p) for p in paths if p)
    token = _PROTECTED.set(_PROTECTED.get() + new)
    try:
        yield _PROTECTED.get()
    finally:
        _PROTECTED.reset(token)


def protected_inputs() -> tuple[Path, ...]:
    """The inputs registered by the enclosing :func:`protect_inputs` blocks."""
    return _PROTECTED.get()


def _refuse_input_collision(path: Path, inputs: Sequence[Path], *, folder: bool) -> None:
    for inp in inputs:
        if not os.path.lexists(inp):
            continue
        if same_path(path, inp):
            raise OutputError(path, f"is the input {inp}; writing here would destroy it",
                              "write the output to another path")
        if inp.is_dir() and is_inside(path, inp):
            raise OutputError(path, f"lies inside the input folder {inp}, which medseg never writes into",
                              "write the output outside the input folder")
        if folder and is_inside(inp, path):
            raise OutputError(path, f"the output folder contains the input {inp}, which could be overwritten",
                              "choose an output folder that does not hold the inputs")


def _refuse_file_in_the_way(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(path, f"its parent {parent} is a file, not a folder",
                                  "choose an output path in a folder")
            return


def check_output_file(path: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> Path:
    """Check that ``path`` may be written as a file; returns it as a Path.

    Raises
    ------
    OutputError
        ``path`` is an existing folder, is an input (same resolved path or inode), lies inside
        an input folder, or has a file in place of a parent folder.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(p, "is an existing folder, but a file is to be written here",
                          f"give a file path, e.g. {p / 'labels.nii.gz'}")
    _refuse_input_collision(p, [Path(i) for i in inputs] + list(protected_inputs()), folder=False)
    _refuse_file_in_the_way(p)
    if os.path.lexists(p) and not overwrite:
        raise OutputExistsError(p, "exists", OVERWRITE_FIX)
    return p


def check_output_dir(
    path: str | Path,
    *,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    will_write: Iterable[str] = (),
) -> Path:
    """Check that folder ``path`` may receive outputs; returns it as a Path (not created).

    Parameters
    ----------
    path : str or Path
    inputs : paths
        Inputs of the command (beyond those of :func:`protect_inputs`).
    overwrite : bool
        Allow replacing files of ``will_write`` that exist.
    will_write : names
        Relative names the caller will write; any that exists is refused unless ``overwrite``.

    Raises
    ------
    OutputError
        ``path`` is a file, is an input, lies inside an input folder, or contains an input.
    OutputExistsError
        A file of ``will_write`` exists and ``overwrite`` is False.
    """
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise OutputError(p, "is an existing file, but an output folder is expected here",
                          "give a folder path (it is created)")
    _refuse_input_collision(p, [Path(i) for i in inputs] + list(protected_inputs()), folder=True)
    _refuse_file_in_the_way(p)
    if not overwrite and p.is_dir():
        existing = sorted(n for n in will_write if os.path.lexists(p / n))
        if existing:
            raise OutputExistsError(p, f"already holds {', '.join(existing[:4])}"
                                       f"{' ...' if len(existing) > 4 else ''}", OVERWRITE_FIX)
    return p


def check_target(path: str | Path, *, overwrite: bool = True) -> None:
    """The check :func:`~medseg.io.atomic.atomic_path` runs on every target before writing."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(p, "is an existing folder, but a file is to be written here",
                          f"give a file path, e.g. {p / 'labels.nii.gz'}")
    _refuse_input_collision(p, list(protected_inputs()), folder=False)
    _refuse_file_in_the_way(p)
    if not overwrite and os.path.lexists(p):
        raise OutputExistsError(p, "exists", OVERWRITE_FIX)
