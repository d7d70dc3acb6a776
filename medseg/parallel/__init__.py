"""Worker processes for medseg: one process pool for batch runs and for the napari plugin's helper.

* :class:`ProcessPool` — worker processes on :class:`concurrent.futures.ProcessPoolExecutor`
  (one single-process executor per worker): per-worker setup run once, tasks highest priority
  first, progress and cancel, a dead worker costs only its task, workers die with the caller.
* :func:`run_in_process` — one long-lived helper process for work that holds the GIL, with large
  numpy arrays passed through shared memory (:func:`dumps_shared` / :func:`loads_shared`).

>>> from medseg.parallel import ProcessPool
>>> pool = ProcessPool(2)
>>> pool.call(sum, [1, 2, 3])
6
>>> pool.shutdown()
"""

from __future__ import annotations

from medseg.parallel.context import available_cores, pin_threads, process_context
from medseg.parallel.helper import main_is_guarded, run_in_process, shutdown_helper
from medseg.parallel.pool import (
    CANCEL_GRACE_S,
    PoolEvent,
    ProcessPool,
    WorkerCrashedError,
    WorkerStartError,
    worker_cancelled,
    worker_progress,
)
from medseg.parallel.shared import SHARE_MIN_BYTES, dumps_shared, loads_shared, release

__all__ = [
    "ProcessPool",
    "PoolEvent",
    "WorkerStartError",
    "WorkerCrashedError",
    "process_context",
    "available_cores",
    "pin_threads",
    "worker_progress",
    "worker_cancelled",
    "CANCEL_GRACE_S",
    "run_in_process",
    "shutdown_helper",
    "main_is_guarded",
    "dumps_shared",
    "loads_shared",
    "release",
    "SHARE_MIN_BYTES",
]
