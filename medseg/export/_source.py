"""The source DICOM series a DICOM SEG or RTSTRUCT refers to, checked against the label grid.

DICOM objects that annotate images must reference the exact source instances (Study, Series and
SOP Instance UIDs, Frame of Reference) and lie on their planes. This module loads the source
headers in array z order and verifies, slice by slice, that the segmentation grid is the source
grid: a label map that was resampled or read with another convention is refused rather than
written onto the wrong voxels.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from medseg.errors import DicomError, GeometryError, InputError
from medseg.segmentation import Segmentation
from medseg.volume import Volume

__all__ = ["SourceSeries", "load_source", "content_uid"]

log = logging.getLogger(__name__)

SourceLike = Union[Volume, str, Path, Sequence[Union[str, Path]]]


@dataclass(frozen=True)
class SourceSeries:
    """Headers of a source image series in array z order.

    Attributes
    ----------
    datasets : list of pydicom.Dataset
        One per slice (``datasets[k]`` is array slice ``k``), read without pixel data.
    affine : (4, 4) ndarray
        Voxel ``(k, j, i)`` → LPS mm of the series, recomputed from the headers.
    shape : (3,) ints
        ``(Z, Y, X)``.
    """

    datasets: list
    affine: np.ndarray
    shape: tuple[int, int, int]

    @property
    def first(self):
        return self.datasets[0]

    @property
    def study_uid(self) -> str:
        return str(self.first.StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.first.SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.FrameOfReferenceUID)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


def _read_headers(files: Sequence[str | Path]):
    import pydicom

    out = []
    for f in files:
        try:
            out.append(pydicom.dcmread(str(f), stop_before_pixels=True))
        except Exception as exc:  # pydicom raises many types for broken files
            raise DicomError(f, f"cannot read the source DICOM header ({exc})",
                             "pass the original, unmodified source series") from exc
    _repair_uids(out, files)
    return out


def _repair_uids(datasets: list, files: Sequence) -> None:
    """Fill UIDs that de-identification emptied, in the in-memory headers only.

    SOP Class/Instance UIDs come from the file meta (which de-identifiers often keep); empty
    Study/Series UIDs get deterministic ``2.25`` UIDs derived from the SOP Instance UIDs, so
    every export of the same series references the same study and series. Source files are
    never touched.
    """
    repaired = set()
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPClassUID", "") or "") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
            repaired.add("SOPClassUID")
        if not str(ds.get("SOPInstanceUID", "") or "") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            repaired.add("SOPInstanceUID")
        for key in ("SOPClassUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if not str(ds.get(key, "") or ""):
                raise DicomError(files[0], f"source slice has no {key}",
                                 "DICOM SEG/RTSTRUCT must reference it; use the original (not de-identified) series")
    sops = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {str(ds.get(key, "") or "") for ds in datasets}
        if values == {""}:
            uid = content_uid(key, sops)
            for ds in datasets:
                setattr(ds, key, uid)
            repaired.add(key)
    if repaired:
        log.warning("source series lacks %s (de-identified?); used file-meta / derived UIDs in the references",
                    ", ".join(sorted(repaired)))


def load_source(source: SourceLike, segmentation: Segmentation, *, atol: float = 0.01) -> SourceSeries:
    """Load and check the source series of ``segmentation``.

    Parameters
    ----------
    source : Volume, path or list of paths
        A Volume read from DICOM (its ``meta["files"]`` lists the slice files in array z
        order), a DICOM folder (read with :func:`medseg.io.read_volume`), or the slice files
        in array z order.
    segmentation : Segmentation
        Must lie on the source grid.
    atol : float
        Tolerance in mm (positions) and in direction cosines.

    Raises
    ------
    InputError
        ``source`` carries no DICOM file list (e.g. a NIfTI image).
    GeometryError
        The label grid differs from the source series' grid.
    DicomError
        A source header is unreadable or lacks the geometry attributes.
    """
    if isinstance(source, Volume):
        files = source.meta.get("files")
        if not files:
            raise InputError(
                "source volume has no meta['files'] (it was not read from DICOM); DICOM SEG and "
                "RTSTRUCT need the source DICOM series: pass the DICOM folder or a Volume from read_volume"
            )
    elif isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir() or p.suffix.lower() in (".dcm", ".ima", ""):
            from medseg.io import read_volume

            vol = read_volume(p, series_uid=segmentation.label_map.meta.get("SeriesInstanceUID"))
            files = vol.meta.get("files")
            if not files:
                raise InputError(f"{p}: the DICOM reader returned no file list; cannot reference the source")
        else:
            raise InputError(f"source {p} is not a DICOM folder or file; DICOM SEG/RTSTRUCT need DICOM sources")
    else:
        files = [str(f) if f is not None else None for f in source]
        if not files:
            raise InputError("source file list is empty; pass the source series' slice files in z order")
    missing = [k for k, f in enumerate(files) if f is None]
    if missing:
        raise GeometryError(
            f"slices {missing[:10]} of the source volume were interpolated (missing or irregular slices), "
            f"so no source instance exists for them; DICOM SEG/RTSTRUCT need one source image per slice: "
            f"export NIfTI instead, or read the series with strict=True to find the gap"
        )
    if len(set(files)) != len(files):
        raise InputError("the source is a multi-frame image; DICOM SEG/RTSTRUCT export supports "
                         "single-frame series (one file per slice) only")
    datasets = _read_headers(files)
    affine = _affine_from_headers(datasets, files)
    shape = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    seg_shape = segmentation.label_map.shape
    if seg_shape != shape or not np.allclose(affine, segmentation.affine, atol=atol):
        raise GeometryError(
            f"label map grid {seg_shape} origin {np.round(segmentation.label_map.origin, 3).tolist()} "
            f"spacing {np.round(segmentation.label_map.spacing, 4).tolist()} does not match the source "
            f"series grid {shape} origin {np.round(affine[:3, 3], 3).tolist()} spacing "
            f"{np.round(np.linalg.norm(affine[:3, :3], axis=0), 4).tolist()}; segment the source series "
            f"itself (or resample the labels onto it) before exporting DICOM"
        )
    uids = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(uids) != 1:
        raise DicomError(files[0], f"source files belong to {len(uids)} series", "pass one series")
    return SourceSeries(datasets, affine, shape)


def _affine_from_headers(datasets: list, files: Sequence) -> np.ndarray:
    """Voxel (k, j, i) → LPS affine from ImagePosition/Orientation/PixelSpacing, checking every slice."""
    first = datasets[0]
    try:
        iop = np.asarray(first.ImageOrientationPatient, dtype=float)
        ps = np.asarray(first.PixelSpacing, dtype=float)  # (row spacing = y, column spacing = x)
        ipp = np.asarray([ds.ImagePositionPatient for ds in datasets], dtype=float)
    except AttributeError as exc:
        raise DicomError(files[0], f"source slice lacks geometry ({exc})",
                         "DICOM SEG/RTSTRUCT need ImagePositionPatient, ImageOrientationPatient and PixelSpacing") from exc
    row_dir, col_dir = iop[:3], iop[3:]  # row_dir: direction of increasing column index i
    affine = np.eye(4)
    affine[:3, 2] = row_dir * ps[1]
    affine[:3, 1] = col_dir * ps[0]
    affine[:3, 3] = ipp[0]
    if len(datasets) > 1:
        step = ipp[1] - ipp[0]
    else:
        normal = np.cross(row_dir, col_dir)
        step = normal * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    affine[:3, 0] = step
    for k, (ds, pos) in enumerate(zip(datasets, ipp)):
        expected = affine[:3, 3] + k * step
        if not np.allclose(pos, expected, atol=0.05):
            raise GeometryError(
                f"{files[k]}: slice {k} lies at {np.round(pos, 3).tolist()} but a regular series needs "
                f"{np.round(expected, 3).tolist()}; the source has a missing or irregular slice"
            )
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), iop, atol=1e-4):
            raise GeometryError(f"{files[k]}: orientation differs from the first slice's")
    return affine


def content_uid(*parts: object) -> str:
    """A deterministic DICOM UID (``2.25.<hash>``) from the given parts.

    The same content exported twice gets the same UID (reruns and the Dask path write identical
    objects); different content gets a different UID.
    """
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode() + str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\x00")
    # a 128-bit number under the UUID-derived root 2.25 (PS3.5 B.2), at most 44 characters
    return "2.25." + str(int(h.hexdigest()[:32], 16))
