"""Run a function in a helper process, with medseg's progress and cancel callbacks.

Some library code holds Python's GIL for long stretches (SimpleITK filters, ``np.bincount``,
first imports of large extension modules), which would freeze napari's GUI thread even from a
worker thread. :func:`run_in_process` runs such work in one long-lived helper process (started
with ``forkserver``/``spawn``, never ``fork`` from a Qt process); the calling worker thread only
waits, forwarding progress messages and the cancel flag.

The function and its arguments must be picklable (module-level functions, numpy arrays,
medseg objects). Exceptions come back as the same medseg error class when possible.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue as _queue
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

__all__ = ["run_in_process", "shutdown"]

_LOCK = threading.Lock()
_POOL: Optional[ProcessPoolExecutor] = None
_CHANNEL: Any = None  # (progress queue, cancel event) shared with the helper process

# in the helper process
_child_queue: Any = None
_child_cancel: Any = None


def _init(q: Any, ev: Any) -> None:
    global _child_queue, _child_cancel
    _child_queue, _child_cancel = q, ev


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple:
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


def run_in_process(fn: Callable[..., Any], *args: Any, progress: Any = None, cancel: Any = None, **kwargs: Any) -> Any:
    """Call ``fn(*args, progress=..., cancel=..., **kwargs)`` in the helper process and wait.

    Meant to be called from a worker thread: it blocks until the result is back, forwarding
    progress to ``progress`` and the state of ``cancel()`` to the helper every 50 ms.
    """
    pool, (q, ev) = _pool()
    ev.clear()
    while True:  # drop stale progress of an earlier task
        try:
            q.get_nowait()
        except _queue.Empty:
            break
    future = pool.submit(_call, fn, args, kwargs)
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
    if out[0] == "ok":
        return out[1]
    raise _rebuild(*out[1:])
