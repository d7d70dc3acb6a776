"""Label-map editing operations: smoothing, holes, islands, margins, logic, slice interpolation.

Pure functions on numpy arrays (numpy/scipy only), used by the napari plugin's "Correct
boundaries" widget and usable from scripts. Masks are boolean ``(Z, Y, X)`` arrays in array
order; ``spacing`` is the voxel size ``(z, y, x)`` in mm, so margins and smoothing are in
millimetres whatever the anisotropy. Inputs are never modified.

Operations on one label of a label map go through :func:`apply_mask`, which writes a new mask
for that label while leaving locked labels untouched. :func:`label_bbox` gives the region an
operation needs so large volumes are edited through a crop.
"""

from __future__ import annotations

from typing import Callable, Iterable, Literal, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from medseg.core.errors import InputError

__all__ = [
    "smooth",
    "fill_holes",
    "remove_small_islands",
    "keep_largest",
    "grow",
    "shrink",
    "margin",
    "logical",
    "interpolate_slices",
    "apply_mask",
    "label_bbox",
    "OPERATIONS",
]

Spacing = Sequence[float]


def _check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise InputError(f"{name} must be a (Z, Y, X) array, got shape {m.shape}")
    return m.astype(bool, copy=False)


def _check_spacing(spacing: Spacing) -> np.ndarray:
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (3,) or np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise InputError(f"spacing must be 3 positive numbers (z, y, x) in mm, got {spacing!r}")
    return sp


def smooth(mask: np.ndarray, *, spacing: Spacing, sigma_mm: float = 1.0) -> np.ndarray:
    """Smooth a mask's boundary: Gaussian of ``sigma_mm`` (per-axis in voxels), threshold 0.5.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray
    spacing : (3,) floats
        Voxel size ``(z, y, x)`` in mm.
    sigma_mm : float
        Standard deviation of the Gaussian in mm; 0 returns the mask unchanged.
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing)
    if sigma_mm < 0:
        raise InputError(f"sigma_mm must be >= 0 mm, got {sigma_mm}")
    if sigma_mm == 0 or not m.any():
        return m.copy()
    return ndi.gaussian_filter(m.astype(np.float32), sigma=sigma_mm / sp, mode="nearest") >= 0.5


def _fill(m: np.ndarray) -> np.ndarray:
    """Background components (face-connected) that touch no array border are holes.

    Same result as ``scipy.ndimage.binary_fill_holes`` but built on ``ndimage.label``, which
    releases the GIL (so a GUI stays responsive while it runs in a thread) and is faster.
    """
    lab, n = ndi.label(~m)
    if n == 0:
        return m.copy()
    border = np.zeros(n + 1, bool)
    for ax in range(m.ndim):
        for end in (0, -1):
            border[np.unique(np.take(lab, end, axis=ax))] = True
    border[0] = True
    return m | ~border[lab]


def fill_holes(mask: np.ndarray, *, per_slice: bool = False, axis: int = 0) -> np.ndarray:
    """Fill cavities enclosed by the mask, in 3D or slice by slice along ``axis``."""
    m = _check_mask(mask)
    if not per_slice:
        return _fill(m)
    out = np.moveaxis(m.copy(), axis, 0)
    for s in range(out.shape[0]):
        if out[s].any():
            out[s] = _fill(out[s])
    return np.moveaxis(out, 0, axis)


def _components(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """6-connected components and their sizes (index 0 = background, size 0)."""
    lab, n = ndi.label(m, structure=ndi.generate_binary_structure(3, 1))
    counts = np.zeros(n + 1, np.int64)
    if n:  # np.unique releases the GIL, np.bincount does not
        ids, c = np.unique(lab[lab > 0], return_counts=True)
        counts[ids] = c
    return lab, counts


def remove_small_islands(mask: np.ndarray, *, spacing: Spacing, min_volume_mm3: float) -> np.ndarray:
    """Drop 6-connected components smaller than ``min_volume_mm3`` (mm³)."""
    m = _check_mask(mask)
    voxel = float(np.prod(_check_spacing(spacing)))
    if min_volume_mm3 < 0:
        raise InputError(f"min_volume_mm3 must be >= 0, got {min_volume_mm3}")
    lab, counts = _components(m)
    keep = counts * voxel >= min_volume_mm3
    keep[0] = False
    return keep[lab]


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 6-connected component (empty stays empty)."""
    m = _check_mask(mask)
    if not m.any():
        return m.copy()
    lab, counts = _components(m)
    counts[0] = 0
    return lab == int(np.argmax(counts))


