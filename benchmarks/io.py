"""DICOM series load time: medseg vs SimpleITK's ImageSeriesReader vs a naive pydicom loop.

Two series: the real CT in ``../shared/data/real/ct_dicom_series`` (20 slices, JPEG 2000
lossless) and a generated 512×512×300 CT series (uncompressed, written with
:func:`medseg.io.dicom_write.write_dicom_series` into a temporary folder). Each loader runs
``--runs`` times after one warm-up (files in the page cache); the median is reported and the
ratio to SimpleITK measured in the same run. Every loader includes finding the files and
ordering the slices; the outputs are checked to be identical.

    .venv/bin/python benchmarks/io.py [--runs 5] [--slices 300] [--real PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_medseg(folder: Path) -> np.ndarray:
    from medseg.io.dicom import read_dicom

    return read_dicom(folder).array


def load_sitk(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def load_naive(folder: Path) -> np.ndarray:
    """What many scripts do: read every file fully, sort by the z of the position, stack, rescale."""
    import pydicom

    slices = [pydicom.dcmread(p) for p in sorted(folder.rglob("*")) if p.is_file()]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])


LOADERS = {"SimpleITK": load_sitk, "medseg": load_medseg, "naive pydicom": load_naive}


def time_loaders(folder: Path, runs: int) -> dict[str, float]:
    arrays = {name: fn(folder) for name, fn in LOADERS.items()}  # warm-up + correctness
    ref = arrays["SimpleITK"]
    for name, arr in arrays.items():
        if arr.shape != ref.shape or not np.array_equal(arr.astype(np.float64), ref.astype(np.float64)):
            raise SystemExit(f"{name} disagrees with SimpleITK on {folder} (shape {arr.shape} vs {ref.shape})")
    times: dict[str, list[float]] = {name: [] for name in LOADERS}
    for _ in range(runs):
        for name, fn in LOADERS.items():  # interleaved, so machine noise hits all loaders alike
            t0 = time.perf_counter()
            fn(folder)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(title: str, medians: dict[str, float]) -> None:
    base = medians["SimpleITK"]
    print(f"\n{title}")
    print(f"  {'loader':<15} {'median s':>9} {'× SimpleITK':>12}")
    for name, t in medians.items():
        print(f"  {name:<15} {t:>9.3f} {t / base:>11.2f}×")


def generated_series(folder: Path, slices: int) -> Path:
    from medseg.io.dicom_write import write_dicom_series
    from medseg.core.volume import Volume

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:slices, :512, :512]
    body = ((y - 256) ** 2 + (x - 256) ** 2 < 200**2).astype(np.int16)
    arr = np.where(body, 40, -1000).astype(np.int16) + rng.integers(-20, 20, (slices, 512, 512), dtype=np.int16)
    arr[:, 0, 0] += (z[:, 0, 0] % 7).astype(np.int16)  # slices differ
    vol = Volume.from_spacing(arr, (1.0, 0.75, 0.75), origin=(-192.0, -192.0, -150.0))
    write_dicom_series(vol, folder, seed=1, series_description="benchmark 512x512")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--real", type=Path, default=Path(os.environ.get("MEDSEG_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))
                   / "ct_dicom_series")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("medseg").setLevel(logging.ERROR)  # the real series warns about its blank UIDs
    import pydicom
    import SimpleITK as sitk

    print(f"python {sys.version.split()[0]}, pydicom {pydicom.__version__}, SimpleITK {sitk.Version_VersionString()}, "
          f"{os.cpu_count()} CPUs, median of {args.runs} runs")
    if args.real.is_dir():
        report(f"real CT series, JPEG 2000 lossless ({args.real})", time_loaders(args.real, args.runs))
    else:
        print(f"\n(real series not found at {args.real}; skipped)")
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        t0 = time.perf_counter()
        folder = generated_series(Path(tmp) / "ct", args.slices)
        print(f"\n(wrote 512x512x{args.slices} series in {time.perf_counter() - t0:.1f} s)")
        report(f"generated 512x512x{args.slices} CT series, explicit VR little endian", time_loaders(folder, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
