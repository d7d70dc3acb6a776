"""Benchmark: STAPLE for 5 raters on a 512×512×300 label map (SimpleITK, via medseg.analysis.consensus).

Prints wall time, peak memory and how well the raters' known sensitivity/specificity are
recovered, with majority voting on the same data as the in-run baseline.

    python benchmarks/consensus.py                       # 300×512×512 (z, y, x), 5 raters
    python benchmarks/consensus.py --shape 100 256 256   # smaller
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from medseg.analysis import consensus as cs
from medseg.analysis import metrics

SENS = [0.95, 0.85, 0.75, 0.90, 0.65]
SPEC = [0.995, 0.98, 0.999, 0.97, 0.99]


def make_raters(shape, *, seed=0):
    """Truth: two ellipsoids; each rater flips voxels independently with its known sens/spec."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    truth = np.zeros(shape, bool)
    zz = np.arange(z)[:, None, None]
    yy = np.arange(y)[None, :, None]
    xx = np.arange(x)[None, None, :]
    for cz, cy, cx, rz, ry, rx in ((0.5, 0.45, 0.35, 0.35, 0.25, 0.2), (0.55, 0.5, 0.7, 0.2, 0.15, 0.12)):
        truth |= ((zz - cz * z) / (rz * z)) ** 2 + ((yy - cy * y) / (ry * y)) ** 2 + ((xx - cx * x) / (rx * x)) ** 2 <= 1
    raters = [np.empty(shape, np.uint8) for _ in SENS]
    for k in range(0, z, 16):  # slab-wise: bounded temporary memory
        t = truth[k:k + 16]
        for r, (se, sp) in enumerate(zip(SENS, SPEC)):
            u = rng.random(t.shape, dtype=np.float32)
            raters[r][k:k + 16] = np.where(t, u < se, u >= sp)
    return truth, raters


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), help="z y x")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    shape = tuple(args.shape)
    t0 = time.perf_counter()
    truth, raters = make_raters(shape)
    print(f"grid {shape} (z, y, x) = {np.prod(shape) / 1e6:.1f} M voxels, {len(raters)} raters; "
          f"data made in {time.perf_counter() - t0:.1f} s; RSS so far {peak_rss_gb():.2f} GB")
    mv_times, st_times = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        mv = cs.majority_vote(raters)
        mv_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        res = cs.staple(raters)
        st_times.append(time.perf_counter() - t)
    mv_t, st_t = float(np.median(mv_times)), float(np.median(st_times))
    print(f"majority vote (baseline): {mv_t:.2f} s")
    print(f"STAPLE: {st_t:.2f} s in {res.iterations} EM iterations = {st_t / mv_t:.1f}x majority vote; "
          f"peak RSS {peak_rss_gb():.2f} GB")
    print("rater  sensitivity (true → STAPLE)   specificity (true → STAPLE)")
    for r in range(len(SENS)):
        print(f"  {r + 1}    {SENS[r]:.3f} → {res.sensitivity[r]:.4f}          {SPEC[r]:.4f} → {res.specificity[r]:.5f}")
    print(f"max |error|: sensitivity {np.max(np.abs(res.sensitivity - SENS)):.4f}, "
          f"specificity {np.max(np.abs(res.specificity - SPEC)):.5f}")
    print(f"Dice with truth: STAPLE {metrics.dice(res.mask, truth):.4f}, majority vote {metrics.dice(mv > 0, truth):.4f}")


if __name__ == "__main__":
    main()
