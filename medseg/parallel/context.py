"""Where worker processes come from and how many threads each may use."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from typing import Optional, Sequence

__all__ = ["available_cores", "pin_threads", "process_context"]

#: thread-pool variables read by OpenMP, MKL, OpenBLAS, numexpr and ITK when they start
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a container's cpuset),
    else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


def pin_threads(threads: int) -> None:
    """Limit this process's thread pools to ``threads`` (a worker's share of the cores).

    Sets the OpenMP/MKL/OpenBLAS/ITK variables for libraries loaded from now on, and the pools of
    torch and SimpleITK when they are already imported.
    """
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "SimpleITK" in sys.modules:
        sys.modules["SimpleITK"].ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def process_context(preload: Optional[Sequence[str]] = None):
    """A ``forkserver`` context (a clean process that never ran threads, Qt or torch), with the
    modules ``preload`` imported once in the fork server; ``spawn`` where there is no fork.

    The fork server is started once per process, so the preload list of the first pool wins.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        if preload:
            ctx.set_forkserver_preload(list(preload))
        return ctx
    return mp.get_context("spawn")  # pragma: no cover - Windows
