"""A robot user that clicks like the issue's protocol, and the metrics it reports.

Protocol (exactly):

1. the first click is positive, at the target's most interior voxel: the voxel with the largest
   Euclidean distance, in mm from the spacing, to the target's boundary;
2. every next click goes to the most interior voxel (same distance, computed inside that region
   alone) of the largest connected error region of the current mask: positive for a missed
   region (false negative), negative for a leak (false positive). "Largest" compares voxel
   counts (26-connectivity).

Distances use :func:`scipy.ndimage.distance_transform_edt` with ``sampling=spacing`` on a
crop around the region padded by one voxel, so the volume border counts as boundary.

The **box robot** (``first="box"``) replaces the first click by a 2D box: the bounding box of
the target on the axial slice (``k``) where its area is largest (ties: the first such slice),
padded by 1 voxel in ``j`` and ``i`` and clipped to the volume; clicks then follow as above.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from medseg.core.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["most_interior_voxel", "next_click", "box_prompt", "RobotResult", "run_robot"]

_STRUCT26 = np.ones((3, 3, 3), bool)


def most_interior_voxel(mask: np.ndarray, spacing: Sequence[float]) -> tuple[int, int, int]:
    """Voxel ``(k, j, i)`` of ``mask`` farthest (mm) from its boundary; ties → first in C order."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise InputError("most_interior_voxel: mask is empty; give a mask with at least one voxel")
    sl = ndi.find_objects(mask.astype(np.uint8))[0]
    sub = np.pad(mask[sl], 1)
    dist = ndi.distance_transform_edt(sub, sampling=spacing)
    k = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return tuple(int(c - 1 + s.start) for c, s in zip(k, sl))  # type: ignore[return-value]


def next_click(target: np.ndarray, prediction: Optional[np.ndarray], spacing: Sequence[float]
               ) -> Optional[tuple[tuple[int, int, int], bool]]:
    """The robot's next click ``(index, positive)``, or None when the mask is perfect."""
    target = np.asarray(target, bool)
    if prediction is None or not np.asarray(prediction).any():
        if not target.any():
            return None
        if prediction is None:
            return most_interior_voxel(target, spacing), True
    pred = np.asarray(prediction, bool)
    error = target ^ pred
    if not error.any():
        return None
    sl = ndi.find_objects(error.astype(np.uint8))[0]
    lab, n = ndi.label(error[sl], structure=_STRUCT26)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    best = int(np.argmax(sizes))
    region = np.zeros_like(error)
    region[sl] = lab == best
    idx = most_interior_voxel(region, spacing)
    return idx, bool(target[idx])


def box_prompt(target: np.ndarray, pad: int = 1) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The box robot's first prompt: corners ``(k, j, i)`` of the target's 2D box on its largest axial slice."""
    target = np.asarray(target, bool)
    if not target.any():
        raise InputError("box_prompt: target is empty; give a mask with at least one voxel")
    k = int(np.argmax(target.sum(axis=(1, 2))))
    j = np.nonzero(target[k].any(axis=1))[0]
    i = np.nonzero(target[k].any(axis=0))[0]
    _, h, w = target.shape
    return (k, max(0, int(j[0]) - pad), max(0, int(i[0]) - pad)), (k, min(h - 1, int(j[-1]) + pad),
                                                                     min(w - 1, int(i[-1]) + pad))


@dataclass
class RobotResult:
    """Per-click scores of one robot run on one target."""

    name: str
    dice: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    clicks: list[tuple[tuple[int, int, int], bool]] = field(default_factory=list)
    surface_dice_2mm: float = float("nan")
    hd95_mm: float = float("nan")

    def dice_at(self, n: int) -> float:
        """Dice after ``n`` clicks (the last value when the robot stopped earlier)."""
        if not self.dice:
            return float("nan")
        return self.dice[min(n, len(self.dice)) - 1]

    def clicks_to(self, threshold: float = 0.9) -> Optional[int]:
        """Number of clicks to reach ``threshold`` Dice, None when never reached."""
        for n, d in enumerate(self.dice, 1):
            if d >= threshold:
                return n
        return None


def run_robot(session, target: np.ndarray, *, spacing: Sequence[float], n_clicks: int = 5,
              name: str = "target", metrics_at: int = 5,
              cancel: Optional[Callable[[], bool]] = None, first: str = "click") -> RobotResult:
    """Click ``n_clicks`` times on a session whose image is set; score each mask.

    With ``first="box"`` the first of the ``n_clicks`` interactions is the box robot's 2D box
    (:func:`box_prompt`) instead of a click.

    Parameters
    ----------
    session : medseg.interactive.Session
        With ``set_image`` already called; the current object is reset first.
    target : (Z, Y, X) bool ndarray
        Reference mask on the session's grid.
    spacing : (3,) floats
        mm, ``(z, y, x)``.
    n_clicks : int
        Clicks to make (the robot stops early when the mask is perfect).
    metrics_at : int
        Surface Dice at 2 mm and HD95 are measured on the mask after this many clicks.
    """
    from medseg.analysis.metrics import dice, hausdorff95, surface_dice

    target = np.asarray(target, bool)
    session.reset()
    res = RobotResult(name)
    pred = None
    for n in range(1, n_clicks + 1):
        if cancel is not None and cancel():
            break
        if n == 1 and first == "box":
            a, b = box_prompt(target)
            t0 = time.perf_counter()
            session.add_box(a, b)
            pred = session.mask
            res.latency_s.append(time.perf_counter() - t0)
            res.clicks.append((a, True))
            res.dice.append(float(dice(pred, target)))
            continue
        click = next_click(target, pred, spacing)
        if click is None:  # perfect mask: the score stays, no click is needed
            res.dice.append(res.dice[-1] if res.dice else 1.0)
            if n == metrics_at and pred is not None:
                res.surface_dice_2mm = float(surface_dice(pred, target, spacing=spacing, tolerance_mm=2.0))
                res.hd95_mm = float(hausdorff95(pred, target, spacing=spacing))
            continue
        idx, positive = click
        t0 = time.perf_counter()
        session.add_point(idx, positive=positive)
        pred = session.mask
        res.latency_s.append(time.perf_counter() - t0)
        res.clicks.append((idx, positive))
        res.dice.append(float(dice(pred, target)))
        if n == metrics_at or (n == n_clicks and n < metrics_at):
            res.surface_dice_2mm = float(surface_dice(pred, target, spacing=spacing, tolerance_mm=2.0))
            res.hd95_mm = float(hausdorff95(pred, target, spacing=spacing))
    return res
