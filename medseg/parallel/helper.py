"""One long-lived helper process for work that holds the GIL (the napari plugin's statistics,
exports, consensus and QA).

Some library code holds Python's GIL for long stretches (SimpleITK filters, ``np.bincount``,
first imports of large extension modules), which would freeze a GUI thread even from a worker
thread. :func:`run_in_process` runs such work in a one-worker :class:`~medseg.parallel.ProcessPool`
(``forkserver``/``spawn``, never ``fork`` from a Qt process); the calling thread only waits,
forwarding progress and cancel. Arguments and results travel with their large arrays in shared
memory (:mod:`medseg.parallel.shared`).
"""

from __future__ import annotations

import gc
import importlib
import logging
import threading
import time
from typing import Any, Callable, Optional

from medseg.parallel.pool import CANCEL_GRACE_S, ProcessPool, worker_cancelled, worker_progress
from medseg.parallel.shared import dumps_shared, loads_shared, release

__all__ = ["run_in_process", "shutdown_helper", "main_is_guarded"]

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_HELPER: Optional[ProcessPool] = None


def _helper() -> ProcessPool:
    global _HELPER
    with _LOCK:
        if _HELPER is None or not _HELPER.running:  # none yet, or it ended (its worker could not start)
            _HELPER = ProcessPool(1, name="medseg-helper")
        return _HELPER


def shutdown_helper() -> None:
    """Stop the helper process (killing a running task); the next call starts a new one."""
    global _HELPER
    with _LOCK:
        helper, _HELPER = _HELPER, None
    if helper is not None:
        helper.shutdown(terminate=True, timeout=30)


def _shared_call(payload: bytes) -> tuple:
    """Helper-process side: unpickle the call (arrays mapped), run it, share the result."""
    (fn, args, kwargs), inputs = loads_shared(payload, copy=False)
    out: Any = None
    try:
        out = _run(fn, args, kwargs)
        del fn, args, kwargs
        if out[0] == "ok":
            data, blocks = dumps_shared(out[1])
            release(blocks, unlink=False)  # the caller unlinks them once copied out
            out = ("ok", data)
        return out
    finally:
        out = None
        gc.collect()  # drop views on the input blocks held in reference cycles
        release(inputs, unlink=False)  # the caller created (and unlinks) them


def _run(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple:
    last = [0.0]

    def progress(done: int, total: Optional[int], message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.05 or (total and done >= total):
            last[0] = now
            worker_progress(int(done), int(total or 0), str(message))

    try:
        return ("ok", fn(*args, progress=progress, cancel=worker_cancelled, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - sent back to the caller
        return ("error", type(exc).__module__, type(exc).__name__, str(exc))


def _rebuild(module: str, name: str, message: str) -> BaseException:
    try:
        cls = getattr(importlib.import_module(module), name)
        exc = cls(message)
        if isinstance(exc, BaseException):
            return exc
    except Exception:  # noqa: BLE001 - e.g. FileFormatError(path, problem): fall back
        pass
    from medseg.core.errors import MedsegError

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


def run_in_process(fn: Callable[..., Any], *args: Any, progress: Any = None, cancel: Any = None,
                   grace_s: float = CANCEL_GRACE_S, **kwargs: Any) -> Any:
    """Call ``fn(*args, progress=..., cancel=..., **kwargs)`` in the helper process and wait.

    Meant to be called from a worker thread: it blocks until the result is back, forwarding
    progress to ``progress(done, total, message)``. Once ``cancel()`` is true the helper's
    ``cancel()`` is true too; a task that has not ended ``grace_s`` seconds later is stopped by
    killing the helper (a new one serves the next call) and :class:`~medseg.core.errors.CancelledError`
    is raised. ``fn`` and its arguments must be picklable. Exceptions come back as the same
    medseg error class when possible. When the program's main script has no ``__main__`` guard
    (:func:`main_is_guarded`), ``fn`` runs in the calling thread instead.
    """
    if not main_is_guarded():
        log.info("main script has no `if __name__ == \"__main__\":` guard: %s runs in a thread, "
                 "not a helper process", getattr(fn, "__name__", fn))
        return fn(*args, progress=progress, cancel=cancel, **kwargs)
    payload, inputs = dumps_shared((fn, args, kwargs))
    try:
        out = _helper().call(_shared_call, payload, progress=progress, cancel=cancel, grace_s=grace_s)
    finally:
        release(inputs, unlink=True)
    if out[0] == "ok":
        return loads_shared(out[1], copy=True)[0]
    raise _rebuild(*out[1:])
