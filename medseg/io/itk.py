"""SimpleITK image ⇄ :class:`~medseg.core.volume.Volume` (conversion point 1 of the geometry convention).

ITK stores spacing, origin and direction in index order ``(i, j, k)`` (fastest axis first) and
in LPS. ``sitk.GetArrayFromImage`` already returns array order ``(k, j, i)``, so only the
affine's columns need reversing; the world frame is LPS on both sides.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from medseg.core.geometry import check_affine
from medseg.core.volume import Volume

__all__ = ["volume_from_sitk", "volume_to_sitk", "affine_from_sitk"]


def affine_from_sitk(image: sitk.Image) -> np.ndarray:
    """4x4 voxel ``(k, j, i)`` → LPS affine of a 3D SimpleITK image."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)  # columns: i, j, k
    sp = np.array(image.GetSpacing(), dtype=float)
    a = np.eye(4)
    a[:3, :3] = (d * sp[None, :])[:, ::-1]
    a[:3, 3] = image.GetOrigin()
    return check_affine(a)


def volume_from_sitk(image: sitk.Image, meta: Mapping[str, Any] | None = None) -> Volume:
    """Convert a 3D SimpleITK image (scalar or vector) to a Volume.

    Vector images become ``(C, Z, Y, X)`` arrays.
    """
    arr = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        arr = np.moveaxis(arr, -1, 0)
    return Volume(arr, affine_from_sitk(image), dict(meta or {}))


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """Convert a Volume to a 3D SimpleITK image with the same geometry.

    ``(C, Z, Y, X)`` arrays become vector images. An affine with shear (non-orthogonal axes)
    cannot be represented by ITK and raises ``GeometryError``.
    """
    from medseg.core.errors import GeometryError

    arr = volume.array
    if arr.ndim == 4:
        image = sitk.GetImageFromArray(np.moveaxis(arr, 0, -1), isVector=True)
    else:
        image = sitk.GetImageFromArray(arr)
    sp = np.array(volume.spacing)[::-1]
    d = volume.direction[:, ::-1]
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise GeometryError(
            "the affine has sheared (non-orthogonal) axes, which ITK formats (NRRD, MHA, DICOM) "
            "cannot store; resample the volume onto an orthogonal grid or write NIfTI"
        )
    image.SetSpacing(tuple(float(v) for v in sp))
    image.SetOrigin(tuple(float(v) for v in volume.origin))
    image.SetDirection(tuple(float(v) for v in d.ravel()))
    return image
