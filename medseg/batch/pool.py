"""Local worker processes for batch runs.

:class:`LocalPool` starts its workers as soon as it is created, so that process start-up and
model loading overlap the discovery of the study folder in the calling process. Each worker
loads the model once, pins its thread pools to its share of the cores, and then pulls one
series at a time: reading, segmenting and every export happen in the worker, so only the small
:class:`~medseg.batch.discovery.SeriesTask` goes out and the JSON-like record comes back (no
volume crosses a process boundary). Series can be submitted while discovery is still running;
waiting series are handed out largest first (fewer idle workers at the end of a batch).

A worker that dies (killed, out of memory) costs only the series it was processing: that series
gets a failure record and a new worker takes over the rest.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from medseg.batch.discovery import SeriesTask
from medseg.batch.segmenters import SegmenterSpec
from medseg.batch.series import SeriesOptions, process_series
from medseg.errors import MedsegError

__all__ = ["LocalPool", "PoolEvent", "WorkerStartError", "available_cores"]

log = logging.getLogger(__name__)

#: modules every worker needs, imported once in the fork server instead of once per worker
PRELOAD = ["medseg.batch.pool", "medseg.export", "medseg.io.dicom", "highdicom", "highdicom.seg", "pydicom",
           "highdicom.seg.sop", "pydicom.sr.codedict", "scipy.ndimage", "skimage.measure",
           "skimage.measure._find_contours", "skimage.measure._marching_cubes_lewiner", "nibabel", "stl.mesh",
           "medseg.batch._warmup"]  # not SimpleITK (0.5 s): only NRRD/MHA series need it, they import it
#: added for learned models: torch and MONAI take seconds to import, model weights milliseconds to load.
#: Importing them starts no OpenMP threads (only OpenBLAS servers, which are fork-safe), so forking
#: after the import is safe; torch's thread pool is created in each worker, after its thread count is set.
PRELOAD_TORCH = ["torch", "medseg.inference", "medseg.models"]
#: thread-pool variables read by OpenMP, MKL, OpenBLAS, numexpr and ITK when they start
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


class WorkerStartError(MedsegError, RuntimeError):
    """No batch worker process could start (each one died before loading the model)."""


@dataclass
class PoolEvent:
    """What a pool reports to the process that runs the batch.

    ``kind`` is ``"done"`` (``record`` of ``task``), ``"crashed"`` (the worker processing ``task``
    died; ``error`` says how), ``"progress"`` (``progress`` = ``(series_id, done, total, message)``)
    or ``"end"`` (every submitted series is accounted for, or the pool was stopped).
    """

    kind: str
    task: Optional[SeriesTask] = None
    record: Optional[dict] = None
    progress: Optional[tuple] = None
    error: Optional[str] = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a container's cpuset),
    else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


def pool_context(spec: SegmenterSpec):
    """A fork-server context (a clean process that never ran threads or torch) with the I/O and export
    modules preloaded, plus torch and MONAI for learned models; spawn where there is no fork.

    The fork server is started once per process, so the preload list of the first pool wins; a later
    pool with another model only imports more in its workers.
    """
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD + ([] if spec.model == "threshold" else PRELOAD_TORCH))
        return ctx
    return mp.get_context("spawn")  # pragma: no cover - Windows


def pin_threads(threads: int) -> None:
    """Limit this process's thread pools to ``threads`` (a worker's share of the cores).

    Sets the OpenMP/MKL/OpenBLAS/ITK variables for libraries loaded from now on, and the
    pools of torch and SimpleITK when they are already imported. The OpenBLAS servers of numpy
    and scipy (loaded in the fork server) keep their size; the batch pipeline does no BLAS work
    large enough to wake them.
    """
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "SimpleITK" in sys.modules:
        sys.modules["SimpleITK"].ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _watch_parent(lifeline) -> None:
    """Exit this worker at once when the batch process is gone (its end of ``lifeline`` closes),
    even in the middle of a series: a killed batch must not leave workers computing."""
    def watch() -> None:
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os._exit(75)

    threading.Thread(target=watch, name="medseg-batch-lifeline", daemon=True).start()


def _worker_main(conn, spec: SegmenterSpec, out_dir: str, options: SeriesOptions, threads: int,
                 lifeline=None) -> None:
    """A worker: load the model once, then process the series the pool sends until ``None`` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the batch process decides what Ctrl-C stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if lifeline is not None:
        _watch_parent(lifeline)
    pin_threads(threads)
    try:
        segmenter = spec.build()
    except BaseException as exc:  # reported to the batch, which raises it like the serial path does
        conn.send(("init_failed", _picklable(exc)))
        return
    pin_threads(threads)  # torch may have been imported by build()
    conn.send(("ready",))

    def progress(sid: str, done: int, total: Optional[int], message: str) -> None:
        try:
            conn.send(("progress", (sid, done, total, message)))
        except OSError:
            pass

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the batch process is gone
            return
        if task is None:
            return
        conn.send(("done", process_series(task, out_dir, options, segmenter, progress=progress)))


