"""Batch throughput: series per minute with 1 vs 2 local workers; DICOM SEG write time vs labels.

Usage::

    python benchmarks/batch.py [--series 6] [--shape 48 160 160] [--model threshold]
                               [--formats nifti,seg,rtstruct,stl,stats] [--labels 10 50 100]

Generates a study of phantom CT series written as DICOM, runs ``run_batch`` with 1 and then 2
worker processes (fresh output folders, same study, same run) and prints series/minute and the
ratio. Then times ``write_dicom_seg`` (binary and labelmap encodings) for label maps with many
labels (highdicom #202: 98 segments took > 8 min there). The machine is shared: read ratios
measured in the same run, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_study(root: Path, n: int, shape: tuple[int, int, int]) -> None:
    from medseg.io.dicom_write import write_dicom_series
    from medseg.phantom import default_phantom_affine, make_phantom

    for s in range(n):
        image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (5.0, 2.2, 2.2)), seed=s)
        write_dicom_series(image, root / f"p{s}", seed=f"bench{s}", series_description=f"CT {s}")


def bench_workers(study: Path, tmp: Path, args) -> None:
    from medseg.batch import BatchConfig, SegmenterSpec, run_batch

    model = None if args.model == "default" else args.model  # "default": the bundled default model
    # one torch thread per worker in both runs: the ratio measures process parallelism
    spec = SegmenterSpec(model, "cpu", threads=1 if args.model != "threshold" else None)
    rates = {}
    for workers in (1, 2):
        out = tmp / f"out{workers}"
        t0 = time.perf_counter()
        s = run_batch(study, out, config=BatchConfig(formats=tuple(args.formats.split(",")), segmenter=spec,
                                                     workers=workers))
        wall = time.perf_counter() - t0
        assert s["counts"] == {"ok": args.series}, s["counts"]
        rates[workers] = args.series / wall * 60
        print(f"workers={workers}: {args.series} series in {wall:.1f} s -> {rates[workers]:.2f} series/min")
    print(f"speed-up 2 vs 1 workers: {rates[2] / rates[1]:.2f}x (goal >= 1.8x where CPU-bound; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")


def bench_seg(tmp: Path, args) -> None:
    from medseg.export import read_dicom_seg, write_dicom_seg
    from medseg.io import read_volume
    from medseg.io.dicom_write import write_dicom_series
    from medseg.labels import LabelTable
    from medseg.phantom import default_phantom_affine, make_phantom
    from medseg.segmentation import Segmentation

    shape = (64, 256, 256)
    image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (4.0, 1.4, 1.4)), seed=1)
    write_dicom_series(image, tmp / "segsrc", seed="segsrc")
    vol = read_volume(tmp / "segsrc")
    rng = np.random.default_rng(0)
    for n in args.labels:
        # n blobs spread through the volume (Voronoi cells of random seeds inside a central box)
        seeds = rng.uniform([4, 30, 30], [60, 226, 226], size=(n, 3))
        zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij", sparse=True)
        best = np.full(shape, np.inf, np.float32)
        lab = np.zeros(shape, np.uint16)
        for i, c in enumerate(seeds, start=1):
            d = ((zz - c[0]) * 4) ** 2 + ((yy - c[1]) * 1.4) ** 2 + ((xx - c[2]) * 1.4) ** 2
            take = (d < best) & (d < 40.0 ** 2)
            lab[take] = i
            best = np.where(take, d, best)
        seg = Segmentation(vol.with_array(lab), LabelTable.from_names([f"structure_{i}" for i in range(1, n + 1)]))
        for kind in ("binary", "labelmap"):
            t0 = time.perf_counter()
            p = write_dicom_seg(seg, tmp / f"seg_{n}_{kind}.dcm", source=vol, segmentation_type=kind)
            tw = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = read_dicom_seg(p, source=vol, segmentation=seg)
            tr = time.perf_counter() - t0
            ok = np.array_equal(back, lab)
            print(f"SEG {kind:8s} {n:4d} labels on {shape}: write {tw:6.1f} s, read back {tr:6.1f} s, "
                  f"{p.stat().st_size / 1e6:6.1f} MB, exact={ok}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=6)
    ap.add_argument("--shape", type=int, nargs=3, default=(48, 160, 160))
    ap.add_argument("--model", default="threshold", help="'threshold', 'default' (bundled model) or a model name/path")
    ap.add_argument("--formats", default="nifti,seg,rtstruct,stl,stats")
    ap.add_argument("--labels", type=int, nargs="*", default=[10, 50, 100])
    ap.add_argument("--skip-workers", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="medseg-bench-batch-"))
    try:
        if not args.skip_workers:
            make_study(tmp / "study", args.series, tuple(args.shape))
            bench_workers(tmp / "study", tmp, args)
        if args.labels:
            bench_seg(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
