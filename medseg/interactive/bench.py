"""Robot-user benchmark over folders of images and labels (``medseg clickbench``).

Each (image, label map, label index) is one target. For each target a fresh object is
prompted by :func:`medseg.interactive.robot.run_robot`; the figures are Dice after 1, 3 and 5
clicks, surface Dice at 2 mm and HD95 after 5 clicks, clicks needed to reach Dice 0.9 (up to
``max_clicks``), and the latency of every click.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from medseg.core.errors import InputError
from medseg.interactive.engine import Engine
from medseg.core.progress import check_cancel, report

log = logging.getLogger(__name__)

__all__ = ["Case", "find_cases", "run_benchmark", "summarise", "format_table", "max_drop"]


@dataclass
class Case:
    """One target: an image file, its label file and the label index (with a name)."""

    image: Path
    labels: Path
    index: int
    name: str


def _names_for(label_path: Path) -> dict[int, str]:
    from medseg.io import sidecar_path

    for side in (sidecar_path(label_path), label_path.parent / "labels.json"):
        if side.exists():
            data = json.loads(side.read_text())
            if isinstance(data, dict) and "labels" in data:
                return {int(d["index"]): str(d["name"]) for d in data["labels"]}
            if isinstance(data, dict):
                return {int(k): str(v) for k, v in data.items()}
    return {}


def _stem(p: Path) -> str:
    name = p.name
    for suf in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return p.stem


def find_cases(images: str | Path, labels: str | Path, *, targets: Optional[Sequence[str]] = None,
               min_voxels: int = 20) -> list[Case]:
    """Pair image and label files and list every label present as one target.

    Parameters
    ----------
    images, labels : path
        Two files, or two folders with files of the same name (``case1.nii.gz`` in both), or the
        same folder with ``*_image.*`` / ``*_label.*`` pairs.
    targets : list of str, optional
        Keep only these label names or indices.
    min_voxels : int
        Skip labels smaller than this (voxels).
    """
    from medseg.io import read_volume

    images, labels = Path(images), Path(labels)
    if not images.exists() or not labels.exists():
        raise InputError(f"clickbench: {images if not images.exists() else labels} does not exist; "
                         f"give an image file/folder and a label file/folder")
    pairs: list[tuple[Path, Path]] = []
    if images.is_file() and labels.is_file():
        pairs = [(images, labels)]
    else:
        imgs = sorted(p for p in images.iterdir() if p.is_file() and not p.name.endswith(".json"))
        for im in imgs:
            cand = [labels / im.name]
            if "_image" in im.name:
                cand.append(labels / im.name.replace("_image", "_label"))
            lab = next((c for c in cand if c.exists() and c != im), None)
            if lab is not None:
                pairs.append((im, lab))
    if not pairs:
        raise InputError(f"clickbench: no image/label pairs found in {images} and {labels}; label files "
                         f"must share the image's name (or use *_image.* / *_label.*)")
    wanted = {str(t) for t in targets} if targets else None
    cases = []
    for im, lab in pairs:
        arr = read_volume(lab).array
        counts = np.bincount(arr.astype(np.int64).ravel())
        names = _names_for(lab)
        for idx in np.nonzero(counts)[0]:
            if idx == 0 or counts[idx] < min_voxels:
                continue
            name = names.get(int(idx), f"label_{int(idx)}")
            if wanted is not None and name not in wanted and str(int(idx)) not in wanted:
                continue
            cases.append(Case(im, lab, int(idx), f"{_stem(im)}:{name}"))
    return cases


def run_benchmark(cases: Iterable[Case], *, engine: Union[Engine, str, None] = None, max_clicks: int = 10,
                  progress=None, cancel=None, first: str = "click") -> list[dict]:
    """Run the robot on every case; one dict of figures per target.

    ``first="box"``: the box robot (its first interaction is a 2D box, see
    :func:`medseg.interactive.robot.box_prompt`).
    """
    from medseg.interactive import Session
    from medseg.interactive.robot import run_robot
    from medseg.io import read_volume

    cases = list(cases)
    rows: list[dict] = []
    cache: dict = {}
    session = Session(engine)
    for n, case in enumerate(cases):
        check_cancel(cancel, "clickbench")
        if cache.get("key") != (case.image, case.labels):
            image = read_volume(case.image)
            lab = read_volume(case.labels)
            image.require_same_grid(lab, what=f"labels {case.labels.name}")
            cache = {"key": (case.image, case.labels), "image": image, "labels": lab.array}
            session.set_image(image)
        image = cache["image"]
        target = cache["labels"] == case.index
        res = run_robot(session, target, spacing=image.spacing, n_clicks=max_clicks, name=case.name, first=first)
        lat = res.latency_s
        rows.append({
            "target": case.name, "image": str(case.image), "index": case.index,
            "voxels": int(target.sum()),
            "dice_1": res.dice_at(1), "dice_3": res.dice_at(3), "dice_5": res.dice_at(5),
            "surface_dice_2mm": res.surface_dice_2mm, "hd95_mm": res.hd95_mm,
            "clicks_to_0.9": res.clicks_to(0.9),
            "latency_first_s": lat[0] if lat else math.nan,
            "latency_median_s": float(np.median(lat[1:])) if len(lat) > 1 else math.nan,
            "max_drop": max_drop(res.dice),
            "dice": res.dice, "clicks": [[list(c), p] for c, p in res.clicks],
        })
        report(progress, n + 1, len(cases), case.name)
        log.info("%s dice@5 %.3f", case.name, res.dice_at(5))
    return rows


def max_drop(dice: Sequence[float]) -> float:
    """Largest fall of Dice from one interaction to the next (0 when it never falls)."""
    return float(max([0.0] + [a - b for a, b in zip(dice, dice[1:])]))


def summarise(rows: Sequence[dict]) -> dict:
    """Means over targets (clicks to 0.9: mean over targets that reached it, and how many did)."""
    if not rows:
        return {}
    out: dict = {"targets": len(rows)}
    for k in ("dice_1", "dice_3", "dice_5", "surface_dice_2mm", "hd95_mm", "latency_first_s", "latency_median_s"):
        vals = [r[k] for r in rows if r[k] is not None and np.isfinite(r[k])]
        out[k] = float(np.mean(vals)) if vals else math.nan
    reached = [r["clicks_to_0.9"] for r in rows if r["clicks_to_0.9"] is not None]
    out["reached_0.9"] = len(reached)
    out["clicks_to_0.9_mean"] = float(np.mean(reached)) if reached else math.nan
    return out


def format_table(rows: Sequence[dict], summary: Optional[dict] = None) -> str:
    """Plain-text table, one target per line."""
    head = f"{'target':34s} {'Dice@1':>7s} {'Dice@3':>7s} {'Dice@5':>7s} {'NSD2mm':>7s} {'HD95mm':>7s} {'to0.9':>6s} {'first_s':>8s} {'med_s':>7s}"
    lines = [head]

    def f(v, w=7, p=3):
        return f"{v:{w}.{p}f}" if v is not None and np.isfinite(v) else f"{'-':>{w}s}"

    for r in rows:
        c = r["clicks_to_0.9"]
        lines.append(f"{r['target'][:34]:34s} {f(r['dice_1'])} {f(r['dice_3'])} {f(r['dice_5'])} "
                     f"{f(r['surface_dice_2mm'])} {f(r['hd95_mm'], 7, 1)} {str(c) if c else '>max':>6s} "
                     f"{f(r['latency_first_s'], 8)} {f(r['latency_median_s'])}")
    if summary:
        lines.append(f"{'MEAN (' + str(summary['targets']) + ' targets)':34s} {f(summary['dice_1'])} "
                     f"{f(summary['dice_3'])} {f(summary['dice_5'])} {f(summary['surface_dice_2mm'])} "
                     f"{f(summary['hd95_mm'], 7, 1)} {summary['reached_0.9']:>6d} "
                     f"{f(summary['latency_first_s'], 8)} {f(summary['latency_median_s'])}")
    return "\n".join(lines)
