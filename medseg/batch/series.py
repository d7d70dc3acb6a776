"""Process one series: read, segment, export into a temporary folder, publish it atomically.

The same function runs in the calling process, in a local worker process and on a Dask worker,
so every path writes identical outputs. A series' output folder appears in one ``rename``,
with its ``record.json`` inside (written last): a folder is either complete or absent, even
after SIGKILL. Stale temporary folders (``.partial-*``) are removed by the next run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from medseg import __version__
from medseg.batch.discovery import SeriesTask, check_unchanged
from medseg.batch.segmenters import Segmenter, SegmenterSpec
from medseg.export.api import DICOM_FORMATS, export_segmentation
from medseg.io.atomic import atomic_path

__all__ = ["SeriesOptions", "process_series", "read_record", "RECORD_NAME", "publish_folder"]

log = logging.getLogger(__name__)

RECORD_NAME = "record.json"
SeriesProgress = Callable[[str, int, Optional[int], str], None]


@dataclass(frozen=True)
class SeriesOptions:
    """What to do with each series (picklable)."""

    formats: tuple[str, ...] = ("nifti", "stats")
    segmenter: SegmenterSpec = field(default_factory=SegmenterSpec)
    strict_geometry: bool = True
    seg_type: str = "binary"


def read_record(folder: Path) -> Optional[dict]:
    """The record of a published series folder, None when absent or unreadable."""
    try:
        return json.loads((folder / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_folder(tmp: Path, final: Path) -> None:
    """Rename a finished temporary folder to ``final``, replacing an older one."""
    trash = None
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def process_series(
    task: SeriesTask,
    out_dir: str | Path,
    options: SeriesOptions,
    segmenter: Segmenter,
    *,
    progress: Optional[SeriesProgress] = None,
) -> dict:
    """Segment and export one series into ``out_dir/<task.id>``; never raises for a bad series.

    Parameters
    ----------
    task : SeriesTask
    out_dir : str or Path
        Batch output folder.
    options : SeriesOptions
    segmenter : callable
        ``segment(volume) -> Segmentation``, built once per worker.
    progress : callable, optional
        ``progress(series_id, done, total, message)``.

    Returns
    -------
    dict
        The record written to ``record.json``: ``status`` is ``"ok"`` or ``"failed"`` (with
        ``error``); ``timings_s``, ``outputs``, ``label_volumes_ml``, ``warnings``.
    """
    out_dir = Path(out_dir)
    final = out_dir / task.id
    tmp = out_dir / f".partial-{task.id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    t_start = time.perf_counter()
    record: dict = {
        "id": task.id, "status": "running", "source": task.summary(), "formats": list(options.formats),
        "model": options.segmenter.name, "medseg_version": __version__, "started": _now(),
        "worker": f"{socket.gethostname()}:{os.getpid()}", "timings_s": {}, "outputs": {},
        "skipped_formats": {}, "label_volumes_ml": {}, "warnings": [], "error": None,
    }
    steps = 3

    def say(done: int, message: str) -> None:
        if progress is not None:
            progress(task.id, done, steps, message)

    try:
        _segment_and_export(task, options, segmenter, tmp, record, say)
        record["status"] = "ok"
    except Exception as exc:  # one bad series never stops the batch: record why
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=8)
        log.warning("series %s failed: %s", task.id, record["error"])
    record["timings_s"]["total"] = round(time.perf_counter() - t_start, 4)
    record["finished"] = _now()
    with atomic_path(tmp / RECORD_NAME) as p:  # the record is written last
        p.write_text(json.dumps(record, indent=2, default=str) + "\n")
    publish_folder(tmp, final)
    say(steps, record["status"])
    return record


def _segment_and_export(task: SeriesTask, options: SeriesOptions, segmenter: Segmenter, tmp: Path, record: dict,
                        say: Callable[[int, str], None]) -> None:
    """Read, segment and export one series into ``tmp``, filling ``record``; raises on failure."""
    if task.problem:
        from medseg.core.errors import DicomError

        raise DicomError(task.path, task.problem, "fix or remove the series; the others were processed")
    say(0, "reading")
    t0 = time.perf_counter()
    volume = _read(task, options)
    check_unchanged(task, volume.meta.get("files") or [])
    record["timings_s"]["read"] = round(time.perf_counter() - t0, 4)
    record["shape_zyx"] = list(volume.shape)
    record["spacing_zyx_mm"] = [round(s, 6) for s in volume.spacing]
    record["warnings"] = list(volume.meta.get("warnings", []))
    say(1, "segmenting")
    t0 = time.perf_counter()
    seg = segmenter(volume)
    volume.require_same_grid(seg.label_map, what="segmentation")
    record["timings_s"]["segment"] = round(time.perf_counter() - t0, 4)
    say(2, "exporting")
    formats = list(options.formats)
    if task.kind != "dicom":
        for f in DICOM_FORMATS:
            if f in formats:
                formats.remove(f)
                record["skipped_formats"][f] = "the source is not DICOM"
    if formats:
        result = export_segmentation(seg, tmp, formats=formats, image=volume,
                                     algorithm=options.segmenter.name, seg_type=options.seg_type)
        record["outputs"] = result["files"]
        record["skipped_formats"].update(result["skipped"])
        record["timings_s"].update({f"export_{k}": v for k, v in result["timings_s"].items()})
    vols = seg.volumes_ml()
    record["label_volumes_ml"] = {l.name: round(vols[l.index], 6) for l in seg.labels}


def _read(task: SeriesTask, options: SeriesOptions):
    if task.kind == "dicom":
        from medseg.io.dicom import read_dicom

        return read_dicom(task.path, series_uid=task.series_uid, strict=options.strict_geometry)
    from medseg.io import read_volume

    return read_volume(task.path)
