"""Batch segmentation of study folders, with resume, per-series errors, local pools and Dask.

>>> from medseg.batch import BatchConfig, SegmenterSpec, run_batch
>>> summary = run_batch("study/", "out/", config=BatchConfig(
...     formats=("nifti", "seg", "rtstruct", "stl", "stats"),
...     segmenter=SegmenterSpec("threshold"), workers=2))
>>> summary["counts"]                       # {'ok': 5, 'failed': 1, 'not_an_image': 2}

Output layout: ``out/<series id>/`` holds the exports and ``record.json`` (status, timings,
errors, label volumes); ``out/summary.json`` and ``out/summary.csv`` cover every series and every
skipped file. Rerunning the same command skips finished series and retries failed ones.
"""

from __future__ import annotations

from medseg.batch.discovery import Discovery, SelectionRule, SeriesTask, SkippedItem, discover_series
from medseg.batch.runner import BatchConfig, run_batch
from medseg.batch.segmenters import THRESHOLD_LABELS, SegmenterSpec, threshold_segment
from medseg.batch.series import SeriesOptions, process_series, read_record

__all__ = [
    "BatchConfig",
    "run_batch",
    "SegmenterSpec",
    "SelectionRule",
    "SeriesTask",
    "SkippedItem",
    "Discovery",
    "discover_series",
    "SeriesOptions",
    "process_series",
    "read_record",
    "threshold_segment",
    "THRESHOLD_LABELS",
]
