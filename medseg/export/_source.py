"""The source DICOM series a DICOM SEG or RTSTRUCT refers to, checked against the label grid.

DICOM objects that annotate images must reference the exact source instances (Study, Series and
SOP Instance UIDs, Frame of Reference) and lie on their planes. Everything here comes from the
reader's :class:`~medseg.io.dicom.DicomSource` record (``volume.dicom_source``): the files and
UIDs in array z order and each slice's ImagePositionPatient. No geometry is derived here: the
record checks, slice by slice, that the segmentation's grid is the one its slices lie on, and a
label map that was resampled or read with another convention is refused rather than written
onto the wrong voxels.

Given only a folder or a list of files, the record comes from the reader's header scan
(:func:`~medseg.io.dicom.read_dicom_source`, :func:`~medseg.io.dicom.dicom_source_from_files`);
no pixel is read.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from medseg.core.errors import DicomError, GeometryError, InputError
from medseg.io.dicom.source import DicomSource
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

__all__ = ["SourceSeries", "load_source", "content_uid"]

log = logging.getLogger(__name__)

SourceLike = Union[Volume, str, Path, Sequence[Union[str, Path]]]


@dataclass(frozen=True)
class SourceSeries:
    """The checked source of an export: the reader's record plus the UIDs to reference.

    Attributes
    ----------
    record : DicomSource
        Files, SOP instances and positions in array z order (no interpolated slice).
    study_uid, series_uid : str
        The record's UIDs; when de-identification emptied them, deterministic ``2.25`` UIDs
        derived from the SOP Instance UIDs, so that every export of one series references the
        same study and series.
    """

    record: DicomSource
    study_uid: str
    series_uid: str

    @property
    def frame_of_reference_uid(self) -> str:
        return self.record.frame_of_reference_uid

    @property
    def files(self) -> list[str]:
        """Slice files in array z order."""
        return [s.file for s in self.record.slices]  # type: ignore[union-attr]

    @property
    def sop_instance_uids(self) -> list[str]:
        return [s.sop_instance_uid for s in self.record.slices]  # type: ignore[union-attr]

    @property
    def sop_class_uids(self) -> list[str]:
        return [s.sop_class_uid for s in self.record.slices]  # type: ignore[union-attr]

    def first_header(self) -> Any:
        """The header (no pixels) of slice 0: patient, study and equipment attributes to copy."""
        return self.headers([0])[0]

    def headers(self, indices: Sequence[int] | None = None) -> list:
        """pydicom headers (no pixels) of the given slices (default all), with the UIDs to reference.

        Raises
        ------
        DicomError
            A file is unreadable, or now holds another SOP instance than when it was read.
        """
        import pydicom

        out = []
        for k in range(len(self.record.slices)) if indices is None else indices:
            f, uid = self.files[k], self.sop_instance_uids[k]
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=True)
            except Exception as exc:  # pydicom raises many types for broken files
                raise DicomError(f, f"cannot read the source DICOM header ({exc})",
                                 "pass the original, unmodified source series") from exc
            self._fill_uids(ds, k)
            if str(ds.get("SOPInstanceUID", "") or "") != uid:
                raise DicomError(f, f"the file now holds SOP instance {ds.get('SOPInstanceUID')!r}, not {uid} as when the "
                                    "series was read", "read the source series again before exporting")
            out.append(ds)
        return out

    def _fill_uids(self, ds: Any, k: int) -> None:
        """Set the UIDs a de-identified header lacks (in memory only; files are never touched):
        SOP Instance/Class UIDs from the file meta (as the reader does), Study/Series the
        references'."""
        meta = getattr(ds, "file_meta", None)
        for key in ("SOPInstanceUID", "SOPClassUID"):
            if not str(ds.get(key, "") or "") and meta is not None and meta.get("MediaStorage" + key):
                setattr(ds, key, meta.get("MediaStorage" + key))
        if not str(ds.get("SOPClassUID", "") or ""):
            ds.SOPClassUID = self.sop_class_uids[k]
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid


