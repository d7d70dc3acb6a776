"""Pickling with large numpy arrays in POSIX shared memory instead of the pipe.

Pickling a 512 × 512 × 300 volume copies it into a bytes object while holding the GIL (and
unpickling the result copies it again), which froze a GUI thread as much as the work moved to
another process. Arrays of at least :data:`SHARE_MIN_BYTES` are pickled as references to
:mod:`multiprocessing.shared_memory` blocks: the sender copies the array into a new block with
``np.copyto`` (which releases the GIL), the receiver maps it (or copies it out, again without
the GIL) and the creator unlinks the block once the receiver is done.
"""

from __future__ import annotations

import io
import pickle
import threading
from multiprocessing import shared_memory
from typing import Any

import numpy as np

__all__ = ["dumps_shared", "loads_shared", "release", "SHARE_MIN_BYTES"]

#: arrays at least this large travel through shared memory instead of the pipe
SHARE_MIN_BYTES = 1 << 20


def _attach_view(name: str, shape: tuple, dtype: str, blocks: list) -> np.ndarray:
    """An array on shared-memory block ``name`` (the block is kept in ``blocks``)."""
    shm = shared_memory.SharedMemory(name=name)
    blocks.append(shm)
    return np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf)


class _SharingPickler(pickle.Pickler):
    """Pickles large numpy arrays as references to new shared-memory blocks."""

    def __init__(self, file: Any, blocks: list) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.blocks = blocks

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is not np.ndarray or obj.nbytes < SHARE_MIN_BYTES or obj.dtype.hasobject:
            return NotImplemented
        shm = shared_memory.SharedMemory(create=True, size=obj.nbytes)
        self.blocks.append(shm)
        dst = np.ndarray(obj.shape, dtype=obj.dtype, buffer=shm.buf)
        np.copyto(dst, obj)  # a plain memory copy: numpy releases the GIL
        del dst
        return (_shared_ref, (shm.name, obj.shape, obj.dtype.str))


def _shared_ref(name: str, shape: tuple, dtype: str) -> np.ndarray:
    """Unpickling side of a shared array: a view on the block, or a private copy of it."""
    state = _LOADING
    view = _attach_view(name, shape, dtype, state.blocks)
    if not state.copy:
        return view
    out = np.empty(view.shape, view.dtype)
    np.copyto(out, view)  # releases the GIL
    return out


class _Loading(threading.local):
    def __init__(self) -> None:
        self.blocks: list = []
        self.copy = False


_LOADING = _Loading()


def dumps_shared(obj: Any) -> tuple[bytes, list]:
    """Pickle ``obj`` with its large arrays in shared memory.

    Returns the (small) pickle and the created :class:`~multiprocessing.shared_memory.SharedMemory`
    blocks; the caller releases them (see :func:`release`), unlinking them once the receiver
    is done with them.
    """
    buf = io.BytesIO()
    blocks: list = []
    try:
        _SharingPickler(buf, blocks).dump(obj)
    except BaseException:
        release(blocks, unlink=True)
        raise
    return buf.getvalue(), blocks


def loads_shared(data: bytes, *, copy: bool) -> tuple[Any, list]:
    """Unpickle what :func:`dumps_shared` made.

    With ``copy=False`` the large arrays are views on the shared blocks, which are
    returned for the caller to release once the arrays are no longer used. With ``copy=True``
    they are copied into private memory (without the GIL) and the blocks are closed and
    unlinked here (an empty list is returned).
    """
    _LOADING.blocks, _LOADING.copy = [], copy
    try:
        obj = pickle.loads(data)
    finally:
        blocks, _LOADING.blocks, _LOADING.copy = _LOADING.blocks, [], False
        if copy:
            release(blocks, unlink=True)
    return obj, ([] if copy else blocks)


_LINGERING: list = []  # blocks whose close() waited for the last view on them


def release(blocks: list, *, unlink: bool) -> None:
    """Close (and optionally unlink) shared-memory blocks.

    A block that an array still views stays mapped until a later call finds it free.
    """
    for shm in _LINGERING[:]:
        try:
            shm.close()
            _LINGERING.remove(shm)
        except BufferError:
            pass
    for shm in blocks:
        try:
            shm.close()
        except BufferError:  # an array still views it: retried on the next release
            _LINGERING.append(shm)
        if unlink:
            try:
                shm.unlink()
            except FileNotFoundError:
                pass
