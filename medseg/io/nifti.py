"""NIfTI ⇄ :class:`~medseg.core.volume.Volume` through nibabel (conversion point 1).

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

from medseg.core.errors import FileFormatError, ResourceLimitError
from medseg.core.geometry import lps_to_ras, ras_to_lps, reverse_axes
from medseg.core.volume import Volume

__all__ = ["read_nifti", "write_nifti", "volume_from_nibabel", "affine_from_nibabel", "volume_to_nibabel", "nifti_header", "check_nifti_size"]


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
    return Volume(np.ascontiguousarray(arr), affine_from_nibabel(img), dict(meta or {}))


def affine_from_nibabel(img: nib.Nifti1Image) -> np.ndarray:
    """medseg's affine (voxel ``(k, j, i)`` → LPS mm) of a NIfTI image: nibabel's ``(i, j, k)`` →
    RAS affine with its axes reversed and RAS turned into LPS. Reads the header only."""
    return ras_to_lps(reverse_axes(img.affine))


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
        check_nifti_size(p, img)
        vol = volume_from_nibabel(img, {"source": str(p), "format": "nifti"})
    except (FileNotFoundError, MemoryError):
        raise
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, TypeError, Exception) as exc:
        if isinstance(exc, (FileFormatError, ResourceLimitError)):
            raise
        raise FileFormatError(
            p, f"cannot read as NIfTI ({type(exc).__name__}: {exc})",
            "check that the file is complete and its header valid (e.g. `fslhd` or nibabel)",
        ) from exc
    return vol


def nifti_header(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file reading its header only (no voxel is read or decompressed).

    Raises
    ------
    FileFormatError
        Unreadable header.
    """
    p = Path(path)
    try:
        return nib.load(str(p))
    except FileNotFoundError:
        raise
    except Exception as exc:  # nibabel raises many types on a corrupt header
        raise FileFormatError(p, f"cannot read as NIfTI ({type(exc).__name__}: {exc})",
                              "check that the file is complete and its header valid (e.g. `fslhd` or nibabel)") from exc


def nifti_voxel_bytes(img: nib.Nifti1Image) -> float:
    """Bytes per voxel once read: scaled data (scl_slope/scl_inter) comes back as float64."""
    hdr = img.header
    dtype = np.dtype(hdr.get_data_dtype())
    try:
        slope, inter = hdr.get_slope_inter()
    except Exception:
        slope, inter = None, None
    scaled = (slope is not None and slope not in (0, 1)) or (inter is not None and inter != 0)
    return float(max(dtype.itemsize, 8 if scaled else 0))


def check_nifti_size(path: str | Path, img: nib.Nifti1Image) -> None:
    """Refuse a header declaring more than the memory limit (:mod:`medseg.io.limits`), and a plain
    ``.nii`` shorter than its header says; before any voxel is read."""
    from medseg.io.limits import check_declared_size

    shape = tuple(int(d) for d in img.header.get_data_shape())
    if any(d < 0 for d in shape):
        raise FileFormatError(path, f"cannot read as NIfTI (negative dimension in dim[1..7]: {shape})",
                              "the header is corrupt")
    declared = check_declared_size(path, shape, nifti_voxel_bytes(img), fields="dim[1..7] x datatype/bitpix")
    p = Path(path)
    if p.suffix.lower() == ".nii" and p.is_file():
        on_disk = int(np.prod(shape, dtype=np.int64)) * np.dtype(img.header.get_data_dtype()).itemsize
        have = p.stat().st_size - int(img.header.get("vox_offset", 352))
        if on_disk > have:
            raise FileFormatError(p, f"truncated: the header declares {on_disk} bytes of voxels, the file holds "
                                     f"{max(have, 0)}", "the file was cut short; copy it again from the source")
    del declared


def write_nifti(volume: Volume, path: str | Path) -> None:
    """Write a Volume to ``path`` (.nii or .nii.gz). Not atomic: see :mod:`medseg.io`."""
    nib.save(volume_to_nibabel(volume), str(path))
