"""NIfTI ⇄ :class:`~medseg.volume.Volume` through nibabel (conversion point 1).

NIfTI's affine maps the file's index order ``(i, j, k)`` to **RAS**. nibabel picks the
sform when its code is > 0, otherwise the qform (``img.affine``), which is the NIfTI
standard's rule. We transpose the data to array order ``(k, j, i)`` and convert:

``affine_lps = LPS_TO_RAS @ affine_ras @ REVERSE``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np

from medseg.errors import FileFormatError
from medseg.geometry import lps_to_ras, ras_to_lps, reverse_axes
from medseg.volume import Volume

__all__ = ["read_nifti", "write_nifti", "volume_from_nibabel", "volume_to_nibabel"]


def volume_from_nibabel(img: nib.Nifti1Image, meta: Mapping[str, Any] | None = None) -> Volume:
    """Convert a nibabel image (3D, or 4D with channels last) to a Volume."""
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        arr = data.transpose(2, 1, 0)
    elif data.ndim == 4:
        arr = data.transpose(3, 2, 1, 0)
    else:
        raise ValueError(f"expected a 3D or 4D NIfTI image, got shape {data.shape}")
    affine = ras_to_lps(reverse_axes(img.affine))
    return Volume(np.ascontiguousarray(arr), affine, dict(meta or {}))


def volume_to_nibabel(volume: Volume) -> nib.Nifti1Image:
    """Convert a Volume to a NIfTI-1 image with sform and qform set (code 1, scanner)."""
    arr = volume.array
    data = arr.transpose(2, 1, 0) if arr.ndim == 3 else arr.transpose(3, 2, 1, 0)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    affine_ras = reverse_axes(lps_to_ras(volume.affine))
    img = nib.Nifti1Image(data, affine_ras)
    img.set_sform(affine_ras, code=1)
    img.set_qform(affine_ras, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def read_nifti(path: str | Path) -> Volume:
    """Read a .nii or .nii.gz file.

    Raises
    ------
    FileFormatError
        Unreadable, truncated or with a broken header (zero/NaN affine, bad dimensions).
    """
    p = Path(path)
    try:
        img = nib.load(str(p))
        vol = volume_from_nibabel(img, {"source": str(p), "format": "nifti"})
    except FileNotFoundError:
        raise
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, TypeError, Exception) as exc:
        if isinstance(exc, FileFormatError):
            raise
        raise FileFormatError(
            p, f"cannot read as NIfTI ({type(exc).__name__}: {exc})",
            "check that the file is complete and its header valid (e.g. `fslhd` or nibabel)",
        ) from exc
    return vol


def write_nifti(volume: Volume, path: str | Path) -> None:
    """Write a Volume to ``path`` (.nii or .nii.gz). Not atomic: see :mod:`medseg.io`."""
    nib.save(volume_to_nibabel(volume), str(path))
