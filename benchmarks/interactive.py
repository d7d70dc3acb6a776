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
4. shared (``--part shared``): every labelled target of the shared real scans (33: 20 MR
   abdomen structures, the CTA aorta, the cervical MR spinal cord, 2 MR tumours, 5 CT lesion
   crops; and the thoracic CT's clinical RTSTRUCT: both lungs, spinal cord, GTV) with **both robots** (click-first, and box-first: the 2D box of the target on its
   largest axial slice padded by 1 voxel, then clicks), 5 interactions, for the engines in
   ``--engines`` (``medsam``, ``fused``, ``classical``, ``rw`` = skimage's random walker on the
   volumes under 1 M voxels, click robot only; ``medsam-f32`` / ``fused-f32``: LiteMedSAM in
   OpenVINO float32, to compare with the default bfloat16). Targets are split into a TUNING half and a
   HELD-OUT half by a rule fixed before any tuning: ``zlib.crc32(name) % 2`` (0: tuning, 1:
   held-out); the held-out figures are the ones that count.
5. medsam latency (``--part medsam-latency``) on a 512x512x300 CT-sized volume: first the
   engine alone (its one runtime in the process): the box slice's mask after a box, the whole
   3D object of a ~60-slice organ cold and after its box slice was in view for 10 s (the
   background thread's head start), a cached correction click; then the encoder per slice with
   OpenVINO (default precision and float32), ONNX Runtime and PyTorch eager in the same run,
   each timed in its own block of back-to-back slices; and (``--part medsam-memory``) the
   embedding cache bound and RSS over 500 interactions.
6. two CT windows (``--part medsam-windows``): on the thoracic CT, the left lung (lung window),
   the spinal cord (soft-tissue window), the right lung and the left lung again, each from the
   box robot's box: seconds and slices encoded per object.
7. a known limit (``--part tube``): a synthetic cord nested in its canal on a 512x512 CT; the
   robots and engines of ``--part shared``, reported apart.
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
    supports_undo = True
    background_preparation = False

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
    from medseg.samples.phantom import default_phantom_affine, make_phantom
    from medseg.core.volume import Volume

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


def split_half(name: str) -> str:
    """The tuning/held-out split of the shared targets, fixed before any tuning."""
    import zlib

    return "tuning" if zlib.crc32(name.encode()) % 2 == 0 else "held-out"


def shared_targets():
    """Yield ``(image volume, [(mask, name, group), ...])`` per shared real scan."""
    from medseg.io import read_volume

    mr = read_volume(REAL / "mr_abdomen/image.nii.gz")
    mrl = read_volume(REAL / "mr_abdomen/labels.nii.gz").array
    yield mr, [(mrl == i, f"mr:{n}", "organ") for n, i in {**ORGANS, **HELD_OUT}.items()]
    cta = read_volume(REAL / "cta_aorta/image.nii.gz")
    yield cta, [(read_volume(REAL / "cta_aorta/labels.nii.gz").array == 1, "cta:aorta", "organ")]
    sc = read_volume(REAL / "spinal_cord_mr/t2.nii.gz")
    yield sc, [(read_volume(REAL / "spinal_cord_mr/t2_seg-manual.nii.gz").array > 0, "spine_mr:spinal_cord", "organ")]
    for t in ("brain2", "breast1"):
        img = read_volume(REAL / f"tumors/{t}_mr_image.nrrd")
        yield img, [(read_volume(REAL / f"tumors/{t}_mr_label.nrrd").array == 1, f"tumor:{t}", "tumor")]
    for d in sorted((REAL / "deeplesion_windowed").glob("CT_Lesion_*")):
        img = read_volume(d / "image_uint8_windowed.nii.gz")
        yield img, [(read_volume(d / "label.nii.gz").array > 0, f"lesion:{d.name}", "tumor")]
    # The 3-slice SEG CT is too thin for accuracy figures (see the data README) and is left out.
    yield thoracic_ct_targets()


def thoracic_ct_targets():
    """``(image volume, targets)`` of the thoracic CT with its clinical RTSTRUCT: each ROI's own
    contours (a lung's contour holds the tumour inside it, as the clinicians drew it)."""
    from medseg.export.rtstruct import rasterize_rtstruct
    from medseg.io import read_volume

    ct = read_volume(REAL / "nsclc_lung1_001" / "dicom")
    rois = rasterize_rtstruct(REAL / "nsclc_lung1_001" / "dicom" / "2.dcm", ct, off_plane="skip")
    return ct, [(rois["GTV-1"], "ct_thorax:GTV-1", "tumor")] + [
        (rois[n], f"ct_thorax:{n.replace(' ', '_')}", "organ") for n in ("Lung L", "Lung R", "Spinal cord")]


def make_bench_engine(name: str, store=None):
    if name == "rw":
        return _SkimageRW()
    if name == "classical":
        from medseg.interactive import ClassicalEngine

        return ClassicalEngine()
    from medseg.interactive.fused import FusedEngine
    from medseg.interactive.medsam import MedSAMEngine

    from medseg.interactive.medsam import MedSAMConfig

    base, _, variant = name.partition("-")  # "medsam-f32": OpenVINO float32
    if variant == "x1":  # "medsam-x1": small slices zero-padded at native size, not enlarged to 256 px
        eng = MedSAMEngine(MedSAMConfig(max_enlarge=1.0), background=False, store=store)
    else:
        eng = MedSAMEngine(background=False, store=store, runtime="openvino" if variant else "auto",
                           precision=variant or "auto")
    return FusedEngine(eng) if base == "fused" else eng


def phantom_targets():
    """The synthetic CT phantom (100 x 256 x 256, 3.75 x 1.4 x 1.4 mm, seed 3): reported apart
    from the real cases (its organs are smooth ellipsoids; they do not count toward the figures)."""
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    shape = (100, 256, 256)
    img, seg = make_phantom(shape=shape, affine=default_phantom_affine(shape, (3.75, 1.4, 1.4)), seed=3)
    img = img.with_array(img.array, Modality="CT")
    yield img, [(seg.array == l.index, f"phantom:{l.name}", "tumor" if "tumor" in l.name else "organ")
                for l in seg.labels]


def tube_targets():
    """A synthetic thin structure nested in a slightly larger one (a known limit, reported apart):
    a cord of 5 px radius (45 HU) in a canal of 9 px (10 HU) inside a bony ring (700 HU), on
    100 slices of a 512 x 512 CT (3 x 0.98 x 0.98 mm), curving gently; noise 12 HU."""
    from medseg.core.volume import Volume
    from medseg.samples.phantom import default_phantom_affine

    n, hw = 100, 512
    rng = np.random.default_rng(0)
    k = np.arange(n)
    cj, ci = 300 + 15 * np.sin(k / n * np.pi), 256 + 5 * np.cos(k / n * 2 * np.pi)
    jj, ii = np.ogrid[:hw, :hw]
    body = (jj - 256) ** 2 / 200 ** 2 + (ii - 256) ** 2 / 240 ** 2 <= 1
    img = np.full((n, hw, hw), -1000.0, np.float32)
    cord = np.zeros((n, hw, hw), bool)
    for z in range(n):
        d2 = (jj - cj[z]) ** 2 + (ii - ci[z]) ** 2
        img[z][body] = 40.0
        img[z][(d2 <= 18 ** 2) & (d2 > 9 ** 2)] = 700.0
        img[z][d2 <= 9 ** 2] = 10.0
        cord[z] = d2 <= 5 ** 2
        img[z][cord[z]] = 45.0
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    vol = Volume(img, default_phantom_affine(img.shape, (3.0, 0.98, 0.98)), {"Modality": "CT"})
    yield vol, [(cord, "tube:cord_in_canal", "organ")]


def shared(engines: list[str], robots: list[str], n: int = 5, store=None, only=None, halves=None,
           targets_of=None) -> None:
    from medseg.interactive import Session
    from medseg.interactive.bench import max_drop
    from medseg.interactive.robot import run_robot

    built = {e: make_bench_engine(e, store) for e in engines}
    rows = []
    for vol, targets in (targets_of or shared_targets)():
        targets = [t for t in targets if (only is None or any(o in t[1] for o in only))
                   and (halves is None or split_half(t[1]) in halves)]
        if not targets:
            continue
        for ename, eng in built.items():
            if ename == "rw" and np.prod(vol.shape) > 1_000_000:
                continue  # the whole-volume baseline takes 20-75 s per click on these
            s = Session(eng)
            s.set_image(vol)
            for target, name, group in targets:
                for robot in robots:
                    if robot == "box" and "box" not in eng.prompt_types:
                        continue
                    r = run_robot(s, target, spacing=vol.spacing, n_clicks=n, name=name, first=robot, metrics_at=99)
                    row = {"target": name, "group": group, "half": split_half(name), "engine": ename,
                           "robot": robot, "dice": r.dice, "drop": max_drop(r.dice), "lat": r.latency_s}
                    rows.append(row)
                    print(f"{name:44s} {row['half']:8s} {ename:9s} {robot:5s} "
                          + " ".join(f"{d:.3f}" for d in r.dice) + f"  drop {row['drop']:.3f}  "
                          + "lat " + " ".join(f"{t:.1f}" for t in r.latency_s), flush=True)
    print_markdown(rows, list(built), robots)
    print("\n== summary: mean Dice after interaction 1 / 5, targets with a drop > 0.01 ==")
    for half in ("tuning", "held-out"):
        for group in ("organ", "tumor"):
            for ename in engines:
                for robot in robots:
                    sel = [r for r in rows if r["half"] == half and r["group"] == group and r["engine"] == ename
                           and r["robot"] == robot]
                    if not sel:
                        continue
                    d1 = np.mean([r["dice"][0] for r in sel])
                    d5 = np.mean([r["dice"][min(4, len(r["dice"]) - 1)] for r in sel])
                    drops = sum(r["drop"] > 0.01 for r in sel)
                    print(f"{half:8s} {group:6s} {ename:9s} {robot:5s} n={len(sel):2d}  Dice@1 {d1:.3f}  Dice@5 {d5:.3f}  "
                          f"drops>0.01: {drops}")


def print_markdown(rows: list[dict], engines: list[str], robots: list[str]) -> None:
    """The per-target table (README form): Dice after interaction 1 / after 5, ``*`` for a drop > 0.01."""
    cols = [(e, r) for e in engines for r in robots if not (e == "rw" and r == "box")]
    print("\n| target | half | " + " | ".join(f"{e} {r}" for e, r in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    names = list(dict.fromkeys(r["target"] for r in rows))
    for name in names:
        cells = []
        for e, r in cols:
            hit = [x for x in rows if x["target"] == name and x["engine"] == e and x["robot"] == r]
            if not hit:
                cells.append("-")
                continue
            d = hit[0]["dice"]
            cells.append(f"{d[0]:.2f} / {d[min(4, len(d) - 1)]:.2f}" + ("*" if hit[0]["drop"] > 0.01 else ""))
        half = next(x["half"] for x in rows if x["target"] == name)
        print(f"| {name} | {half} | " + " | ".join(cells) + " |")


def medsam_latency(store=None, organ_slices: int = 60, view_s: float = 10.0) -> None:
    """Box-slice mask, whole organ (cold, and after the box slice was in view), cached correction
    on a 512x512x300 CT with the engine's own runtime; then the encoder runtimes against eager."""
    import torch

    from medseg.interactive import Session
    from medseg.interactive.medsam import MedSAMEngine
    from medseg.interactive.medsam_runtime import EagerEncoder, make_encoder
    from medseg.interactive.robot import box_prompt, next_click

    vol, lab, table = big_phantom()
    eng = MedSAMEngine(background=False, cache_bytes=512 * 2**20)
    print(f"\n== medsam latency on {vol.shape}, {torch.get_num_threads()} torch threads, 2 encoder threads; "
          f"the engine's runtime: {eng.encoder.name} ==")
    # 1. the engine as a user has it (its one runtime in the process), measured first: with the
    #    other runtimes loaded before it, it once ran 15-20 % slower (within this VM's own
    #    variation, but kept apart)
    idx = min(table, key=lambda l: abs(int((lab == l.index).any(axis=(1, 2)).sum()) - organ_slices)).index
    target = lab == idx
    nsl = int(target.any(axis=(1, 2)).sum())
    first_slice = []
    eng.set_observer(lambda k, m: first_slice.append(time.perf_counter()) if not first_slice else None)
    s = Session(eng)
    s.set_image(vol)
    a, b = box_prompt(target)
    eng.embedding(a[0] - 30)  # warm-up (OpenVINO plans on the first call)
    t0 = time.perf_counter()
    eng.embedding(a[0])
    t_emb = time.perf_counter() - t0
    eng.decode_slice(a[0], np.array([[a[1], a[2], b[1], b[2]]], np.float32))
    t_box = time.perf_counter() - t0
    eng.cache.clear()
    first_slice.clear()
    n0, e0 = eng.encoded, eng.embeddings.encode_seconds
    t0 = time.perf_counter()
    s.add_box(a, b)
    t_all = time.perf_counter() - t0
    n_enc, t_enc = eng.encoded - n0, eng.embeddings.encode_seconds - e0
    print(f"box slice's mask after the box: {t_box:.2f} s (encoder {t_emb:.2f} s + decoder)")
    print(f"whole 3D object of the {nsl}-slice organ, cold (no slice embedded before the box): {t_all:.1f} s "
          f"({n_enc} slices encoded, {t_all / n_enc:.3f} s per slice, of which the encoder {t_enc / n_enc:.3f} s); "
          f"first slice (the box slice) shown after {first_slice[0] - t0:.1f} s")
    # as in the GUI: the background thread starts at the slice in view; the user looks at the
    # box slice for `view_s` seconds (finding the organ, dragging the box) before the box lands
    s.undo()
    eng.cache.clear()
    eng.prefetch(a[0])
    time.sleep(view_s)
    ready = len(eng.cache)
    t0 = time.perf_counter()
    s.add_box(a, b)
    t_warm = time.perf_counter() - t0
    eng.cancel()
    print(f"whole 3D object after the box slice was in view for {view_s:.0f} s ({ready} slices embedded "
          f"in the background by then): {t_warm:.1f} s")
    lat = []
    for _ in range(3):
        c = next_click(target, s.mask, vol.spacing)
        if c is None:
            break
        t0 = time.perf_counter()
        s.add_point(c[0], positive=c[1])
        lat.append(time.perf_counter() - t0)
    print(f"correction clicks with cached embeddings: " + ", ".join(f"{t:.2f}" for t in lat)
          + f" s (median {np.median(lat):.2f} s)")
    # 2. the encoder runtimes, each timed in its own block of back-to-back slices (as during
    #    propagation), two rounds: interleaving them call by call charged one runtime for
    #    another's thread pool still spinning or waking (OpenVINO: 0.29 s interleaved)
    runtimes = {"PyTorch eager": EagerEncoder(eng.model)}
    for label, rt, prec in (("ONNX Runtime", "onnx", "auto"), ("OpenVINO float32", "openvino", "f32"),
                            ("OpenVINO default", "openvino", "auto")):
        try:
            runtimes[label] = make_encoder(eng.model, rt, precision=prec)
        except Exception as exc:  # noqa: BLE001 - a runtime that is not installed is reported, not fatal
            print(f"{label}: not available ({exc})")
    times = {label: [] for label in runtimes}
    for _ in range(2):
        for label, enc in runtimes.items():
            enc(eng.embeddings.slice_input(90)[0])  # warm-up (OpenVINO and ONNX Runtime plan on the first call)
            for k in (100, 120, 150, 180, 200):
                x, _ = eng.embeddings.slice_input(k)
                t0 = time.perf_counter(); enc(x); times[label].append(time.perf_counter() - t0)
    base = np.median(times["PyTorch eager"])
    for label, ts in times.items():
        print(f"encoder per slice, {label:17s} ({runtimes[label].name:14s}): median {np.median(ts):.3f} s "
              f"(min {min(ts):.3f}, max {max(ts):.3f}; {base / np.median(ts):.1f}x eager; {len(ts)} slices)")


def medsam_windows() -> None:
    """Objects in two CT windows on the thoracic CT: left lung (lung window), spinal cord (soft
    tissue), right lung (lung window again), each from the box robot's box; time and slices
    encoded per object (the other window's embeddings are kept under the cache bound)."""
    from medseg.interactive import Session
    from medseg.interactive.medsam import MedSAMEngine
    from medseg.interactive.robot import box_prompt

    vol, targets = thoracic_ct_targets()
    by_name = {name: t for t, name, _ in targets}
    eng = MedSAMEngine(background=False)
    s = Session(eng)
    s.set_image(vol)
    eng.embedding(0)  # warm-up
    print(f"\n== objects in two CT windows, {vol.shape}, the engine's runtime {eng.encoder.name} ==")
    total = 0.0
    for name in ("ct_thorax:Lung_L", "ct_thorax:Spinal_cord", "ct_thorax:Lung_R", "ct_thorax:Lung_L"):
        a, b = box_prompt(by_name[name])
        n0 = eng.encoded
        t0 = time.perf_counter()
        s.add_box(a, b)
        dt = time.perf_counter() - t0
        total += dt
        print(f"{name:22s} window {eng.embeddings.ct_window}: {dt:5.1f} s, {eng.encoded - n0:3d} slices encoded, "
              f"{int(s.mask.any(axis=(1, 2)).sum()):3d} slices in the object")
        s.reset()
    print(f"all four objects: {total:.1f} s, {eng.encoded} slices encoded in all")


def medsam_memory(n: int = 500, store=None) -> None:
    """``n`` interactions on a 24-slice slab of the CT-sized phantom with a cache bound of 10 slices.

    The slab keeps the run short on 2 shared cores (every interaction propagates through the
    object); eviction happens throughout, since the objects span more slices than the bound.
    """
    from medseg.interactive import Session
    from medseg.interactive.medsam import MedSAMEngine
    from medseg.core.volume import Volume

    vol, lab, table = big_phantom()
    z0 = 138
    vol = Volume(np.ascontiguousarray(vol.array[z0:z0 + 24]), vol.affine, dict(vol.meta))
    lab = np.ascontiguousarray(lab[z0:z0 + 24])
    table = [l for l in table if (lab == l.index).sum() > 500]
    bound = 10 * 2 * 2**20  # 10 slices of float16 256x64x64
    eng = MedSAMEngine(background=False, cache_bytes=bound, store=store)
    s = Session(eng)
    s.set_image(vol)
    rng = np.random.default_rng(1)
    organs = [l.index for l in table]
    inside = {i: np.argwhere(lab[::4, ::4, ::4] == i) * 4 for i in organs}
    r10 = None
    gc.collect()
    t0 = time.perf_counter()
    worst = 0
    for i in range(n):
        organ = organs[(i // 10) % len(organs)]
        if i % 10 == 0:
            s.reset()
        p = inside[organ][rng.integers(len(inside[organ]))]
        s.add_point(tuple(int(v) for v in p), positive=i % 10 in (0, 1, 2, 4, 6) or not s.mask.any())
        if i % 5 == 4:
            s.undo()
        worst = max(worst, eng.cache.nbytes)
        if i == 9:
            gc.collect()
            r10 = rss_mb()
    gc.collect()
    print(f"\n== medsam memory: {n} interactions in {time.perf_counter() - t0:.0f} s ==")
    print(f"embedding cache bound {bound / 2**20:.0f} MiB, largest seen {worst / 2**20:.1f} MiB "
          f"(peak {eng.cache.peak_bytes / 2**20:.1f} MiB), {eng.encoded} slices encoded; RSS after 10 interactions "
          f"{r10:.0f} MB, after {n} {rss_mb():.0f} MB (growth {rss_mb() - r10:+.1f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["accuracy", "heldout", "latency", "memory", "all", "shared",
                                                      "phantom", "medsam-latency", "medsam-memory",
                                                      "medsam-windows", "tube"])
    ap.add_argument("--engines", default="medsam,fused,classical,rw")
    ap.add_argument("--robots", default="click,box")
    ap.add_argument("--store", default=None, help="keep LiteMedSAM embeddings on disk here (re-runs)")
    ap.add_argument("--only", nargs="*", default=None, help="targets whose name holds one of these")
    ap.add_argument("--halves", nargs="*", default=None, help="tuning and/or held-out")
    ap.add_argument("--interactions", type=int, default=5)
    ap.add_argument("--memory-n", type=int, default=500, help="interactions of --part medsam-memory")
    ap.add_argument("--organ-slices", type=int, default=60, help="--part medsam-latency: the organ's slice count")
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
    if args.part == "shared":
        shared(args.engines.split(","), args.robots.split(","), args.interactions, args.store, args.only, args.halves)
    if args.part == "phantom":  # the shared robots and engines on the synthetic phantom, reported apart
        shared(args.engines.split(","), args.robots.split(","), args.interactions, args.store, args.only,
               targets_of=phantom_targets)
    if args.part == "tube":  # a known limit: a thin structure nested in a slightly larger one
        shared(args.engines.split(","), args.robots.split(","), args.interactions, args.store, args.only,
               targets_of=tube_targets)
    if args.part == "medsam-latency":
        medsam_latency(organ_slices=args.organ_slices)
    if args.part == "medsam-memory":
        medsam_memory(args.memory_n, args.store)
    if args.part == "medsam-windows":
        medsam_windows()


if __name__ == "__main__":
    main()
