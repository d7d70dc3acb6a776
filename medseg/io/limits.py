"""Resource limits checked *before* allocating: a header's declared size against a memory limit.

Every reader computes the bytes a file declares (dimensions × bytes per voxel, from the header
alone) and calls :func:`check_declared_size` before reading pixels. A NIfTI header claiming
54 TB, a 9 MB ``.nii.gz`` that inflates to 2 GiB, or a DICOM with Rows = Columns = 65535 is
refused with :class:`~medseg.core.errors.ResourceLimitError` naming the header fields and the limit,
instead of failing inside an allocation (or swapping the machine to a halt).

The limit, in bytes:

1. :func:`set_max_volume_bytes` (or the :func:`max_volume_bytes_limit` context manager) in
   the API;
2. else the environment variable ``MEDSEG_MAX_VOLUME_BYTES`` (an integer, or with a suffix
   ``K``/``M``/``G``/``T``, powers of 1024: ``MEDSEG_MAX_VOLUME_BYTES=4G``);
3. else :data:`DEFAULT_FRACTION` of the memory available when the check runs
   (``psutil.virtual_memory().available``, else ``MemAvailable`` of ``/proc/meminfo``).

Decompression is bounded by the same check: gzip-compressed NIfTI is inflated by nibabel only
up to the byte count its header declares, and that count has passed the limit first.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, Optional, Sequence

from medseg.core.errors import InputError, ResourceLimitError

__all__ = [
    "ENV_VAR",
    "DEFAULT_FRACTION",
    "available_memory",
    "max_volume_bytes",
    "set_max_volume_bytes",
    "max_volume_bytes_limit",
    "check_declared_size",
    "human_bytes",
]

ENV_VAR = "MEDSEG_MAX_VOLUME_BYTES"
#: share of the available memory one volume may declare when no limit is configured
DEFAULT_FRACTION = 0.5
_FALLBACK_AVAILABLE = 8 * 1024**3
_SUFFIX = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

_LIMIT: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("medseg_max_volume_bytes", default=None)
_GLOBAL: list[Optional[int]] = [None]


def human_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (psutil, else /proc/meminfo, else 8 GiB)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a dependency of dask.distributed
        pass
    try:  # pragma: no cover
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return _FALLBACK_AVAILABLE  # pragma: no cover


def _parse(text: str) -> int:
    t = text.strip().upper().removesuffix("IB").removesuffix("B") if text.strip() else ""
    num, suffix = (t[:-1], t[-1]) if t and t[-1] in _SUFFIX else (t, "")
    try:
        value = float(num) * _SUFFIX[suffix]
    except ValueError:
        raise InputError(f"{ENV_VAR}={text!r}: expected a number of bytes such as 4000000000 or 4G") from None
    if value <= 0:
        raise InputError(f"{ENV_VAR}={text!r}: the limit must be positive")
    return int(value)


def max_volume_bytes() -> tuple[int, str]:
    """The limit in bytes and where it comes from (for error messages)."""
    value = _LIMIT.get()
    if value is not None:
        return value, "set with medseg.io.limits.max_volume_bytes_limit"
    if _GLOBAL[0] is not None:
        return _GLOBAL[0], "set with medseg.io.limits.set_max_volume_bytes"
    env = os.environ.get(ENV_VAR)
    if env:
        return _parse(env), f"{ENV_VAR}={env}"
    avail = available_memory()
    return int(avail * DEFAULT_FRACTION), f"{DEFAULT_FRACTION:.0%} of the {human_bytes(avail)} of memory available"


def set_max_volume_bytes(limit: Optional[int]) -> None:
    """Set the process-wide limit in bytes (None: back to the environment variable / default)."""
    if limit is not None and limit <= 0:
        raise InputError(f"max volume bytes must be positive, got {limit}")
    _GLOBAL[0] = None if limit is None else int(limit)


@contextlib.contextmanager
def max_volume_bytes_limit(limit: Optional[int]) -> Iterator[None]:
    """Within the block (this thread/task), volumes may declare at most ``limit`` bytes."""
    if limit is not None and limit <= 0:
        raise InputError(f"max volume bytes must be positive, got {limit}")
    token = _LIMIT.set(None if limit is None else int(limit))
    try:
        yield
    finally:
        _LIMIT.reset(token)


def check_declared_size(path: object, shape: Sequence[int], bytes_per_voxel: float, *, fields: str) -> int:
    """Refuse an input whose header declares more bytes than the limit; returns the declared bytes.

    Parameters
    ----------
    path : path-like
        The file, for the message.
    shape : ints
        Declared dimensions (any order).
    bytes_per_voxel : float
        Bytes of one voxel as it will be held in memory (all components).
    fields : str
        The header fields the shape and type come from, e.g. ``"dim[1..3], datatype"``.

    Raises
    ------
    ResourceLimitError
        Negative dimensions, or more bytes than :func:`max_volume_bytes`.
    """
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise ResourceLimitError(path, f"header {fields} declares negative dimensions {tuple(dims)}",
                                 "the header is corrupt")
    n = 1
    for d in dims:
        n *= d
    declared = int(n * bytes_per_voxel)
    limit, source = max_volume_bytes()
    if declared > limit:
        raise ResourceLimitError(
            path, f"header {fields} declares {' x '.join(map(str, dims))} voxels of {bytes_per_voxel:g} bytes = "
                  f"{human_bytes(declared)}, above the memory limit of {human_bytes(limit)} ({source})",
            f"if the file is genuine, raise the limit ({ENV_VAR}=<bytes>, e.g. {ENV_VAR}="
            f"{max(1, -(-declared // 1024**3))}G, or medseg.io.limits.set_max_volume_bytes); otherwise the header "
            f"is corrupt")
    return declared
