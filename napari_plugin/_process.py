"""Run a function in a helper process, with medseg's progress and cancel callbacks.

Some library code holds Python's GIL for long stretches (SimpleITK filters, ``np.bincount``,
first imports of large extension modules), which would freeze napari's GUI thread even from a
worker thread. :func:`run_in_process` runs such work in one long-lived helper process (started
with ``forkserver``/``spawn``, never ``fork`` from a Qt process); the calling worker thread only
waits, forwarding progress messages and the cancel flag.

The function and its arguments must be picklable (module-level functions, numpy arrays,
medseg objects). Exceptions come back as the same medseg error class when possible.

Large arrays do not travel through the pipe: pickling a 512 × 512 × 300 volume copies it into
a bytes object while holding the GIL (and unpickling the result copies it again), which froze
the GUI thread as much as the work it moved away. Arrays of at least :data:`SHARE_MIN_BYTES`
are pickled as references to POSIX shared memory (:mod:`multiprocessing.shared_memory`): the
sender copies the array into a new block with ``np.copyto`` (which releases the GIL), the
receiver maps it; results come back the same way and are copied out of the block (again
without the GIL) before it is unlinked.
"""

from __future__ import annotations

import gc
import io
import logging
import multiprocessing as mp
import pickle
import queue as _queue
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory
from typing import Any, Callable, Optional

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["run_in_process", "main_is_guarded", "shutdown", "dumps_shared", "loads_shared", "SHARE_MIN_BYTES"]

#: arrays at least this large travel through shared memory instead of the pipe
SHARE_MIN_BYTES = 1 << 20


# -- shared-memory pickling ---------------------------------------------------------------------
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

_LOCK = threading.Lock()
_POOL: Optional[ProcessPoolExecutor] = None
_CHANNEL: Any = None  # (progress queue, cancel event) shared with the helper process

# in the helper process
_child_queue: Any = None
_child_cancel: Any = None


def _init(q: Any, ev: Any) -> None:
    global _child_queue, _child_cancel
    _child_queue, _child_cancel = q, ev


def _call(payload: bytes) -> tuple:
    """Helper-process side: unpickle the call (arrays mapped), run it, share the result."""
    (fn, args, kwargs), inputs = loads_shared(payload, copy=False)
    try:
        out = _run(fn, args, kwargs)
        del fn, args, kwargs
        if out[0] == "ok":
            data, blocks = dumps_shared(out[1])
            release(blocks, unlink=False)  # the parent unlinks them once copied out
            out = ("ok", data)
        return out
    finally:
        out = None
        gc.collect()  # drop views on the input blocks held in reference cycles
        release(inputs, unlink=False)  # the parent created (and unlinks) them


def _run(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple:
    last = [0.0]

    def progress(done: int, total: Optional[int], message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.05 or (total and done >= total):
            last[0] = now
            _child_queue.put((int(done), int(total or 0), str(message)))

    try:
        return ("ok", fn(*args, progress=progress, cancel=_child_cancel.is_set, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - sent back to the parent
        return ("error", type(exc).__module__, type(exc).__name__, str(exc))


def _pool() -> tuple[ProcessPoolExecutor, Any]:
    global _POOL, _CHANNEL
    with _LOCK:
        if _POOL is None:
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            _CHANNEL = (ctx.Queue(), ctx.Event())
            _POOL = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_init, initargs=_CHANNEL)
        return _POOL, _CHANNEL


def shutdown() -> None:
    """Stop the helper process (it is restarted on the next call)."""
    global _POOL
    with _LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=False, cancel_futures=True)
            _POOL = None


def _rebuild(module: str, name: str, message: str) -> BaseException:
    import importlib

    try:
        cls = getattr(importlib.import_module(module), name)
        exc = cls(message)
        if isinstance(exc, BaseException):
            return exc
    except Exception:  # noqa: BLE001 - e.g. FileFormatError(path, problem): fall back
        pass
    from medseg.errors import MedsegError

    return MedsegError(f"{name}: {message}")


def main_is_guarded(main: Any = None) -> bool:
    """Whether a helper process can be started from this program without re-running it.

    ``spawn`` and ``forkserver`` helpers import the main script again: a script without an
    ``if __name__ == "__main__":`` guard would run again in the helper (and fail with
    multiprocessing's bootstrapping error). True when ``__main__`` has no file (an interactive
    session, a notebook) or when its source has a top-level ``__name__ == "__main__"`` test;
    also True for a main module that is not a readable ``.py`` file (an entry point such as
    ``napari``'s, installed with its own guard).
    """
    import ast
    import sys

    main = sys.modules.get("__main__") if main is None else main
    path = getattr(main, "__file__", None)
    if not path or getattr(getattr(main, "__spec__", None), "name", None):  # python -m / entry points
        return True
    if not str(path).endswith(".py"):
        return True
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return True
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [n for n in ast.walk(node.test) if isinstance(n, ast.Name) and n.id == "__name__"]
            consts = [c for c in ast.walk(node.test) if isinstance(c, ast.Constant) and c.value == "__main__"]
            if names and consts:
                return True
    return False


def run_in_process(fn: Callable[..., Any], *args: Any, progress: Any = None, cancel: Any = None, **kwargs: Any) -> Any:
    """Call ``fn(*args, progress=..., cancel=..., **kwargs)`` in the helper process and wait.

    Meant to be called from a worker thread: it blocks until the result is back, forwarding
    progress to ``progress`` and the state of ``cancel()`` to the helper every 50 ms. When the
    program's main script has no ``__main__`` guard (:func:`main_is_guarded`), ``fn`` runs in
    the calling thread instead (the GUI may then stutter while it holds the GIL).
    """
    if not main_is_guarded():
        log.info("main script has no `if __name__ == \"__main__\":` guard: %s runs in a thread, "
                 "not a helper process", getattr(fn, "__name__", fn))
        return fn(*args, progress=progress, cancel=cancel, **kwargs)
    pool, (q, ev) = _pool()
    ev.clear()
    while True:  # drop stale progress of an earlier task
        try:
            q.get_nowait()
        except _queue.Empty:
            break
    payload, inputs = dumps_shared((fn, args, kwargs))
    try:
        future = pool.submit(_call, payload)
        while True:
            try:
                msg = q.get(timeout=0.05)
                if progress is not None:
                    progress(*msg)
            except _queue.Empty:
                pass
            if cancel is not None and cancel():
                ev.set()
            if future.done():
                break
        out = future.result()
    finally:
        release(inputs, unlink=True)
    if out[0] == "ok":
        return loads_shared(out[1], copy=True)[0]
    raise _rebuild(*out[1:])