@dataclass
class _Worker:
    process: Any
    conn: Any
    ready: bool = False
    task: Optional[SeriesTask] = None
    eof: bool = False


@dataclass(order=True)
class _Queued:
    key: tuple
    task: SeriesTask = field(compare=False)


def task_cost(task: SeriesTask) -> int:
    """Work estimate used for largest-first ordering: voxels, else slices, else 0."""
    return task.voxels or task.n_slices or 0


class LocalPool:
    """Worker processes that load the model once and process series pulled from a shared queue.

    Parameters
    ----------
    workers : int
        Processes to start (at once, in the background).
    spec : SegmenterSpec
        Model each worker builds once.
    out_dir : str
        Batch output folder (workers publish each series there themselves).
    options : SeriesOptions
    threads : int
        Thread-pool size of each worker (torch, OpenMP, ITK); ``cores // workers`` keeps
        workers from oversubscribing the machine.

    Notes
    -----
    Use :meth:`submit` for each series (possibly while discovery still runs), :meth:`close_inputs`
    when there are no more, then :meth:`events` until it ends; :meth:`shutdown` always.
    """

    def __init__(self, workers: int, spec: SegmenterSpec, out_dir: str, options: SeriesOptions, *,
                 threads: int) -> None:
        from multiprocessing.connection import Pipe

        self._t0 = time.perf_counter()
        self._n = workers
        self._args = (spec, out_dir, options, threads)
        self._ctx = pool_context(spec)
        self._events: queue.Queue[PoolEvent] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting: list[_Queued] = []
        self._seq = itertools.count()
        self._inputs_closed = False
        self._stopping = False
        self._terminate = False
        self._lifelines: list = []
        self._wake_r, self._wake_w = Pipe(duplex=False)
        self._wake_pending = False
        self._workers: list[_Worker] = []
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._manage, name="medseg-batch-pool", daemon=True)
        self._thread.start()

    # -- calling side -----------------------------------------------------------------------------
    def submit(self, task: SeriesTask) -> None:
        """Queue a series (largest waiting series are handed out first)."""
        with self._lock:
            heapq.heappush(self._waiting, _Queued((-task_cost(task), next(self._seq)), task))
        self._wake()

    def close_inputs(self) -> None:
        """No more series will be submitted: the pool ends once the queued ones are done."""
        with self._lock:
            self._inputs_closed = True
        self._wake()

    def stop(self) -> None:
        """Hand out no more series; the workers finish the series they hold, then the pool ends."""
        with self._lock:
            self._stopping = True
        self._wake()

    def events(self, poll_s: float = 0.2) -> Iterator[Optional[PoolEvent]]:
        """Pool events until ``"end"`` (not yielded); ``None`` every ``poll_s`` without one.

        Raises
        ------
        Exception
            The model failed to load in a worker (the same error the serial path raises), or
            :class:`WorkerStartError`.
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

    def shutdown(self, *, terminate: bool = False, timeout: float = 600.0) -> None:
        """Stop the workers (``terminate``: kill them now, their unfinished series are cleaned up by
        the next run) and wait for the pool's thread."""
        with self._lock:
            self._stopping = True
            self._terminate = self._terminate or terminate
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - a worker that ignores its stop message
            with self._lock:
                self._terminate = True
            self._wake()
            self._thread.join(30)
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with self._lock:  # one byte in the pipe at most, however many series discovery submits
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._wake_w.send_bytes(b"x")
        except OSError:
            pass

    # -- pool thread ------------------------------------------------------------------------------
    def _start_worker(self) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        life_r, life_w = self._ctx.Pipe(duplex=False)
        p = self._ctx.Process(target=_worker_main, args=(child, *self._args, life_r), name="medseg-batch-worker",
                              daemon=True)
        p.start()  # blocks until the fork server is up (the first time: its imports)
        child.close()
        life_r.close()
        self._lifelines.append(life_w)  # never written: closing it (or dying) stops the worker
        self._workers.append(_Worker(p, parent))

    def _manage(self) -> None:
        try:
            for _ in range(self._n):
                if self._stopping:
                    break
                self._start_worker()
            self._loop()
        except BaseException as exc:  # pragma: no cover - a bug here must not hang the batch
            log.exception("batch pool failed")
            self._error = self._error or exc
        finally:
            self._finish()
            self._events.put(PoolEvent("end"))

    def _loop(self) -> None:
        from multiprocessing.connection import wait

        started_ok = False  # some worker loaded the model
        failed_starts = 0  # workers that died before loading it
        while True:
            with self._lock:
                stopping, terminate, closed = self._stopping, self._terminate, self._inputs_closed
                waiting = len(self._waiting)
            if terminate:
                return
            busy = [w for w in self._workers if w.task is not None]
            if not busy and (stopping or (closed and not waiting)):
                return
            if failed_starts >= self._n and not started_ok:
                self._error = WorkerStartError(
                    f"{failed_starts} batch worker processes died before loading the model "
                    f"{self._args[0].name!r}; run with workers=1 to see why")
                return
            if len(self._workers) < self._n and (waiting or not self._workers) and not stopping:
                self._start_worker()  # a replacement for a worker that died
                continue
            objs: list = [self._wake_r]
            for w in self._workers:
                objs.append(w.process.sentinel)
                if not w.eof:
                    objs.append(w.conn)
            ready = wait(objs, timeout=1.0)
            if self._wake_r in ready:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
                with self._lock:  # what was submitted before this is seen by _dispatch below
                    self._wake_pending = False
            for w in list(self._workers):
                if w.conn in ready and not w.eof:
                    self._receive(w)
                if w.process.sentinel in ready or not w.process.is_alive():
                    while not w.eof and w.conn.poll():  # what it sent before it ended
                        self._receive(w)
                    self._reap(w)
                    if w.ready:
                        started_ok = True
                    else:
                        failed_starts += 1
            if self._error is not None:
                return
            started_ok = started_ok or any(w.ready for w in self._workers)
            self._dispatch()

    def _receive(self, w: _Worker) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            w.eof = True
            return
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            log.debug("batch worker %s ready %.2f s after the pool started", w.process.pid,
                      time.perf_counter() - self._t0)
        elif kind == "progress":
            self._events.put(PoolEvent("progress", progress=msg[1]))
        elif kind == "done":
            self._events.put(PoolEvent("done", task=w.task, record=msg[1]))
            w.task = None
        elif kind == "init_failed":
            self._error = msg[1]

    def _reap(self, w: _Worker) -> None:
        w.process.join()
        w.conn.close()
        self._workers.remove(w)
        if w.task is not None:
            code = w.process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            log.warning("the worker processing %s died (%s)", w.task.id, how)
            self._events.put(PoolEvent("crashed", task=w.task, error=f"worker process {w.process.pid} {how}"))
            w.task = None

    def _dispatch(self) -> None:
        for w in self._workers:
            if not w.ready or w.task is not None:
                continue
            with self._lock:
                task = heapq.heappop(self._waiting).task if self._waiting and not self._stopping else None
            if task is None:
                return
            try:
                w.conn.send(task)
                w.task = task
            except OSError:  # it died meanwhile: put the series back, the sentinel reports the death
                self.submit(task)

    def _finish(self) -> None:
        """Stop every worker (kill it when terminating), and wait for them."""
        for w in self._workers:
            if self._terminate or self._error is not None:
                w.process.kill()
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        for w in self._workers:
            w.process.join(timeout=None if not self._terminate else 10)
            w.conn.close()
        self._workers.clear()
        for life in self._lifelines:
            life.close()
        self._lifelines.clear()


def run_pool(pool: LocalPool, finished: Callable[[dict], None], crashed: Callable[[SeriesTask, str], None],
             series_progress: Optional[Callable[..., None]], cancel: Optional[Callable[[], bool]]) -> bool:
    """Consume a pool's events until it ends; returns True when ``cancel`` stopped it."""
    cancelled = False
    for ev in pool.events():
        if ev is not None:
            if ev.kind == "done":
                finished(ev.record)
            elif ev.kind == "crashed":
                crashed(ev.task, ev.error)
            elif ev.kind == "progress" and series_progress is not None:
                series_progress(*ev.progress)
        if not cancelled and cancel is not None and cancel():
            cancelled = True
            pool.stop()  # running series finish and stay published
    return cancelled
