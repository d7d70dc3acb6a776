"""Undo gantry tilt: resample a sheared volume onto the orthogonal grid of its own slices."""

from __future__ import annotations

import numpy as np

from medseg.core.errors import GeometryError
from medseg.core.volume import Volume

__all__ = ["orthogonalize"]


def orthogonalize(volume: Volume, *, order: int = 1, cval: float | None = None) -> Volume:
    """Resample a gantry-tilted (sheared) volume onto an orthogonal grid.

    :func:`~medseg.io.dicom.read_dicom` keeps tilted CT slices untouched and returns a sheared
    affine. Formats built on ITK (NRRD, MHA) cannot store shear; this gives an equivalent
    orthogonal volume for them. The slice planes are unchanged: slice ``k`` of the result is
    slice ``k`` of the input shifted in-plane by the tilt offset (relative to the middle slice,
    which stays in place), interpolated with ``order`` (1 = linear; 0 for label maps).

    Parameters
    ----------
    volume : Volume
        ``(Z, Y, X)`` volume whose ``y`` and ``x`` axes are orthogonal (slices of a series).
    order : int
        Spline order of :func:`scipy.ndimage.shift` (0 nearest, 1 linear).
    cval : float, optional
        Value outside the acquired field of view; default the volume's minimum.

    Returns
    -------
    Volume
        Same shape and dtype; affine with ``k`` column along the slice normal. A volume that
        is already orthogonal is returned unchanged.

    Raises
    ------
    GeometryError
        If the in-plane axes are not orthogonal or the volume is 4D.
    """
    from scipy import ndimage

    if volume.array.ndim != 3:
        raise GeometryError(f"orthogonalize needs a (Z, Y, X) volume, got shape {volume.array.shape}")
    a = volume.affine
    col, row = a[:3, 1], a[:3, 2]
    sy, sx = float(np.linalg.norm(col)), float(np.linalg.norm(row))
    if abs(float(col @ row)) > 1e-6 * sy * sx:
        raise GeometryError("the volume's y and x axes are not orthogonal: it is not a stack of DICOM slices")
    normal = np.cross(row / sx, col / sy)
    step = a[:3, 0]
    h = float(step @ normal)
    inplane = step - h * normal
    if np.linalg.norm(inplane) <= 1e-6 * abs(h):
        return volume
    dj = float(inplane @ col) / sy**2  # in-plane shift per slice, in voxels along y
    di = float(inplane @ row) / sx**2  # and along x
    kc = (volume.shape[0] - 1) / 2.0
    fill = float(volume.array.min()) if cval is None else float(cval)
    out = np.empty_like(volume.array)
    for k in range(volume.shape[0]):
        # target (j, i) on slice k sits at source (j - (k - kc) dj, i - (k - kc) di);
        # ndimage.shift computes output[x] = input[x - shift]
        shifted = ndimage.shift(volume.array[k].astype(np.float64), ((k - kc) * dj, (k - kc) * di),
                                order=order, mode="constant", cval=fill)
        out[k] = np.rint(shifted) if out.dtype.kind in "iu" else shifted
    affine = a.copy()
    affine[:3, 0] = h * normal
    affine[:3, 3] = a[:3, 3] + kc * inplane
    meta = dict(volume.meta)
    meta["warnings"] = list(meta.get("warnings", [])) + [
        f"resampled from a sheared (gantry-tilted) grid onto an orthogonal one (order {order})"]
    return Volume(out, affine, meta)