def _margin_args(mask: np.ndarray, margin_mm: float, spacing: Spacing, op: str,
                 other: str) -> tuple[np.ndarray, np.ndarray]:
    """The checked mask and spacing of a margin operation; ``margin_mm`` must not be negative."""
    m = _check_mask(mask)
    sp = _check_spacing(spacing)
    if margin_mm < 0:
        raise InputError(f"margin_mm must be >= 0 for {op}, got {margin_mm}; use {other}")
    return m, sp


def grow(mask: np.ndarray, margin_mm: float, *, spacing: Spacing) -> np.ndarray:
    """Add every voxel within ``margin_mm`` (Euclidean, in mm) of the mask."""
    m, sp = _margin_args(mask, margin_mm, spacing, "grow", "shrink")
    if margin_mm == 0 or not m.any():
        return m.copy()
    return ndi.distance_transform_edt(~m, sampling=sp) <= margin_mm + 1e-6


def shrink(mask: np.ndarray, margin_mm: float, *, spacing: Spacing) -> np.ndarray:
    """Remove every voxel within ``margin_mm`` (mm) of the background."""
    m, sp = _margin_args(mask, margin_mm, spacing, "shrink", "grow")
    if margin_mm == 0 or not m.any():
        return m.copy()
    padded = np.pad(m, 1, constant_values=False)  # outside the array is background
    dist = ndi.distance_transform_edt(padded, sampling=sp)[1:-1, 1:-1, 1:-1]
    return dist > margin_mm + 1e-6


def margin(mask: np.ndarray, margin_mm: float, *, spacing: Spacing) -> np.ndarray:
    """Grow (``margin_mm`` > 0) or shrink (< 0) by ``|margin_mm|`` mm."""
    if margin_mm >= 0:
        return grow(mask, margin_mm, spacing=spacing)
    return shrink(mask, -margin_mm, spacing=spacing)


LogicalOp = Literal["union", "intersect", "subtract", "xor"]


def logical(a: np.ndarray, b: np.ndarray, op: LogicalOp) -> np.ndarray:
    """Combine two masks: ``union`` (a|b), ``intersect`` (a&b), ``subtract`` (a&~b), ``xor``."""
    ma, mb = _check_mask(a, "a"), _check_mask(b, "b")
    if ma.shape != mb.shape:
        raise InputError(f"masks a {ma.shape} and b {mb.shape} must have the same shape")
    ops: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "union": np.logical_or, "intersect": np.logical_and,
        "subtract": lambda x, y: x & ~y, "xor": np.logical_xor,
    }
    if op not in ops:
        raise InputError(f"op must be one of {sorted(ops)}, got {op!r}")
    return ops[op](ma, mb)


