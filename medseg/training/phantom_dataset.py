"""Generated training sets: CT phantoms on varied grids, written as imagesTr/labelsTr NIfTI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from medseg.core.geometry import make_affine
from medseg.core.progress import CancelCallback, ProgressCallback, StepProgress

__all__ = ["random_phantom_grid", "write_phantom_dataset"]


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def random_phantom_grid(rng: np.random.Generator, *, vary: bool = True) -> tuple[tuple[int, int, int], np.ndarray]:
    """A random grid ``(shape (Z, Y, X), affine)`` covering the phantom's abdomen.

    Spacing z 2.5–5 mm, in-plane 2–3.2 mm; each axis flipped with probability 0.3; with
    probability 0.3 an oblique grid (rotation up to 15°). ``vary=False``: axial 4×3×3 mm.
    """
    extent = np.array([220.0, 280.0, 360.0])  # z, y, x mm
    if not vary:
        spacing = np.array([4.0, 3.0, 3.0])
        direction = None
    else:
        spacing = np.array([rng.uniform(2.5, 5.0), *([rng.uniform(2.0, 3.2)] * 2)])
        extent = extent * rng.uniform(0.9, 1.1, 3)
        direction = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])
        direction = direction * np.where(rng.random(3) < 0.3, -1.0, 1.0)[None, :]
        if rng.random() < 0.3:
            direction = _rotation(rng.normal(size=3), np.deg2rad(rng.uniform(-15, 15))) @ direction
    shape = tuple(int(round(e / s)) for e, s in zip(extent, spacing))
    d = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]) if direction is None else direction
    centre = np.array([0.0, 5.0, 5.0]) + (rng.uniform(-8, 8, 3) if vary else 0.0)
    origin = centre - d @ (spacing * (np.asarray(shape) - 1) / 2)
    return shape, make_affine(spacing, origin, d)  # type: ignore[return-value]


def write_phantom_dataset(
    folder: str | Path,
    n: int,
    seed: int = 0,
    *,
    vary_grid: bool = True,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Path:
    """Write ``n`` phantoms as ``imagesTr/phantom_XXXX.nii.gz`` + ``labelsTr/`` + ``dataset.json``.

    Parameters
    ----------
    folder : path
    n : int
        Number of cases; case ``c`` uses phantom seed ``seed + c`` and a grid drawn from
        ``seed + c`` (:func:`random_phantom_grid`).
    seed : int
    vary_grid : bool
        Vary spacing, flips and obliquity (robust models); False = one axial grid.
    """
    from medseg.io import write_segmentation, write_volume
    from medseg.samples.phantom import PHANTOM_LABELS, make_phantom

    root = Path(folder)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    steps = StepProgress(n, "writing phantoms", progress=progress, cancel=cancel)
    entries = []
    for c in range(n):
        s = seed + c
        rng = np.random.default_rng(10_000 + s)
        shape, affine = random_phantom_grid(rng, vary=vary_grid)
        image, seg = make_phantom(shape=shape, affine=affine, seed=s)
        name = f"phantom_{s:04d}.nii.gz"
        # generated data: a second run with the same seed rewrites the same phantoms
        write_volume(image, root / "imagesTr" / name, overwrite=True)
        write_segmentation(seg, root / "labelsTr" / name, overwrite=True)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        steps.step()
    labels = {"0": "background", **{str(l.index): l.name for l in PHANTOM_LABELS}}
    (root / "dataset.json").write_text(json.dumps({
        "name": "medseg phantoms", "description": f"{n} generated CT phantoms, seed {seed}",
        "modality": {"0": "CT"}, "labels": labels, "numTraining": n, "training": entries}, indent=1))
    return root
