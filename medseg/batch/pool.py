"""The local process pool of a batch run, on :class:`medseg.parallel.ProcessPool`.

:class:`LocalPool` starts its workers as soon as it is created, so that process start-up and
model loading overlap the discovery of the study folder in the calling process. Each worker
loads the model once (the pool's per-worker setup), pins its thread pools to its share of the
cores, and then processes one series at a time: reading, segmenting and every export happen in
the worker, so only the small :class:`~medseg.batch.discovery.SeriesTask` goes out and the
JSON-like record comes back (no volume crosses a process boundary). Series can be submitted while
discovery is still running; waiting series are handed out largest first (fewer idle workers at
the end of a batch).

A worker that dies (killed, out of memory) costs only the series it was processing: that series
gets a failure record and a new worker takes over the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from medseg.batch.discovery import SeriesTask
from medseg.batch.segmenters import Segmenter, SegmenterSpec
from medseg.batch.series import SeriesOptions, process_series
from medseg.parallel import ProcessPool, WorkerStartError, available_cores, pin_threads, process_context, \
    worker_progress

__all__ = ["LocalPool", "PoolEvent", "WorkerStartError", "available_cores", "pin_threads", "task_cost"]

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


@dataclass
class PoolEvent:
    """What a pool reports to the process that runs the batch.

    ``kind`` is ``"done"`` (``record`` of ``task``), ``"crashed"`` (the worker processing ``task``
    died; ``error`` says how) or ``"progress"`` (``progress`` = ``(series_id, done, total, message)``).
    """

    kind: str
    task: Optional[SeriesTask] = None
    record: Optional[dict] = None
    progress: Optional[tuple] = None
    error: Optional[str] = None


def pool_context(spec: SegmenterSpec):
    """A fork-server context with the I/O and export modules preloaded, plus torch and MONAI for
    learned models (see :func:`medseg.parallel.process_context`)."""
    return process_context(PRELOAD + ([] if spec.model == "threshold" else PRELOAD_TORCH))


def task_cost(task: SeriesTask) -> int:
    """Work estimate used for largest-first ordering: voxels, else slices, else 0."""
    return task.voxels or task.n_slices or 0


# -- worker side --------------------------------------------------------------------------------
_SEGMENTER: Optional[Segmenter] = None


def _load_model(spec: SegmenterSpec, threads: int) -> None:
    """Per-worker setup: pin the thread pools and build the model once."""
    global _SEGMENTER
    pin_threads(threads)
    _SEGMENTER = spec.build()
    pin_threads(threads)  # torch may have been imported by build()


def _run_series(task: SeriesTask, out_dir: str, options: SeriesOptions) -> dict:
    assert _SEGMENTER is not None, "the worker's setup did not run"
    return process_series(task, out_dir, options, _SEGMENTER, progress=worker_progress)


# -- batch side ---------------------------------------------------------------------------------
class LocalPool:
    """Worker processes that load the model once and process the series submitted to them.

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
        self._out, self._options = out_dir, options
        self._tasks: dict[str, SeriesTask] = {}
        self._pool = ProcessPool(workers, context=pool_context(spec), setup=_load_model, setup_args=(spec, threads),
                                 name=f"batch workers of model {spec.name!r}")

    def submit(self, task: SeriesTask) -> None:
        """Queue a series (largest waiting series are handed out first)."""
        self._tasks[task.id] = task
        self._pool.submit(task.id, _run_series, task, self._out, self._options, priority=task_cost(task))

    def close_inputs(self) -> None:
        """No more series will be submitted: the pool ends once the queued ones are done."""
        self._pool.close_inputs()

    def stop(self) -> None:
        """Hand out no more series; the workers finish the series they hold, then the pool ends."""
        self._pool.stop()

    def events(self, poll_s: float = 0.2) -> Iterator[Optional[PoolEvent]]:
        """Pool events until every submitted series is accounted for (or the pool was stopped);
        ``None`` every ``poll_s`` without one.

        Raises
        ------
        Exception
            The model failed to load in a worker (the same error the serial path raises), or
            :class:`WorkerStartError`.
        """
        for ev in self._pool.events(poll_s):
            if ev is None or ev.kind == "cancelled":
                yield None
            elif ev.kind == "progress":
                yield PoolEvent("progress", progress=ev.progress)
            elif ev.kind == "done":
                yield PoolEvent("done", task=self._tasks[ev.key], record=ev.result)
            else:  # "crashed", or process_series raised (it records series failures itself)
                error = ev.error if ev.kind == "crashed" else f"{type(ev.error).__name__}: {ev.error}"
                yield PoolEvent("crashed", task=self._tasks[ev.key], error=error)

    def shutdown(self, *, terminate: bool = False, timeout: float = 600.0) -> None:
        """Stop the workers (``terminate``: kill them now, their unfinished series are cleaned up by
        the next run) and wait for them."""
        self._pool.shutdown(terminate=terminate, timeout=timeout)


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
