"""Run a study folder: discovery, resume, local process pool or Dask, batch summary.

Resume rule: a series whose output folder holds a ``record.json`` with status ``"ok"`` and the
same formats and model is skipped; failed series are retried. Only one batch may write to an
output folder at a time (an advisory lock, released by the OS even after SIGKILL). Source files
are only ever read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from medseg.batch.discovery import Discovery, SelectionRule, SeriesTask, discover_series
from medseg.batch.pool import LocalPool, available_cores, run_pool
from medseg.batch.segmenters import Segmenter, SegmenterSpec
from medseg.batch.series import SeriesOptions, SeriesProgress, process_series, read_record
from medseg.core.errors import CancelledError, InputError, OutputError
from medseg.export.api import parse_formats
from medseg.io import csvsafe
from medseg.io.atomic import atomic_path
from medseg.io.output_policy import is_inside, same_path
from medseg.core.progress import CancelCallback, ProgressCallback, check_cancel, report

__all__ = ["BatchConfig", "run_batch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    """Options of a batch run.

    Attributes
    ----------
    formats : tuple of str
        Export formats (see :data:`medseg.export.FORMATS`).
    segmenter : SegmenterSpec
        Model to run (``"threshold"``, a model name/path, or None for the default).
    selection : SelectionRule
        Which series to run.
    workers : int
        Local worker processes (1 = in this process), or Dask workers of a LocalCluster.
    scheduler : str or None
        None: local. ``"local"``: a Dask LocalCluster with ``workers`` processes. Otherwise the
        address of an existing Dask scheduler (``tcp://host:8786``); paths must be visible to
        its workers (shared file system).
    strict_geometry : bool
        Refuse series with missing or irregular slices (else they are resampled, and DICOM
        exports of them fail).
    seg_type : {"binary", "labelmap"}
        DICOM SEG encoding.
    """

    formats: tuple[str, ...] = ("nifti", "stats")
    segmenter: SegmenterSpec = field(default_factory=SegmenterSpec)
    selection: SelectionRule = field(default_factory=SelectionRule)
    workers: int = 1
    scheduler: Optional[str] = None
    strict_geometry: bool = True
    seg_type: str = "binary"

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats))
        if self.workers < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}")
        if self.seg_type not in ("binary", "labelmap"):
            raise InputError(f"seg_type must be 'binary' or 'labelmap', got {self.seg_type!r}")

    @property
    def series_options(self) -> SeriesOptions:
        return SeriesOptions(self.formats, self.segmenter, self.strict_geometry, self.seg_type)


# -- Dask worker side -------------------------------------------------------------------------
_WORKER: dict = {}
_CACHE_LOCK = threading.Lock()


def _cached_segmenter(spec: SegmenterSpec) -> Segmenter:
    """Segmenter of this (Dask worker) process, built on first use and kept."""
    with _CACHE_LOCK:
        cache = _WORKER.setdefault("by_spec", {})
        if spec not in cache:
            cache[spec] = spec.build()
        return cache[spec]


def _dask_task(task: SeriesTask, out_dir: str, options: SeriesOptions) -> dict:
    return process_series(task, out_dir, options, _cached_segmenter(options.segmenter))


# -- driver side ------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    fh = open(out_dir / ".medseg-batch.lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise InputError(f"{out_dir}: another medseg batch is writing to this folder; wait for it or "
                             f"choose another output folder") from exc
        yield
    finally:
        fh.close()


def _clean_stale(out_dir: Path) -> None:
    for p in out_dir.iterdir():
        if p.is_dir() and (p.name.startswith(".partial-") or p.name.startswith(".trash-")):
            log.info("removing the unfinished output %s of an interrupted run", p.name)
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.name.startswith(".") and ".partial" in p.name:
            p.unlink(missing_ok=True)


def _is_done(out_dir: Path, task: SeriesTask, config: BatchConfig) -> Optional[dict]:
    rec = read_record(out_dir / task.id)
    if rec and rec.get("status") == "ok" and rec.get("formats") == list(config.formats) \
            and rec.get("model") == config.segmenter.name:
        return rec
    return None


def run_batch(
    study_dir: str | Path,
    out_dir: str | Path,
    *,
    config: BatchConfig = BatchConfig(),
    progress: Optional[ProgressCallback] = None,
    series_progress: Optional[SeriesProgress] = None,
    cancel: Optional[CancelCallback] = None,
    segmenter: Optional[Segmenter] = None,
) -> dict:
    """Segment every selected series of a study folder and export the results.

    Parameters
    ----------
    study_dir : str or Path
        Nested folder of DICOM series and/or NIfTI/NRRD/MHA files. Never modified.
    out_dir : str or Path
        One folder per series (``<id>/record.json`` plus the exports) and ``summary.json`` /
        ``summary.csv``.
    config : BatchConfig
    progress : callable, optional
        ``progress(done, total, message)`` over series.
    series_progress : callable, optional
        ``progress(series_id, done, total, message)`` within each series (local runs).
    cancel : callable, optional
        Checked while the study folder is scanned and between series. In the local pool, series
        already started (it starts them during the scan) finish; finished series stay published
        and are listed in the interrupted ``summary.json``, the others under ``not_run``.
    segmenter : callable, optional
        A ready ``segment(volume) -> Segmentation`` to use in this process instead of
        ``config.segmenter`` (``workers=1`` without Dask only).

    Returns
    -------
    dict
        The summary written to ``summary.json``: ``counts`` by status, ``series`` (one record
        each, including resumed ones and failures with their reason) and ``skipped`` (files
        that are not images and series excluded by the selection rule).
    """
    study, out = _check_paths(study_dir, out_dir, config, segmenter)
    t0 = time.perf_counter()
    with _locked(out):
        _clean_stale(out)
        run = _Run(study, out, config, progress)
        pool = None
        if config.workers > 1 and not config.scheduler:
            # started now: worker start-up and model loading overlap the discovery below
            pool = LocalPool(config.workers, _pool_spec(config), str(out), run.options,
                             threads=max(1, available_cores() // config.workers))
        try:
            _discover(run, pool, series_progress, cancel)
            _execute(run, pool, segmenter, series_progress, cancel)
        except BaseException as exc:
            if pool is not None:
                pool.shutdown(terminate=True)
            if isinstance(exc, (KeyboardInterrupt, CancelledError)):
                # Ctrl-C, SIGTERM (the CLI turns it into KeyboardInterrupt) or cancel: the workers are
                # stopped; no unfinished folder stays; the summary says what was done
                _clean_stale(out)
                found = run.found or Discovery(tasks=sorted(run.known, key=lambda t: t.id))  # cancelled in discovery
                summary = _summary(study, out, config, found, run.records, time.perf_counter() - t0)
                summary["status"] = "interrupted"
                summary["not_run"] = sorted(t.id for t in run.todo if t.id not in run.records)
                _write_summary(out, summary)
            raise
        if pool is not None:
            pool.shutdown()
        summary = _summary(study, out, config, run.found, run.records, time.perf_counter() - t0)
        _write_summary(out, summary)
    return summary


def _check_paths(study_dir: str | Path, out_dir: str | Path, config: BatchConfig,
                 segmenter: Optional[Segmenter]) -> tuple[Path, Path]:
    """The resolved study and output folders; raises for combinations that cannot run."""
    study = Path(study_dir).resolve()
    out = Path(out_dir).resolve()
    if out == study or same_path(out, study):
        raise InputError(f"{out}: the output folder must differ from the study folder")
    if is_inside(study, out):
        raise OutputError(out, f"the output folder contains the study folder {study}",
                          "choose an output folder outside the study (inside it is fine: it is not rediscovered)")
    if out.exists() and not out.is_dir():
        raise OutputError(out, "is a file, but the batch output folder is expected here", "give a folder path")
    if segmenter is not None and (config.workers > 1 or config.scheduler):
        raise InputError("a ready segmenter object only runs in this process; use config.segmenter "
                         "(a SegmenterSpec) with workers > 1 or Dask")
    return study, out


@dataclass
class _Run:
    """What a batch run has found and finished so far."""

    study: Path
    out: Path
    config: BatchConfig
    progress: Optional[ProgressCallback]
    todo: list = field(default_factory=list)
    known: list = field(default_factory=list)  # every selected series found so far (resumed or to do)
    records: dict = field(default_factory=dict)
    found: Optional[Discovery] = None
    total: int = 0

    @property
    def options(self) -> SeriesOptions:
        return self.config.series_options

    def discover(self, pool: Optional[LocalPool], cancel: Optional[CancelCallback]) -> None:
        """Find the series; finished ones are resumed, the others queued (and sent to ``pool`` at once)."""
        def found_one(task: SeriesTask) -> None:
            self.known.append(task)
            done = _is_done(self.out, task, self.config)
            if done is not None:
                self.records[task.id] = {**done, "resumed": True}
            else:
                self.todo.append(task)
                if pool is not None:
                    pool.submit(task)  # starts while discovery goes on

        self.found = discover_series(self.study, rule=self.config.selection, exclude=self.out, cancel=cancel,
                                     on_task=found_one)
        if pool is not None:
            pool.close_inputs()
        self.total = len(self.found.tasks)
        log.info("%d series: %d done before, %d to run", self.total, len(self.records), len(self.todo))
        report(self.progress, len(self.records), self.total, "series")

    def finished(self, rec: dict) -> None:
        self.records[rec["id"]] = {**rec, "resumed": False}
        report(self.progress, len(self.records), self.total, f"{rec['id']}: {rec['status']}")

    def crashed(self, task: SeriesTask, why: str) -> None:
        self.finished(_crash_record(task, self.out, self.options, why))


def _discover(run: _Run, pool: Optional[LocalPool], series_progress: Optional[SeriesProgress],
              cancel: Optional[CancelCallback]) -> None:
    """Discovery of a batch run. A cancel during it is a batch cancel: series the pool already took
    (they start while the DICOM headers are read) finish, stay published and are recorded."""
    try:
        run.discover(pool, cancel)
    except CancelledError:
        if pool is not None:
            pool.stop()
            run_pool(pool, run.finished, run.crashed, series_progress, None)
        raise CancelledError("batch cancelled by the user while the study folder was scanned") from None


def _execute(run: _Run, pool: Optional[LocalPool], segmenter: Optional[Segmenter],
             series_progress: Optional[SeriesProgress], cancel: Optional[CancelCallback]) -> None:
    """Process the series still to do: in the local pool, on Dask, or one by one in this process."""
    if pool is not None:
        if run_pool(pool, run.finished, run.crashed, series_progress, cancel):
            check_cancel(lambda: True, "batch")
    elif run.todo and run.config.scheduler:
        _run_dask(run.todo, run.out, run.config, run.options, run.finished, cancel)
    elif run.todo:
        seg_fn = segmenter or run.config.segmenter.build()
        for task in sorted(run.todo, key=lambda t: t.id):
            check_cancel(cancel, "batch")
            run.finished(process_series(task, run.out, run.options, seg_fn, progress=series_progress))


def _pool_spec(config: BatchConfig) -> SegmenterSpec:
    spec = config.segmenter
    if spec.threads is None:  # share the cores between workers instead of oversubscribing them
        spec = dataclasses.replace(spec, threads=max(1, available_cores() // config.workers))
    return spec


def _crash_record(task: SeriesTask, out: Path, options: SeriesOptions, why: str) -> dict:
    """Record (and publish) a series whose worker died without writing its own record, and remove the
    unfinished output it left (no other process works on this series)."""
    for partial in out.glob(f".partial-{task.id}-*"):
        shutil.rmtree(partial, ignore_errors=True)

    def failing(_volume):
        raise RuntimeError(f"the worker processing this series died: {why}")

    return process_series(SeriesTask(**{**asdict(task), "problem": f"worker died: {why}"}), out, options, failing)


def _run_dask(todo, out, config, options, finished, cancel) -> None:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - declared dependency
        from medseg.core.errors import DependencyError

        raise DependencyError("Dask runs need distributed: pip install 'dask[distributed]'") from exc
    resources = {"GPU": 1} if config.segmenter.uses_gpu else None
    with contextlib.ExitStack() as stack:
        if config.scheduler == "local":
            cluster = stack.enter_context(LocalCluster(
                n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                resources={"GPU": 1} if resources else None))
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(Client(config.scheduler))
        futures = {}
        for t in todo:
            fut = client.submit(_dask_task, t, str(out), options, key=f"medseg-series-{t.id}-{os.urandom(4).hex()}",
                                pure=False, resources=resources, retries=0)
            futures[fut] = t
        for fut in as_completed(list(futures)):
            task = futures[fut]
            try:
                finished(fut.result())
            except Exception as exc:
                finished(_crash_record(task, out, options, f"{type(exc).__name__}: {exc}"))
            if cancel is not None and cancel():
                client.cancel([f for f in futures if not f.done()])
                check_cancel(cancel, "batch")


def _summary(study: Path, out: Path, config: BatchConfig, found: Discovery, records: dict, wall: float) -> dict:
    series = [records[t.id] for t in found.tasks if t.id in records]
    counts: dict[str, int] = {}
    for r in series:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    for s in found.skipped:
        counts[s.status] = counts.get(s.status, 0) + 1
    return {
        "status": "complete", "study_dir": str(study), "out_dir": str(out),
        "config": {"formats": list(config.formats), "model": config.segmenter.name,
                   "selection": asdict(config.selection), "workers": config.workers,
                   "scheduler": config.scheduler, "strict_geometry": config.strict_geometry},
        "counts": counts, "wall_s": round(wall, 3),
        "series": series,
        "skipped": [asdict(s) for s in found.skipped],
    }


def _write_summary(out: Path, summary: dict) -> None:
    with atomic_path(out / "summary.json") as p:
        p.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    names: list[str] = []
    for r in summary["series"]:
        for n in r.get("label_volumes_ml", {}):
            if n not in names:
                names.append(n)
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(["id", "status", "resumed", "kind", "modality", "description", "n_slices", "path", "seconds",
                "error"] + [f"volume_ml:{n}" for n in names])
    for r in summary["series"]:
        src = r.get("source", {})
        vols = r.get("label_volumes_ml", {})
        w.writerow([r["id"], r["status"], r.get("resumed", False), src.get("kind"), src.get("modality"),
                    src.get("description"), src.get("n_slices"), src.get("path"),
                    r.get("timings_s", {}).get("total"), r.get("error") or ""]
                   + [vols.get(n, "") for n in names])
    for s in summary["skipped"]:
        w.writerow(["", s["status"], "", "", "", "", "", s["path"], "", s["reason"]] + [""] * len(names))
    with atomic_path(out / "summary.csv") as p:
        p.write_text(buf.getvalue())