def _signed_distance_2d(m: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Signed distance in mm (negative inside) of a 2D mask."""
    inside = ndi.distance_transform_edt(m, sampling=sp)
    outside = ndi.distance_transform_edt(~m, sampling=sp)
    return outside - inside


def interpolate_slices(mask: np.ndarray, *, spacing: Spacing, axis: int = 0) -> np.ndarray:
    """Fill the slices between annotated slices by shape-based interpolation.

    Between each pair of consecutive non-empty slices along ``axis``, every empty slice gets
    the zero level set of the linearly interpolated signed distance maps (in mm) of the two
    annotated slices. Annotated slices and slices outside the first/last annotated one are
    unchanged.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray
    spacing : (3,) floats
        Voxel size ``(z, y, x)`` in mm (in-slice spacing makes distances isotropic in mm).
    axis : int
        Array axis across which slices are interpolated (0 = axial for axial scans).
    """
    m = _check_mask(mask)
    sp = _check_spacing(spacing)
    if axis not in (0, 1, 2, -1, -2, -3):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    axis = axis % 3
    work = np.moveaxis(m, axis, 0)
    in_sp = np.delete(sp, axis)
    out = work.copy()
    filled = np.flatnonzero(work.reshape(work.shape[0], -1).any(axis=1))
    for a, b in zip(filled[:-1], filled[1:]):
        if b - a < 2:
            continue
        da, db = _signed_distance_2d(work[a], in_sp), _signed_distance_2d(work[b], in_sp)
        for s in range(a + 1, b):
            t = (s - a) / (b - a)
            out[s] = (1 - t) * da + t * db <= 0
    return np.moveaxis(out, 0, axis)


def apply_mask(
    label_map: np.ndarray,
    index: int,
    mask: np.ndarray,
    *,
    locked: Iterable[int] = (),
) -> np.ndarray:
    """New label map where label ``index`` becomes ``mask``, never overwriting locked labels.

    Voxels that were ``index`` and are outside ``mask`` become background (0); voxels of
    ``mask`` take ``index`` unless they hold a locked label (other unlocked labels are
    overwritten). ``index`` itself may not be locked.
    """
    lm = np.asarray(label_map)
    m = _check_mask(mask)
    if lm.shape != m.shape:
        raise InputError(f"mask {m.shape} must match label_map {lm.shape}")
    locked = {int(v) for v in locked}
    if index in locked:
        raise InputError(f"label {index} is locked; unlock it before editing")
    if not np.issubdtype(lm.dtype, np.integer):
        raise InputError(f"label_map must hold integers, got dtype {lm.dtype}")
    if not 1 <= int(index) <= np.iinfo(lm.dtype).max:
        raise InputError(f"index must be 1..{np.iinfo(lm.dtype).max} for a {lm.dtype} label map, got {index}")
    out = lm.copy()
    out[(lm == index) & ~m] = 0
    writable = m if not locked else m & ~np.isin(lm, list(locked))
    out[writable] = index
    return out


def bounding_slices(mask: np.ndarray) -> Optional[tuple[slice, ...]]:
    """Bounding box of a boolean mask of any dimension, as slices in array order, from its axis
    projections (cheap: no coordinate list). ``None`` when the mask is empty."""
    m = np.asarray(mask, bool)
    out = []
    for ax in range(m.ndim):
        nz = np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != ax)))
        if nz.size == 0:
            return None
        out.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)


def label_bbox(
    label_map: np.ndarray,
    indices: Iterable[int],
    *,
    margin_vox: Sequence[int] = (0, 0, 0),
) -> Optional[tuple[slice, slice, slice]]:
    """Bounding box (slices in array order) of the given labels, widened by ``margin_vox``.

    Returns ``None`` when none of the labels is present.
    """
    lm = np.asarray(label_map)
    box = bounding_slices(np.isin(lm, list(indices)))
    if box is None:
        return None
    return tuple(slice(max(0, b.start - int(m)), min(n, b.stop + int(m)))  # type: ignore[return-value]
                 for b, m, n in zip(box, margin_vox, lm.shape))


#: Single-mask operations by name: ``fn(mask, spacing=..., **params) -> mask``.
OPERATIONS: dict[str, Callable[..., np.ndarray]] = {
    "smooth": lambda m, spacing, sigma_mm=1.0: smooth(m, spacing=spacing, sigma_mm=sigma_mm),
    "fill holes": lambda m, spacing: fill_holes(m),
    "remove small islands": lambda m, spacing, min_volume_mm3=100.0: remove_small_islands(
        m, spacing=spacing, min_volume_mm3=min_volume_mm3),
    "keep largest": lambda m, spacing: keep_largest(m),
    "grow": lambda m, spacing, margin_mm=2.0: grow(m, margin_mm, spacing=spacing),
    "shrink": lambda m, spacing, margin_mm=2.0: shrink(m, margin_mm, spacing=spacing),
    "interpolate slices": lambda m, spacing, axis=0: interpolate_slices(m, spacing=spacing, axis=axis),
}
