"""Click-to-segment benchmark: accuracy on the real scans, latency and memory on a CT-sized volume.

Run:  nice .venv/bin/python benchmarks/interactive.py [--part accuracy|latency|memory|all] [--engine classical]

1. accuracy: the robot user of :mod:`medseg.interactive.robot` on ../shared/data/real —
   organs (MR liver, spleen, kidneys, stomach, gallbladder, pancreas, aorta; CTA aorta) and
   tumours (brain2, breast1): Dice after 1/3/5 clicks, surface Dice 2 mm and HD95 after 5,
   clicks to Dice 0.9 (up to 10), latency. Baseline in the same run: plain
   ``skimage.segmentation.random_walker`` (mode cg_j, 4 mm balls at the clicks as seeds, the
   volume border as background until the first negative click, whole volume) driven by the
   same robot, on the volumes under 1 M voxels (MR abdomen, breast1).
2. latency: a 512x512x300 CT-sized phantom (1.25 x 0.7 x 0.7 mm); robot clicks on its organs;
   first-click and median later-click latency (2 CPU cores at most).
   Held-out check (``--part heldout``): 12 other MR structures of the same scan that were never
   used to choose the engine's parameters, same robot and metrics.
3. memory: 500 clicks in one session on that volume (an object accepted every 10 clicks);
   RSS growth after the first object and over all 500 clicks.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = Path(os.environ.get("MEDSEG_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))

ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6, "gallbladder": 4,
          "pancreas": 7, "aorta": 23}


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _SkimageRW:
    """Baseline engine: skimage random_walker on the whole volume, clicks as seeds."""

    name = "skimage_random_walker"
    prompt_types = ("point",)

    def set_image(self, volume):
        from medseg.interactive.classical import ClassicalEngine

        self._vol = volume
        a = volume.array.astype(np.float32)
        lo, hi = np.percentile(a, [0.5, 99.5])
        self._img = (np.clip(a, lo, hi) - lo) / max(hi - lo, 1e-6)

    def reset(self):
        pass

    def predict(self, prompts, *, blocked=None, previous=None):
        from skimage.segmentation import random_walker

        markers = np.zeros(self._img.shape, np.int32)
        r = [max(1, int(round(4.0 / s))) for s in self._vol.spacing]  # seeds: 4 mm balls
        for lab_, pts in ((2, prompts.negative), (1, prompts.positive)):
            for p in pts:
                lo = np.maximum(np.asarray(p) - r, 0)
                markers[lo[0]:p[0] + r[0] + 1, lo[1]:p[1] + r[1] + 1, lo[2]:p[2] + r[2] + 1] = lab_
        if not (markers == 2).any():  # one label only: the border as background
            markers[0], markers[-1] = 2, 2
            markers[:, 0], markers[:, -1] = 2, 2
            markers[:, :, 0], markers[:, :, -1] = 2, 2
            for p in prompts.positive:
                markers[tuple(p)] = 1
        lab = random_walker(self._img, markers, beta=130, mode="cg_j", spacing=self._vol.spacing)
        return (slice(None),) * 3, lab == 1


def real_cases():
    from medseg.io import read_volume

    mr = read_volume(REAL / "mr_abdomen/image.nii.gz")
    mrl = read_volume(REAL / "mr_abdomen/labels.nii.gz").array
    cta = read_volume(REAL / "cta_aorta/image.nii.gz")
    ctal = read_volume(REAL / "cta_aorta/labels.nii.gz").array
    cases = [(mr, mrl == i, f"mr:{n}", "organ") for n, i in ORGANS.items()]
    cases.append((cta, ctal == 1, "cta:aorta", "organ"))
    for t in ("brain2", "breast1"):
        img = read_volume(REAL / f"tumors/{t}_mr_image.nrrd")
        lab = read_volume(REAL / f"tumors/{t}_mr_label.nrrd").array
        cases.append((img, lab == 1, f"tumor:{t}", "tumor"))
    return cases


# MR structures that were never used to choose the engine's parameters: a check that the
# defaults tuned on the cases above generalise (the prostate phantom's labels are scattered
# fragments, not objects, and are left out)
HELD_OUT = {"small_bowel": 13, "duodenum": 14, "colon": 15, "vertebrae": 19, "intervertebral_discs": 20,
            "spinal_cord": 21, "inferior_vena_cava": 24, "portal_vein": 25, "autochthon_left": 46,
            "autochthon_right": 47, "iliopsoas_left": 48, "iliopsoas_right": 49}


def held_out(engine) -> None:
    from medseg.interactive import Session
    from medseg.interactive.bench import format_table, summarise
    from medseg.interactive.robot import run_robot
    from medseg.io import read_volume

    mr = read_volume(REAL / "mr_abdomen/image.nii.gz")
    mrl = read_volume(REAL / "mr_abdomen/labels.nii.gz").array
    rows = []
    for n, i in HELD_OUT.items():
        s = Session(engine)
        s.set_image(mr)
        r = run_robot(s, mrl == i, spacing=mr.spacing, n_clicks=10, name=f"mr:{n}")
        rows.append({"target": f"mr:{n}", "dice_1": r.dice_at(1), "dice_3": r.dice_at(3), "dice_5": r.dice_at(5),
                     "surface_dice_2mm": r.surface_dice_2mm, "hd95_mm": r.hd95_mm, "clicks_to_0.9": r.clicks_to(0.9),
                     "latency_first_s": r.latency_s[0], "latency_median_s": float(np.median(r.latency_s[1:]))})
    print("\n== held-out MR structures (not used to tune the engine) ==")
    print(format_table(rows, summarise(rows)))
    print(f"mean Dice@5 over held-out structures: {np.mean([r['dice_5'] for r in rows]):.3f}\n")


def accuracy(engine, baseline: bool) -> None:
    from medseg.interactive import Session
    from medseg.interactive.bench import format_table, summarise
    from medseg.interactive.robot import run_robot

    engines = [("medseg " + str(engine or "classical"), engine)]
    if baseline:
        engines.append(("baseline skimage random_walker", _SkimageRW()))
    for title, eng in engines:
        groups: dict[str, list] = {"organ": [], "tumor": []}
        for vol, target, name, group in real_cases():
            if eng is not engine and np.prod(vol.shape) > 1_000_000:
                continue  # the whole-volume baseline takes 20-75 s per click on these
            s = Session(eng)
            s.set_image(vol)
            r = run_robot(s, target, spacing=vol.spacing, n_clicks=10 if eng is engine else 5, name=name)
            lat = r.latency_s
            groups[group].append({
                "target": name, "dice_1": r.dice_at(1), "dice_3": r.dice_at(3), "dice_5": r.dice_at(5),
                "surface_dice_2mm": r.surface_dice_2mm, "hd95_mm": r.hd95_mm, "clicks_to_0.9": r.clicks_to(0.9),
                "latency_first_s": lat[0], "latency_median_s": float(np.median(lat[1:])),
            })
        print(f"\n== {title} ==")
        for g, rows in groups.items():
            print(format_table(rows, summarise(rows)))
            print(f"mean Dice@5 over {g}s: {np.mean([r['dice_5'] for r in rows]):.3f}\n")


def big_phantom():
    from medseg.phantom import default_phantom_affine, make_phantom
    from medseg.volume import Volume

    small = (100, 256, 256)
    sp = (1.25, 0.7, 0.7)
    big = (300, 512, 512)
    img, seg = make_phantom(shape=small, affine=default_phantom_affine(small, (3.75, 1.4, 1.4)), seed=3)
    a = np.repeat(np.repeat(np.repeat(img.array, 3, 0), 2, 1), 2, 2)
    rng = np.random.default_rng(0)
    a = (a + rng.normal(0, 8, size=a.shape[-1]).astype(np.int16)[None, None, :]).astype(np.int16)
    l = np.repeat(np.repeat(np.repeat(seg.array, 3, 0), 2, 1), 2, 2)
    vol = Volume(a, default_phantom_affine(big, sp), {"Modality": "CT"})
    return vol, l, seg.labels


def latency(engine) -> None:
    from medseg.interactive import Session
    from medseg.interactive.robot import run_robot

    vol, lab, table = big_phantom()
    print(f"\n== latency on {vol.shape} (spacing {tuple(round(s, 2) for s in vol.spacing)} mm) ==")
    s = Session(engine)
    t0 = time.perf_counter()
    s.set_image(vol)
    print(f"set_image {time.perf_counter() - t0:.3f} s")
    firsts, later = [], []
    for l in table:
        target = lab == l.index
        r = run_robot(s, target, spacing=vol.spacing, n_clicks=5, name=l.name, metrics_at=99)
        firsts.append(r.latency_s[0])
        later += r.latency_s[1:]
        print(f"{l.name:12s} Dice@1/3/5 {r.dice_at(1):.3f} {r.dice_at(3):.3f} {r.dice_at(5):.3f}  "
              f"first {r.latency_s[0] * 1000:.0f} ms  later median {np.median(r.latency_s[1:]) * 1000:.0f} ms")
    print(f"first click: median {np.median(firsts) * 1000:.0f} ms, max {np.max(firsts) * 1000:.0f} ms; "
          f"later clicks: median {np.median(later) * 1000:.0f} ms, p90 {np.percentile(later, 90) * 1000:.0f} ms")


def memory(engine, n_clicks: int = 500) -> None:
    from medseg.interactive import Session

    vol, lab, table = big_phantom()
    rng = np.random.default_rng(1)
    s = Session(engine)
    s.set_image(vol)
    gc.collect()
    r0 = rss_mb()
    organs = [l.index for l in table]
    inside = {i: np.argwhere(lab[::4, ::4, ::4] == i) * 4 for i in organs}
    r10 = None
    t0 = time.perf_counter()
    for n in range(n_clicks):
        organ = organs[(n // 10) % len(organs)]
        if n % 10 == 0 and n:
            if n % 100 == 0 and s.mask.any():
                s.accept()  # a few locked objects: later objects get them as negatives
            else:
                s.reset()
        pts = inside[organ]
        p = pts[rng.integers(len(pts))]
        positive = n % 10 in (0, 1, 2, 4, 6)
        if not positive:
            p = np.clip(p + rng.integers(-30, 30, 3), 0, np.array(vol.shape) - 1)
        try:
            s.add_point(tuple(int(v) for v in p), positive=positive or n % 10 == 0)
        except Exception as exc:  # noqa: BLE001 - report and continue
            print("click failed:", exc)
        if n % 5 == 4:
            s.undo() if n % 20 == 19 else None
        if n == 9:
            gc.collect()
            r10 = rss_mb()
    gc.collect()
    r_end = rss_mb()
    print(f"\n== memory: {n_clicks} clicks in {time.perf_counter() - t0:.0f} s ==")
    print(f"RSS after set_image {r0:.0f} MB, after 10 clicks {r10:.0f} MB, after {n_clicks} {r_end:.0f} MB; "
          f"growth from click 10: {r_end - r10:+.1f} MB, from set_image: {r_end - r0:+.1f} MB; "
          f"peak (ru_maxrss) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["accuracy", "heldout", "latency", "memory", "all"])
    ap.add_argument("--engine", default=None)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass
    if args.part in ("accuracy", "all"):
        accuracy(args.engine, not args.no_baseline)
    if args.part in ("heldout", "all"):
        held_out(args.engine)
    if args.part in ("latency", "all"):
        latency(args.engine)
    if args.part in ("memory", "all"):
        memory(args.engine)


if __name__ == "__main__":
    main()
