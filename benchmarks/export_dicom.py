"""DICOM SEG and RTSTRUCT export time on real CT series, optionally side by side with another checkout.

Series: ``../shared/data/real/ct_dicom_series`` (20 slices, JPEG 2000) and
``nsclc_lung1_001/dicom`` (134 slices). The label map is the threshold segmentation of the
series (:func:`medseg.batch.segmenters.threshold_segment`: body, bone). Each export runs once as
a warm-up and then ``--runs`` times; the median is printed, per source kind: the Volume from
``read_volume`` (``volume``), the series folder (``folder``) and the list of slice files
(``files``). Reading the volume itself is not timed.

With ``--baseline PATH`` (a checkout of another commit, e.g. ``git worktree add /tmp/base REV``)
the same measurement runs in child processes with ``PYTHONPATH=PATH`` and with this checkout,
alternating for ``--rounds`` rounds, and the ratio (this / baseline) is printed.

    .venv/bin/python benchmarks/export_dicom.py [--runs 5] [--baseline /tmp/base] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERIES = {"ct20": "ct_dicom_series", "nsclc134": "nsclc_lung1_001/dicom"}


def measure(real: Path, runs: int, only: str = "") -> dict[str, float]:
    """Median seconds per (series, format, source kind) in this interpreter."""
    import medseg
    from medseg.batch.segmenters import threshold_segment
    from medseg.export import write_dicom_seg, write_rtstruct
    from medseg.io import read_volume

    print(f"# medseg from {Path(medseg.__file__).parent}", file=sys.stderr)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sub in SERIES.items():
            if only and name not in only.split(","):
                continue
            folder = real / sub
            volume = read_volume(folder)
            seg = threshold_segment(volume)
            sources = {"volume": volume, "folder": folder, "files": list(volume.meta["files"])}
            for fmt, write in (("seg", write_dicom_seg), ("rtstruct", write_rtstruct)):
                for kind, source in sources.items():
                    times = []
                    for r in range(runs + 1):
                        t0 = time.perf_counter()
                        write(seg, Path(tmp) / f"{name}_{fmt}_{kind}_{r}.dcm", source=source)
                        times.append(time.perf_counter() - t0)
                    out[f"{name} {fmt} source={kind}"] = statistics.median(times[1:])
    return out


def child(path: Path, real: Path, runs: int, only: str = "") -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(path))
    res = subprocess.run([sys.executable, __file__, "--child", "--runs", str(runs), "--real", str(real),
                          "--series", only],
                         env=env, capture_output=True, text=True, check=True)
    sys.stderr.write(res.stderr)
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to compare with")
    ap.add_argument("--series", default="", help="comma-separated subset of: " + ", ".join(SERIES))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.real, args.runs, args.series)))
        return
    if args.baseline is None:
        for key, t in measure(args.real, args.runs, args.series).items():
            print(f"{key:40s} {t * 1000:9.1f} ms")
        return
    base: dict[str, list[float]] = {}
    this: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for store, path in ((base, args.baseline), (this, ROOT)):
            for key, t in child(path, args.real, args.runs, args.series).items():
                store.setdefault(key, []).append(t)
    print(f"{'export':40s} {'baseline ms':>12s} {'this ms':>9s} {'this/base':>9s}")
    for key in base:
        b, t = statistics.median(base[key]), statistics.median(this[key])
        print(f"{key:40s} {b * 1000:12.1f} {t * 1000:9.1f} {t / b:9.2f}")


if __name__ == "__main__":
    main()
