"""A small process pool on :class:`concurrent.futures.ProcessPoolExecutor`.

Used by the local batch pool (:mod:`medseg.batch.pool`) and by
:func:`medseg.parallel.run_in_process` (the napari plugin's helper process for work that holds
the GIL). What it guarantees:

* Each worker is one single-process ``ProcessPoolExecutor`` (a *slot*), started with a
  ``forkserver`` (or ``spawn``) context, never ``fork``. Its first call runs ``setup`` once (e.g.
  loading a model), so per-worker state is built once and kept for every later task.
* Tasks wait in the pool, highest ``priority`` first, and go to a slot only when it is idle. A
  worker that dies (SIGKILL, segfault, out of memory) breaks only its own executor: exactly the
  task it was running is reported ``"crashed"`` (with the signal), a new worker replaces it, and
  no other task is lost or run twice.
* Workers ignore SIGINT (the calling process decides what Ctrl-C stops) and exit at once when the
  calling process is gone, even mid-task (a lifeline pipe whose only writer is the caller).
* :meth:`ProcessPool.cancel` sets the task's cancel flag (see :func:`worker_cancelled`), and kills
  the worker when the task has not ended ``grace_s`` later; the pool stays usable.
* Progress: a task calls :func:`worker_progress`; the caller receives ``"progress"`` events.

Why one executor per worker rather than one executor with ``max_workers=N``: when a worker of a
shared executor dies, the executor fails every pending future with ``BrokenProcessPool`` and
terminates all its other workers, so the task that crashed cannot be told from the tasks that
were merely stopped with it, and those would have to be re-run.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from medseg.core.errors import CancelledError, MedsegError
from medseg.parallel.context import process_context

__all__ = ["ProcessPool", "PoolEvent", "WorkerStartError", "WorkerCrashedError", "worker_progress",
           "worker_cancelled", "CANCEL_GRACE_S"]

log = logging.getLogger(__name__)

#: seconds a cancelled task may take to stop by itself before its worker is killed
CANCEL_GRACE_S = 1.0


class WorkerStartError(MedsegError, RuntimeError):
    """No worker process could start (each one died before its setup finished)."""


class WorkerCrashedError(MedsegError, RuntimeError):
    """The worker process running a task died (killed, segfault, out of memory)."""


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# -- worker side ----------------------------------------------------------------------------------
@dataclass
class _WorkerState:
    channel: Any
    cancel: Any
    key: Any = None


_STATE: Optional[_WorkerState] = None


def _watch_parent(lifeline) -> None:
    """Exit this worker at once when the calling process is gone (its end of ``lifeline`` closes)."""
    def watch() -> None:
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os._exit(75)

    threading.Thread(target=watch, name="medseg-worker-lifeline", daemon=True).start()


def _worker_init(channel, cancel, lifeline) -> None:
    global _STATE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the calling process decides what Ctrl-C stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _watch_parent(lifeline)
    _STATE = _WorkerState(channel, cancel)
    channel.put(("pid", None, os.getpid()))  # the pool can kill a worker whose setup still runs


def _worker_setup(setup: Optional[Callable[..., None]], args: tuple) -> int:
    """First call in every worker: run ``setup(*args)``; returns the worker's pid."""
    if setup is not None:
        try:
            setup(*args)
        except BaseException as exc:
            raise _picklable(exc) from None
    return os.getpid()


def _worker_task(key: Any, fn: Callable[..., Any], args: tuple) -> Any:
    assert _STATE is not None
    _STATE.key = key
    _STATE.channel.put(("start", key, None))  # from now on, a death of this worker is this task's
    try:
        return fn(*args)
    except BaseException as exc:
        raise _picklable(exc) from None
    finally:
        _STATE.key = None


def worker_progress(*payload: Any) -> None:
    """In a pool task: send ``payload`` to the caller as a ``"progress"`` event of this task.

    Does nothing outside a pool worker.
    """
    if _STATE is not None and _STATE.key is not None:
        try:
            _STATE.channel.put(("progress", _STATE.key, payload))
        except (OSError, ValueError):
            pass


def worker_cancelled() -> bool:
    """In a pool task: whether the caller asked to cancel it (False outside a pool worker)."""
    return _STATE is not None and bool(_STATE.cancel.value)


# -- calling side ---------------------------------------------------------------------------------
@dataclass
class PoolEvent:
    """What a pool reports about a task (``key`` as submitted).

    ``kind``: ``"done"`` (``result``), ``"error"`` (the task raised ``error``, an exception),
    ``"crashed"`` (its worker died; ``error`` says how), ``"cancelled"``, ``"progress"``
    (``progress`` = the payload of :func:`worker_progress`) or ``"end"`` (the pool has stopped).
    """

    kind: str
    key: Any = None
    result: Any = None
    error: Any = None
    progress: Optional[tuple] = None


