"""Per-label clean-up of a label map: largest component, fill holes, minimum size."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import ndimage

from medseg.core.errors import InputError
from medseg.core.labels import LabelTable
from medseg.models.config import PostprocessingConfig

__all__ = ["postprocess_label_map"]

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as MONAI's KeepLargestConnectedComponent


def postprocess_label_map(
    label_map: np.ndarray,
    rules: Mapping[str, PostprocessingConfig],
    labels: LabelTable,
    *,
    voxel_volume_ml: float,
    in_place: bool = False,
) -> np.ndarray:
    """Apply per-label rules and return the cleaned label map (a new one unless ``in_place``).

    Parameters
    ----------
    label_map : (Z, Y, X) unsigned int ndarray
    rules : mapping of label name → PostprocessingConfig
    labels : LabelTable
    voxel_volume_ml : float
        For ``min_size_ml``.
    in_place : bool
        Clean ``label_map`` itself (no copy of the whole map).

    Notes
    -----
    Removed voxels become background (0). Holes are filled only where the map is background,
    so a structure inside another (a tumour inside the liver) is kept.

    Memory: the bounding boxes of all labels come from one pass over the map (a rule changes
    only its own label's voxels and background, so the other labels' boxes stay exact); every
    temporary spans one label's box only.
    """
    out = label_map if in_place else np.array(label_map, copy=True)
    todo = {labels.by_name(name).index: rule for name, rule in rules.items()
            if rule.largest_component or rule.fill_holes or rule.min_size_ml > 0}
    if not todo or out.size == 0:
        return out
    if out.dtype.kind not in "ui":
        raise InputError(f"a label map must hold integers, got {out.dtype}")
    objs = ndimage.find_objects(out, max_label=max(todo))
    for index, rule in todo.items():
        if index < 1 or objs[index - 1] is None:
            continue
        box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in objs[index - 1])
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
                _drop(remove, comp, sub, mask)
                del comp
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


def _drop(remove: np.ndarray, comp: np.ndarray, sub: np.ndarray, mask: np.ndarray, *, chunk: int = 2**21) -> None:
    """Set the voxels of the components flagged in ``remove`` to 0 in ``sub`` and False in ``mask``, a slab at a time."""
    step = max(1, chunk // max(1, comp[:1].size))
    for a in range(0, comp.shape[0], step):
        drop = remove[comp[a:a + step]]
        sub[a:a + step][drop] = 0
        mask[a:a + step][drop] = False


def _sizes(comp: np.ndarray, n: int, *, chunk: int = 2**18) -> np.ndarray:
    """Voxels per component (index 0: background); chunked, as bincount casts to int64 (8 bytes a voxel)."""
    flat = comp.reshape(-1)
    sizes = np.zeros(n + 1, dtype=np.int64)
    for a in range(0, flat.size, chunk):
        sizes += np.bincount(flat[a:a + chunk], minlength=n + 1)
    return sizes
