"""``medseg batch STUDY_DIR OUT_DIR``: segment every series of a study folder and export them."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch", help="segment every image series of a study folder (resumable, parallel, Dask)",
        description="Find every DICOM series (by SeriesInstanceUID) and NIfTI/NRRD/MHA file under STUDY_DIR, "
                    "segment each and write OUT_DIR/<series>/ with the requested formats and record.json, plus "
                    "OUT_DIR/summary.json and summary.csv. Rerun the same command to resume: finished series are "
                    "skipped, failed ones retried. Exit code 0: all selected series succeeded; 3: some failed.")
    p.add_argument("study_dir", help="study folder (searched recursively; never modified)")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--model", default=None,
                   help="model name or path (default: the bundled default model); 'threshold' = HU body/bone")
    p.add_argument("--formats", default="nifti,stats",
                   help="comma-separated: nifti,nrrd,seg,rtstruct,stl,stats (default nifti,stats)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:8786), or 'local' for a LocalCluster of --workers")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (cuda declares a GPU resource per Dask task)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    p.add_argument("--modality", action="append", default=[], help="only this modality (repeatable), e.g. CT")
    p.add_argument("--min-slices", type=int, default=1, help="skip series with fewer slices")
    p.add_argument("--description", default=None, help="only series whose description matches this regex")
    p.add_argument("--seg-type", choices=("binary", "labelmap"), default="binary", help="DICOM SEG encoding")
    p.add_argument("--allow-irregular", action="store_true",
                   help="resample series with missing/irregular slices instead of failing them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medseg.batch import BatchConfig, SegmenterSpec, SelectionRule, run_batch

    config = BatchConfig(
        formats=tuple(args.formats.split(",")),
        segmenter=SegmenterSpec(args.model, args.device, args.threads),
        selection=SelectionRule(tuple(m for s in args.modality for m in s.split(",") if m), args.min_slices,
                                args.description),
        workers=args.workers, scheduler=args.scheduler, strict_geometry=not args.allow_irregular,
        seg_type=args.seg_type)
    bars: dict = {}

    def progress(done, total, message):
        bar = bars.get("batch")
        if bar is None:
            bar = bars["batch"] = tqdm(total=total, desc="series", unit="series", file=sys.stderr, position=0,
                                       dynamic_ncols=True)
        bar.n = done
        bar.set_postfix_str(message[:40], refresh=True)

    def series_progress(sid, done, total, message):
        bar = bars.get("series")
        if bar is None:
            bar = bars["series"] = tqdm(total=total, file=sys.stderr, position=1, leave=False, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        bar.set_description(f"{sid[:32]}: {message}", refresh=True)

    try:
        with _sigterm_interrupts():
            summary = run_batch(args.study_dir, args.out_dir, config=config, progress=progress,
                                series_progress=series_progress)
    finally:
        for bar in bars.values():
            bar.close()
    _print_summary(summary)
    return 3 if summary["counts"].get("failed") else 0


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM stops the batch like Ctrl-C: workers stopped, summary.json 'interrupted', no partial folders."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _print_summary(summary: dict) -> None:
    rows = [(r["id"], r["status"] + (" (resumed)" if r.get("resumed") else ""),
             f"{r.get('timings_s', {}).get('total', 0):.1f}s", r.get("error") or "") for r in summary["series"]]
    rows += [(s["path"], s["status"], "", s["reason"]) for s in summary["skipped"]]
    width = max([len(r[0]) for r in rows] + [6])
    print(f"{'series':<{width}}  {'status':<16}  {'time':>7}  reason")
    for sid, status, t, err in rows:
        print(f"{sid:<{width}}  {status:<16}  {t:>7}  {err}")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary["counts"].items()))
    print(f"{counts}; {summary['wall_s']:.1f}s; summary: {summary['out_dir']}/summary.json")