def load_source(source: SourceLike, segmentation: Segmentation) -> SourceSeries:
    """The source series of ``segmentation``, checked against its grid.

    Parameters
    ----------
    source : Volume, path or list of paths
        A Volume read from DICOM (its ``dicom_source`` record; a Volume rebuilt without the
        record but with ``meta["files"]`` has those files' headers scanned), a DICOM folder
        (headers scanned, series chosen by the label map's ``meta["SeriesInstanceUID"]``), or
        the slice files in array z order.
    segmentation : Segmentation
        Must lie on the source grid.

    Raises
    ------
    InputError
        ``source`` carries no DICOM source (e.g. a NIfTI image), or is multi-frame.
    GeometryError
        The label grid differs from the source series' grid, or the source has interpolated slices.
    DicomError
        A source header is unreadable or lacks the geometry attributes or UIDs.
    """
    record = _record_of(source, segmentation)
    _check_references(record)
    record.check_grid(segmentation.label_map.shape, segmentation.affine)
    return SourceSeries(record, *_reference_uids(record))


def _record_of(source: SourceLike, segmentation: Segmentation) -> DicomSource:
    """The DicomSource of a Volume, a DICOM folder or file, or a list of slice files."""
    from medseg.io.dicom import dicom_source_from_files, read_dicom_source

    if isinstance(source, Volume):
        if isinstance(source.dicom_source, DicomSource):
            return source.dicom_source
        files = source.meta.get("files")
        if not files:
            raise InputError(
                "source volume has no meta['files'] and no dicom_source (it was not read from DICOM); DICOM SEG "
                "and RTSTRUCT need the source DICOM series: pass the DICOM folder or a Volume from read_volume")
        return dicom_source_from_files(_slice_files(files))
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir() or p.suffix.lower() in (".dcm", ".ima", ""):
            return read_dicom_source(p, series_uid=segmentation.label_map.meta.get("SeriesInstanceUID"))
        raise InputError(f"source {p} is not a DICOM folder or file; DICOM SEG/RTSTRUCT need DICOM sources")
    files = [str(f) if f is not None else None for f in source]
    if not files:
        raise InputError("source file list is empty; pass the source series' slice files in z order")
    return dicom_source_from_files(_slice_files(files))


def _slice_files(files: Sequence) -> list[str]:
    """One file per slice: refuse interpolated slices (None) and multi-frame files."""
    missing = [k for k, f in enumerate(files) if f is None]
    if missing:
        raise GeometryError(
            f"slices {missing[:10]} of the source volume were interpolated (missing or irregular slices), "
            f"so no source instance exists for them; DICOM SEG/RTSTRUCT need one source image per slice: "
            f"export NIfTI instead, or read the series with strict=True to find the gap"
        )
    if len(set(files)) != len(files):
        raise InputError(_MULTI_FRAME)
    return [str(f) for f in files]


_MULTI_FRAME = ("the source is a multi-frame image; DICOM SEG/RTSTRUCT export supports single-frame series "
                "(one file per slice) only")


def _check_references(record: DicomSource) -> None:
    """Every slice must be a single-frame source instance with the UIDs an export references."""
    _slice_files(record.files)
    if any(s.frame is not None for s in record.slices):  # type: ignore[union-attr]
        raise InputError(_MULTI_FRAME)
    first = record.files[0]
    if not record.frame_of_reference_uid:
        raise DicomError(first, "source slice has no FrameOfReferenceUID",
                         "DICOM SEG/RTSTRUCT must reference it; use the original (not de-identified) series")
    for s in record.slices:
        for key, value in (("SOPClassUID", s.sop_class_uid), ("SOPInstanceUID", s.sop_instance_uid)):  # type: ignore[union-attr]
            if not value:
                raise DicomError(s.file, f"source slice has no {key}",  # type: ignore[union-attr]
                                 "DICOM SEG/RTSTRUCT must reference it; use the original (not de-identified) series")


def _reference_uids(record: DicomSource) -> tuple[str, str]:
    """(Study, Series) Instance UIDs to reference; derived from the SOP instances when blank."""
    sops = sorted(record.sop_instance_uids)  # type: ignore[type-var]
    study = record.study_uid or content_uid("StudyInstanceUID", sops)
    series = record.series_uid or content_uid("SeriesInstanceUID", sops)
    repaired = [k for k, v in (("StudyInstanceUID", record.study_uid), ("SeriesInstanceUID", record.series_uid))
                if not v]
    if repaired:
        log.warning("source series lacks %s (de-identified?); used derived UIDs in the references",
                    ", ".join(repaired))
    return study, series


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