@dataclass(eq=False)
class _Slot:
    executor: ProcessPoolExecutor
    channel: Any
    cancel: Any
    setup: Future
    pid: Optional[int] = None
    process: Any = None
    ready: bool = False
    key: Any = None
    item: Optional["_Queued"] = None
    started: bool = False
    future: Optional[Future] = None
    kill_at: Optional[float] = None
    cancelled: bool = False


@dataclass(order=True)
class _Queued:
    sort: tuple
    key: Any = field(compare=False)
    fn: Callable = field(compare=False)
    args: tuple = field(compare=False)


def _how(process) -> str:
    code = getattr(process, "exitcode", None)
    if code is None:
        return "ended (exit code unknown)"
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


class ProcessPool:
    """``workers`` processes, each running ``setup(*setup_args)`` once, then tasks one at a time.

    Parameters
    ----------
    workers : int
        Worker processes, started at once in the background.
    context : multiprocessing context, optional
        Default: :func:`process_context`.
    setup : callable, optional
        Picklable; run first in every worker (also in replacements). An exception it raises ends
        the pool: :meth:`events` raises it.
    setup_args : tuple
    name : str
        Used in log messages.

    Notes
    -----
    :meth:`submit` tasks (also while workers start), :meth:`close_inputs` when there are no more,
    then read :meth:`events` until they end; :meth:`shutdown` always. :meth:`call` runs one task
    and waits for it (the pool stays open for the next).
    """

    def __init__(self, workers: int, *, context=None, setup: Optional[Callable[..., None]] = None,
                 setup_args: tuple = (), name: str = "medseg-pool") -> None:
        self._n = workers
        self._ctx = context or process_context()
        self._setup = (setup, setup_args)
        self._name = name
        self._lock = threading.Lock()
        self._inbox: queue.Queue = queue.Queue()
        self._events: queue.Queue = queue.Queue()
        self._waiters: dict = {}
        self._waiting: list[_Queued] = []
        self._seq = itertools.count()
        self._slots: list[_Slot] = []
        self._closed = self._stopping = self._terminate = self._ended = False
        self._error: Optional[BaseException] = None
        self._started_ok, self._failed_starts = False, 0
        self._life_r, self._life_w = self._ctx.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._manage, name=name, daemon=True)
        self._thread.start()

    # -- calling side -------------------------------------------------------------------------------
    def submit(self, key: Any, fn: Callable[..., Any], *args: Any, priority: float = 0) -> None:
        """Queue ``fn(*args)`` (picklable) under ``key``; higher ``priority`` runs first.

        Raises
        ------
        RuntimeError
            The pool has ended (shut down, or its workers could not start).
        """
        with self._lock:
            if self._ended:
                raise RuntimeError(f"{self._name} has ended: start a new pool")
            heapq.heappush(self._waiting, _Queued((-priority, next(self._seq)), key, fn, args))
        self._inbox.put(None)

    def close_inputs(self) -> None:
        """No more tasks: the pool ends once the queued ones are done."""
        with self._lock:
            self._closed = True
        self._inbox.put(None)

    def stop(self) -> None:
        """Start no more tasks; running ones finish, then the pool ends."""
        with self._lock:
            self._stopping = True
        self._inbox.put(None)

    def cancel(self, key: Any, grace_s: float = CANCEL_GRACE_S) -> None:
        """Cancel task ``key``: dropped if waiting; if running, its cancel flag is set and its worker
        is killed when it has not ended ``grace_s`` seconds later."""
        self._inbox.put(("cancel", key, grace_s))

    def events(self, poll_s: float = 0.2) -> Iterator[Optional[PoolEvent]]:
        """Events of tasks nobody :meth:`call` s for, until the pool ends (``"end"`` is not
        yielded); ``None`` every ``poll_s`` without one.

        Raises
        ------
        Exception
            What ``setup`` raised in a worker, or :class:`WorkerStartError`.
        """
        while True:
            try:
                ev = self._events.get(timeout=poll_s)
            except queue.Empty:
                yield None
                continue
            if ev.kind == "end":
                if self._error is not None:
                    raise self._error
                return
            yield ev

    def call(self, fn: Callable[..., Any], *args: Any, progress: Optional[Callable[..., None]] = None,
             cancel: Optional[Callable[[], bool]] = None, grace_s: float = CANCEL_GRACE_S) -> Any:
        """Run ``fn(*args)`` in a worker and wait for its result, passing its progress payloads to
        ``progress(*payload)`` and cancelling it once ``cancel()`` is true.

        Raises
        ------
        CancelledError
            ``cancel()`` became true and the task did not end by itself (its worker was killed).
        WorkerCrashedError
            The worker died.
        Exception
            What ``fn`` raised.
        """
        key = ("call", next(self._seq))
        mine: queue.Queue = queue.Queue()
        with self._lock:
            self._waiters[key] = mine
        asked = ended = False
        try:
            self.submit(key, fn, *args)
            while True:
                if not asked and cancel is not None and cancel():
                    asked = True
                    self.cancel(key, grace_s)
                try:
                    ev = mine.get(timeout=0.05)
                except queue.Empty:
                    continue
                if ev.kind == "progress":
                    if progress is not None:
                        progress(*ev.progress)
                    continue
                ended = True
                return _outcome(ev)
        finally:
            with self._lock:
                self._waiters.pop(key, None)
            if not ended:  # the caller left (its progress callback raised): stop the task too
                self.cancel(key, 0.0)

    @property
    def running(self) -> bool:
        """False once the pool has ended (no task submitted now would run)."""
        with self._lock:
            return not self._ended

    def shutdown(self, *, terminate: bool = False, timeout: float = 600.0) -> None:
        """Stop the workers (``terminate``: kill them now) and wait for them."""
        with self._lock:
            self._stopping = True
            self._terminate = self._terminate or terminate
        self._inbox.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - a task that does not end
            with self._lock:
                self._terminate = True
            self._inbox.put(None)
            self._thread.join(30)

    # -- manager thread -------------------------------------------------------------------------------
    def _emit(self, ev: PoolEvent) -> None:
        with self._lock:
            target = self._waiters.get(ev.key, self._events)
        target.put(ev)

    def _manage(self) -> None:
        try:
            for _ in range(self._n):
                if self._stopping:
                    break
                self._start_slot()
            while not self._turn():
                pass
        except BaseException as exc:  # pragma: no cover - a bug here must not hang the caller
            log.exception("%s failed", self._name)
            self._error = self._error or exc
        finally:
            self._finish()
            self._events.put(PoolEvent("end"))

    def _start_slot(self) -> None:
        # per worker, and lock-free where possible: a worker killed while holding a lock of a shared
        # queue would block every other worker's progress
        channel, cancel = self._ctx.SimpleQueue(), self._ctx.RawValue("b", 0)
        ex = ProcessPoolExecutor(1, mp_context=self._ctx, initializer=_worker_init,
                                 initargs=(channel, cancel, self._life_r))
        slot = _Slot(ex, channel, cancel, ex.submit(_worker_setup, *self._setup))
        slot.setup.add_done_callback(lambda f, s=slot: self._inbox.put(("future", s, f)))
        self._slots.append(slot)

    def _turn(self) -> bool:
        """One turn of the manager: handle what happened, start tasks; True when the pool ends."""
        busy = any(s.key is not None for s in self._slots)
        try:
            msg = self._inbox.get(timeout=0.05 if busy else 0.5)
        except queue.Empty:
            msg = None
        self._forward_progress()
        if msg and msg[0] == "future":
            self._finished(msg[1], msg[2])
        elif msg and msg[0] == "cancel":
            self._cancel(msg[1], msg[2])
        self._kill_overdue()
        if self._should_end():
            return True
        with self._lock:
            waiting, stopping = bool(self._waiting), self._stopping
        if len(self._slots) < self._n and (waiting or not self._slots) and not stopping:
            self._start_slot()  # a replacement for a worker that died
        self._dispatch()
        return False

    def _forward_progress(self) -> None:
        for s in self._slots:
            try:
                while not s.channel.empty():  # progress is written before the result (a SimpleQueue
                    kind, key, payload = s.channel.get()  # has no feeder thread): none is left behind
                    if kind == "pid":
                        s.pid = payload
                    elif kind == "start":
                        s.started = s.started or key == s.key
                    else:
                        self._emit(PoolEvent("progress", key=key, progress=payload))
            except (OSError, EOFError, ValueError):
                pass

    def _finished(self, slot: _Slot, fut: Future) -> None:
        if slot not in self._slots:
            return
        if fut is slot.setup:
            return self._set_up(slot, fut)
        self._forward_progress()  # what it reported before it ended
        key, item, slot.key, slot.item, slot.future, slot.kill_at = slot.key, slot.item, None, None, None, None
        exc = fut.exception()
        if exc is None:
            self._emit(PoolEvent("done", key=key, result=fut.result()))
        elif not isinstance(exc, BrokenProcessPool):
            self._emit(PoolEvent("error", key=key, error=exc))
        else:
            how = self._retire(slot)
            if slot.cancelled:
                self._emit(PoolEvent("cancelled", key=key))
            elif not slot.started and item is not None:  # it died idle, before the task reached it
                log.warning("a worker of %s died (%s) before starting %s: the task waits for another", self._name,
                            how, key)
                with self._lock:
                    heapq.heappush(self._waiting, item)
            else:
                log.warning("the worker running %s died (%s)", key, how)
                self._emit(PoolEvent("crashed", key=key, error=f"worker process {slot.pid} {how}"))

    def _set_up(self, slot: _Slot, fut: Future) -> None:
        exc = fut.exception()
        if exc is None:
            slot.ready, slot.pid = True, fut.result()
            slot.process = next((p for p in mp.active_children() if p.pid == slot.pid), None)
            self._started_ok = True
        elif isinstance(exc, BrokenProcessPool):
            self._failed_starts += 1
            log.warning("a worker of %s died before its setup ended", self._name)
            self._retire(slot)
        else:
            self._error = self._error or exc

    def _retire(self, slot: _Slot) -> str:
        """Remove a slot whose worker died; returns how it died."""
        slot.executor.shutdown(wait=True, cancel_futures=True)
        self._slots.remove(slot)
        slot.channel.close()
        return _how(slot.process)

    def _cancel(self, key: Any, grace_s: float) -> None:
        with self._lock:
            left = [q for q in self._waiting if q.key != key]
            dropped = len(left) != len(self._waiting)
            if dropped:
                self._waiting[:] = left
                heapq.heapify(self._waiting)
        if dropped:
            self._emit(PoolEvent("cancelled", key=key))
        for s in self._slots:
            if s.key == key and not s.cancelled:
                s.cancelled = True
                s.cancel.value = 1
                s.kill_at = time.monotonic() + grace_s

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for s in self._slots:
            if s.kill_at is not None and now >= s.kill_at and s.pid is not None:
                s.kill_at = None
                log.info("killing worker %s: its task %s ignored the cancel request", s.pid, s.key)
                _kill(s.pid)

    def _should_end(self) -> bool:
        with self._lock:
            stopping, terminate, closed, waiting = self._stopping, self._terminate, self._closed, len(self._waiting)
        if terminate or self._error is not None:
            return True
        busy = any(s.key is not None for s in self._slots)
        if not busy and (stopping or (closed and not waiting)):
            return True
        if self._failed_starts >= self._n and not self._started_ok:
            self._error = WorkerStartError(
                f"{self._failed_starts} worker processes of {self._name} died before their setup ended; "
                f"run with one worker in this process to see why")
            return True
        return False

    def _dispatch(self) -> None:
        for s in list(self._slots):
            if not s.ready or s.key is not None:
                continue
            with self._lock:
                item = heapq.heappop(self._waiting) if self._waiting and not self._stopping else None
            if item is None:
                break
            s.key, s.item, s.started, s.cancelled, s.cancel.value = item.key, item, False, False, 0
            try:
                s.future = s.executor.submit(_worker_task, item.key, item.fn, item.args)
            except (BrokenProcessPool, RuntimeError):  # it died while idle: the task waits for its replacement
                s.key, s.item = None, None
                with self._lock:
                    heapq.heappush(self._waiting, item)
                log.warning("an idle worker of %s died (%s)", self._name, self._retire(s))
                continue
            s.future.add_done_callback(lambda f, slot=s: self._inbox.put(("future", slot, f)))

    def _finish(self) -> None:
        """Stop every worker (kill it when terminating or failing), and wait for them."""
        kill = self._terminate or self._error is not None
        for s in self._slots:
            if kill and s.pid is not None:
                _kill(s.pid)
        for s in self._slots:
            s.executor.shutdown(wait=True, cancel_futures=True)
            if s.key is not None:
                self._emit(PoolEvent("cancelled", key=s.key))
        self._slots.clear()
        with self._lock:
            waiting, self._waiting, self._ended = self._waiting, [], True
        for item in waiting:
            if item.key in self._waiters:
                self._emit(PoolEvent("cancelled", key=item.key) if self._error is None else
                           PoolEvent("error", key=item.key, error=self._error))
        self._life_w.close()
        self._life_r.close()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _outcome(ev: PoolEvent) -> Any:
    if ev.kind == "done":
        return ev.result
    if ev.kind == "error":
        raise ev.error
    if ev.kind == "cancelled":
        raise CancelledError("cancelled: the worker process was stopped")
    raise WorkerCrashedError(f"the worker process died: {ev.error}")

