"""Per-label clean-up of a label map: largest component, fill holes, minimum size."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import ndimage

from medseg.labels import LabelTable
from medseg.models.config import PostprocessingConfig

__all__ = ["postprocess_label_map"]

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as MONAI's KeepLargestConnectedComponent


def postprocess_label_map(
    label_map: np.ndarray,
    rules: Mapping[str, PostprocessingConfig],
    labels: LabelTable,
    *,
    voxel_volume_ml: float,
) -> np.ndarray:
    """Apply per-label rules in place-safe fashion and return a new label map.

    Parameters
    ----------
    label_map : (Z, Y, X) unsigned int ndarray
    rules : mapping of label name → PostprocessingConfig
    labels : LabelTable
    voxel_volume_ml : float
        For ``min_size_ml``.

    Notes
    -----
    Removed voxels become background (0). Holes are filled only where the map is background,
    so a structure inside another (a tumour inside the liver) is kept.
    """
    out = np.array(label_map, copy=True)
    for name, rule in rules.items():
        index = labels.by_name(name).index
        if not (rule.largest_component or rule.fill_holes or rule.min_size_ml > 0):
            continue
        objs = ndimage.find_objects((out == index).view(np.uint8))  # a bool mask viewed as 0/1, no copy
        if not objs or objs[0] is None:
            continue
        box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in objs[0])
        sub = out[box]
        mask = sub == index
        if rule.largest_component or rule.min_size_ml > 0:
            comp, n = _components(mask)
            if n > 1 or rule.min_size_ml > 0:
                sizes = _sizes(comp, n)
                sizes[0] = 0
                keep = np.zeros(n + 1, dtype=bool)
                if rule.largest_component:
                    keep[int(np.argmax(sizes))] = True
                else:
                    keep[1:] = True
                if rule.min_size_ml > 0:
                    keep &= sizes * voxel_volume_ml >= rule.min_size_ml
                remove = ~keep
                remove[0] = False  # background of the mask
                drop = remove[comp]
                del comp
                sub[drop] = 0
                mask[drop] = False
                del drop
        if rule.fill_holes:
            filled = ndimage.binary_fill_holes(mask)
            sub[filled & (sub == 0)] = index
        out[box] = sub
    return out


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of ``mask``, numbered in uint16 when they fit (half of int32's memory)."""
    comp = np.empty(mask.shape, dtype=np.uint16)
    try:
        n = ndimage.label(mask, structure=_FULL, output=comp)
    except RuntimeError:  # more than 65535 components
        del comp
        comp, n = ndimage.label(mask, structure=_FULL)
    return comp, int(n)


def _sizes(comp: np.ndarray, n: int, *, chunk: int = 2**22) -> np.ndarray:
    """Voxels per component (index 0: background); chunked, as bincount casts to int64."""
    flat = comp.reshape(-1)
    sizes = np.zeros(n + 1, dtype=np.int64)
    for a in range(0, flat.size, chunk):
        sizes += np.bincount(flat[a:a + chunk], minlength=n + 1)
    return sizes
