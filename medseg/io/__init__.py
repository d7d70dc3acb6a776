"""Reading and writing scans and segmentations.

Every reader returns a :class:`~medseg.volume.Volume` in medseg's one convention (array
``(Z, Y, X)``, affine voxel → LPS mm); every writer takes one. Formats:

========================  ============================  =========================
format                    read                          write
========================  ============================  =========================
DICOM series (folder)     :func:`read_volume`           DICOM SEG / RTSTRUCT (export)
NIfTI ``.nii[.gz]``       nibabel (sform, else qform)    image and label map
NRRD ``.nrrd``/``.nhdr``  SimpleITK                     image and label map
MetaImage ``.mha/.mhd``   SimpleITK                     image and label map
========================  ============================  =========================

Label maps are written in the smallest unsigned integer type that fits, with a JSON label
table beside them (:func:`sidecar_path`). All writes are atomic.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from medseg.errors import FileFormatError, InputError
from medseg.io.atomic import atomic_path, full_suffix
from medseg.labels import LabelTable
from medseg.progress import CancelCallback, ProgressCallback
from medseg.segmentation import Segmentation, smallest_label_dtype
from medseg.volume import Volume

__all__ = [
    "read_volume",
    "write_volume",
    "read_segmentation",
    "write_segmentation",
    "sidecar_path",
    "image_format",
    "IMAGE_SUFFIXES",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mha"}


def image_format(path: str | Path) -> str:
    """``'dicom'`` for a folder or .dcm file, else the format named by the suffix.

    Raises
    ------
    FileFormatError
        For an unknown suffix.
    """
    p = Path(path)
    if p.is_dir():
        return "dicom"
    suffix = full_suffix(p)
    if suffix in IMAGE_SUFFIXES:
        return IMAGE_SUFFIXES[suffix]
    if suffix in (".dcm", ".ima", "") and p.exists():
        return "dicom"
    raise FileFormatError(
        p, f"unknown image format {suffix!r}",
        f"use a DICOM folder or one of {sorted(IMAGE_SUFFIXES)}",
    )


def sidecar_path(path: str | Path) -> Path:
    """Label-table JSON beside a label map: ``seg.nii.gz`` → ``seg.labels.json``."""
    p = Path(path)
    suffix = full_suffix(p)
    return p.with_name(p.name[: len(p.name) - len(suffix)] + ".labels.json")


def read_volume(
    path: str | Path,
    *,
    series_uid: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Volume:
    """Read an image from a DICOM folder/file, NIfTI, NRRD or MetaImage file.

    Parameters
    ----------
    path : str or Path
        A file, or a folder of DICOM files (searched recursively).
    series_uid : str, optional
        SeriesInstanceUID to load from a DICOM folder holding several series; the default
        rule is documented in :func:`medseg.io.dicom.select_series`.
    progress, cancel : callables, optional
        See :mod:`medseg.progress`.

    Returns
    -------
    Volume
        ``meta`` holds provenance (``source``, ``format``, and for DICOM the UIDs,
        Modality and any geometry warnings).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    fmt = image_format(p)
    if fmt == "dicom":
        from medseg.io.dicom import read_dicom

        return read_dicom(p, series_uid=series_uid, progress=progress, cancel=cancel)
    if fmt == "nifti":
        from medseg.io.nifti import read_nifti

        return read_nifti(p)
    return _read_itk(p, fmt)


def _read_itk(path: Path, fmt: str) -> Volume:
    import SimpleITK as sitk

    from medseg.io.itk import volume_from_sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise FileFormatError(path, f"cannot read as {fmt.upper()} ({first})",
                              "check that the file (and its data file for .nhdr/.mhd) is complete") from exc
    if image.GetDimension() != 3:
        raise FileFormatError(path, f"expected a 3D image, found {image.GetDimension()}D",
                              "medseg works on 3D volumes; stack 2D slices into a series first")
    return volume_from_sitk(image, {"source": str(path), "format": fmt})


def write_volume(volume: Volume, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write an image to NIfTI, NRRD or MetaImage, chosen by suffix; atomically.

    Returns the path written.
    """
    p = Path(path)
    fmt = image_format(p) if full_suffix(p) in IMAGE_SUFFIXES else None
    if fmt is None:
        raise FileFormatError(p, f"cannot write format {full_suffix(p)!r}",
                              f"use one of {sorted(IMAGE_SUFFIXES)} (DICOM SEG/RTSTRUCT: medseg.export)")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p}: exists; pass overwrite=True or choose another path")
    _refuse_source_overwrite(volume, p)
    with atomic_path(p) as tmp:
        if fmt == "nifti":
            from medseg.io.nifti import write_nifti

            write_nifti(volume, tmp)
        else:
            import SimpleITK as sitk

            from medseg.io.itk import volume_to_sitk

            if fmt == "mha" and full_suffix(p) == ".mhd":
                raise FileFormatError(p, "cannot write a two-file .mhd atomically", "write .mha instead")
            sitk.WriteImage(volume_to_sitk(volume), str(tmp), useCompression=True)
    log.info("wrote %s", p)
    return p


def _refuse_source_overwrite(volume: Volume, path: Path) -> None:
    src = volume.meta.get("source")
    if src and Path(src).exists() and Path(src).resolve() == path.resolve():
        raise InputError(f"{path}: refusing to overwrite the source file of this volume; write elsewhere")


def write_segmentation(segmentation: Segmentation, path: str | Path) -> Path:
    """Write a label map (smallest unsigned int dtype) and its ``.labels.json`` sidecar."""
    seg = segmentation
    dt = smallest_label_dtype(max(seg.labels.max_index, int(seg.array.max(initial=0))))
    out = write_volume(seg.label_map.with_array(seg.array.astype(dt)), path)
    side = sidecar_path(path)
    with atomic_path(side) as tmp:
        seg.labels.write(tmp)
    return out


def read_segmentation(path: str | Path, *, labels: LabelTable | None = None) -> Segmentation:
    """Read a label map and its label table (sidecar, or ``labels``, or named by index)."""
    vol = read_volume(path)
    arr = vol.array
    if arr.ndim != 3:
        raise FileFormatError(path, f"a label map must be 3D, found shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise FileFormatError(path, "label map holds non-integer values", "is this an image rather than labels?")
        arr = arr.astype(np.int64)
    if labels is None:
        side = sidecar_path(path)
        if side.exists():
            labels = LabelTable.read(side)
        else:
            labels = LabelTable.from_names({int(v): f"label_{int(v)}" for v in np.unique(arr) if v != 0})
    return Segmentation(vol.with_array(arr), labels)
