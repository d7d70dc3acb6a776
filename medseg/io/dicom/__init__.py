"""DICOM series: scan a folder, pick a series, load it as a :class:`~medseg.core.volume.Volume`.

>>> scan = scan_dicom("study/")                     # headers only, nested folders
>>> [(s.series_uid, s.modality, s.n_images) for s in scan.series]
>>> volume = read_dicom("study/", series_uid=None)   # the default series (see select_series)

What the reader guarantees (the geometry rules are detailed in
:mod:`medseg.io.dicom._geometry`, the dtype rule in :mod:`medseg.io.dicom._pixels`):

* files are grouped by SeriesInstanceUID; objects that are not images (SR, KO, RTSTRUCT,
  RT plans/dose, SEG, presentation states, waveforms, PDFs, DICOMDIR), non-DICOM files and
  truncated files are skipped, each with a reason, in :attr:`DicomScan.skipped`;
* slices are ordered by ImagePositionPatient projected on the slice normal, never by file
  name or InstanceNumber; the affine comes from the positions, not from SliceThickness;
* RescaleSlope/Intercept are applied (CT → HU), including the per-frame Pixel Value
  Transformation of enhanced multi-frame objects (which ``pydicom.pixels.apply_modality_lut``
  ignores);
* gantry tilt keeps the voxels with an exact sheared affine (:func:`orthogonalize` resamples
  it for ITK formats); missing slices and uneven spacing
  are warned about and resampled onto a regular grid (``strict=True`` refuses instead);
* MONOCHROME1 images keep their stored modality values (they are not inverted; SimpleITK
  inverts them) and get a warning: the photometric interpretation is a display instruction,
  while segmentation works on modality values;
* colour images and objects without patient geometry are refused with a named reason.

The returned Volume carries its :class:`DicomSource` (``volume.dicom_source``, see
:mod:`medseg.io.dicom.source`): the files, UIDs and per-slice positions that DICOM SEG and
RTSTRUCT exports reference; :func:`read_dicom_source` gives the same record from headers only.

Every failure is a :class:`~medseg.core.errors.DicomError` (file, problem, fix) or a
:class:`~medseg.core.errors.SeriesSelectionError`; never a raw pydicom traceback.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from medseg.core import geometry
from medseg.core.errors import DicomError, GeometryError, SeriesSelectionError
from medseg.io.dicom._geometry import StackPlan, plan_stack
from medseg.io.dicom._headers import HeaderInfo, ImageRecord, SeriesTags, Skip, read_header
from medseg.io.dicom._pixels import read_pixels
from medseg.io.dicom._tilt import orthogonalize
from medseg.io.dicom.source import DicomSource, SourceSlice, dicom_source_from_files, source_from_images
from medseg.core.progress import CancelCallback, ProgressCallback, StepProgress
from medseg.core.volume import Volume

__all__ = ["DicomScan", "SeriesInfo", "SkippedFile", "DicomSource", "SourceSlice", "scan_dicom", "select_series",
           "read_dicom", "read_dicom_source", "dicom_source_from_files", "orthogonalize"]

log = logging.getLogger(__name__)
_WORKERS = max(1, min(4, (os.cpu_count() or 1)))


@dataclass(frozen=True)
class SkippedFile:
    """A file the scan did not use, and why."""

    path: str
    reason: str


@dataclass
class SeriesInfo(SeriesTags):
    """One image series found by :func:`scan_dicom` (headers only; no pixels read).

    Attributes
    ----------
    series_uid, study_uid, frame_of_reference_uid : str
    modality, description, patient_id, patient_name : str
    series_number : int or None
    files : list of str
        Every file of the series (any order).
    n_images : int
        2D images (slices, or frames of multi-frame files).
    shape : (3,) ints or None
        ``(Z, Y, X)`` of the volume :func:`read_dicom` would return; None if it cannot load.
    spacing : (3,) floats or None
        Voxel size in mm, array order ``(z, y, x)``.
    origin : (3,) floats or None
        LPS mm of voxel ``(0, 0, 0)``.
    orientation : str
        Three letters, e.g. ``'SPL'`` (see :func:`medseg.core.geometry.orientation_code`).
    warnings : list of str
        Geometry findings (tilt, missing slices, uneven spacing, duplicate copies).
    problem : str or None
        Why the series cannot be loaded, or None.
    """

    files: list[str] = field(default_factory=list)
    n_images: int = 0
    shape: Optional[tuple[int, int, int]] = None
    spacing: Optional[tuple[float, float, float]] = None
    origin: Optional[tuple[float, float, float]] = None
    orientation: str = ""
    warnings: list[str] = field(default_factory=list)
    problem: Optional[str] = None
    _images: list[ImageRecord] = field(default_factory=list, repr=False)
    _gantry_tilt: Optional[float] = field(default=None, repr=False)
    _fix: str = field(default="", repr=False)
    #: True when the files carry no SeriesInstanceUID and ``series_uid`` is medseg's grouping key
    uid_missing: bool = False

    @property
    def loadable(self) -> bool:
        """True when :func:`read_dicom` can build a volume from the headers."""
        return self.problem is None

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (what ``medseg info`` prints)."""
        return {
            "series_uid": self.series_uid, "modality": self.modality, "description": self.description,
            "series_number": self.series_number, "n_files": len(self.files), "n_images": self.n_images,
            "shape_zyx": list(self.shape) if self.shape else None,
            "spacing_zyx_mm": [round(v, 4) for v in self.spacing] if self.spacing else None,
            "origin_lps_mm": [round(v, 3) for v in self.origin] if self.origin else None,
            "orientation": self.orientation, "warnings": list(self.warnings), "problem": self.problem,
        }

    def _plan(self, strict: bool = False) -> StackPlan:
        return plan_stack(self._images, strict=strict, tilt_tag=self._gantry_tilt)


@dataclass
class DicomScan:
    """Result of :func:`scan_dicom`: the series found and the files skipped."""

    root: str
    series: list[SeriesInfo] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"DicomScan({self.root!r}, {len(self.series)} series, {len(self.skipped)} skipped)"


def _list_files(root: Path) -> list[str]:
    if root.is_file():
        return [str(root)]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return out


def _fallback_key(h: HeaderInfo) -> str:
    """Grouping key for files without SeriesInstanceUID: 'nouid-' + a digest of what they share."""
    import hashlib

    parts = (os.path.dirname(os.path.abspath(h.file.path)), h.study_uid, str(h.series_number), h.modality,
             h.description, h.frame_of_reference_uid)
    return "nouid-" + hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:16]


def _header_or_skip(path: str) -> HeaderInfo | SkippedFile:
    try:
        return read_header(path)
    except Skip as exc:
        return SkippedFile(path, str(exc))


def _read_headers(files: list[str], results: list, steps: StepProgress) -> None:
    if len(files) <= 4 or _WORKERS == 1:
        for f in files:
            results.append(_header_or_skip(f))
            steps.step()
        return
    with ThreadPoolExecutor(_WORKERS) as pool:
        for res in pool.map(_header_or_skip, files):
            results.append(res)
            steps.step()


def scan_dicom(
    folder: str | Path,
    *,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> DicomScan:
    """List the image series under a folder (recursively) from their headers only.

    Parameters
    ----------
    folder : str or Path
        A folder (nested and mixed content allowed) or one DICOM file.
    progress, cancel : callables, optional
        See :mod:`medseg.core.progress`; one step per file.

    Returns
    -------
    DicomScan
        ``series`` sorted by SeriesNumber then UID, each with its geometry (shape, spacing,
        origin, orientation) and warnings; ``skipped`` lists every unused file with a reason.

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    files = _list_files(root)
    steps = StepProgress(len(files), "scanning DICOM headers", progress=progress, cancel=cancel)
    results: list[HeaderInfo | SkippedFile] = []
    with warnings.catch_warnings():
        # pydicom warns about every oddity it repairs; the scan reports what matters itself
        warnings.simplefilter("ignore")
        _read_headers(files, results, steps)
    scan = DicomScan(str(root))
    groups: dict[str, list[HeaderInfo]] = {}
    for res in results:
        if isinstance(res, SkippedFile):
            scan.skipped.append(res)
        else:
            groups.setdefault(res.series_uid or _fallback_key(res), []).append(res)
    for uid, headers in groups.items():
        h0 = headers[0]
        images = [im for h in headers for im in h.images]
        info = SeriesInfo(
            series_uid=uid, study_uid=h0.study_uid, frame_of_reference_uid=h0.frame_of_reference_uid,
            modality=h0.modality, description=h0.description, series_number=h0.series_number,
            patient_id=h0.patient_id, patient_name=h0.patient_name, files=[h.file.path for h in headers],
            n_images=len(images), _images=images, _gantry_tilt=h0.gantry_tilt, uid_missing=not h0.series_uid,
        )
        plan = info._plan()
        info.warnings = list(plan.warnings)
        if info.uid_missing:
            info.warnings.insert(0, "no SeriesInstanceUID (de-identified?): files grouped by folder, StudyInstanceUID, "
                                    f"SeriesNumber, Modality and SeriesDescription under the key {uid!r}")
        info.problem, info._fix = plan.problem, plan.fix
        if plan.affine is not None and plan.problem is None:
            info.shape = plan.shape
            info.spacing = geometry.spacing_of(plan.affine)
            info.origin = geometry.origin_of(plan.affine)
            info.orientation = geometry.orientation_code(plan.affine)
        scan.series.append(info)
    scan.series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
    log.info("scanned %s: %d series, %d file(s) skipped", root, len(scan.series), len(scan.skipped))
    return scan


def _listing(scan: DicomScan) -> str:
    if not scan.series:
        reasons = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in scan.skipped[:5])
        more = f" (+{len(scan.skipped) - 5} more)" if len(scan.skipped) > 5 else ""
        return f"no image series found in {scan.root}" + (f"; skipped {reasons}{more}" if reasons else " (no files)")
    return "available series: " + "; ".join(
        f"{s.series_uid} ({s.modality} '{s.description}', {s.n_images} images)" for s in scan.series)


def select_series(scan: DicomScan, series_uid: Optional[str] = None) -> SeriesInfo:
    """Pick one series of a scan.

    Default rule (``series_uid=None``): among the series that can be loaded (else among all),
    the one with the most images; ties go to the larger matrix (Rows × Columns), then the
    lowest SeriesNumber, then the smallest SeriesInstanceUID. A localizer or a dose report
    therefore never wins over the diagnostic volume.

    Raises
    ------
    SeriesSelectionError
        When the scan holds no image series, or ``series_uid`` is not among them; the
        message lists what is available (or why each file was skipped).
    """
    if not scan.series:
        raise SeriesSelectionError(_listing(scan) + "; point to a folder holding a CT/MR/PET image series")
    if series_uid == "":  # a blank SeriesInstanceUID (as de-identified files carry): the series without one
        blank = [s for s in scan.series if s.uid_missing]
        if len(blank) == 1:
            return blank[0]
        raise SeriesSelectionError(f"{len(blank)} series without SeriesInstanceUID in {scan.root}; pass the grouping "
                                   f"key shown by `medseg info` (meta['series_key']) instead; {_listing(scan)}")
    if series_uid is not None:
        for s in scan.series:
            if s.series_uid == series_uid:
                return s
        raise SeriesSelectionError(f"series {series_uid!r} not found in {scan.root}; {_listing(scan)}")
    pool = [s for s in scan.series if s.loadable] or scan.series

    def key(s: SeriesInfo) -> tuple:
        f = s._images[0].file if s._images else None
        matrix = f.rows * f.columns if f else 0
        sn = s.series_number if s.series_number is not None else 1 << 31
        return (-s.n_images, -matrix, sn, s.series_uid)

    return min(pool, key=key)


def read_dicom(
    path: str | Path,
    *,
    series_uid: Optional[str] = None,
    strict: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Volume:
    """Load one DICOM series as a Volume (array ``(Z, Y, X)``, affine voxel → LPS mm).

    Parameters
    ----------
    path : str or Path
        A folder (searched recursively) or a single DICOM file (loaded on its own).
    series_uid : str, optional
        SeriesInstanceUID to load (or the ``nouid-...`` key :func:`scan_dicom` gives series whose
        files lack one; ``""`` selects the only such series); default: :func:`select_series`'s rule.
    strict : bool
        Refuse (DicomError) irregular slice spacing instead of resampling it.
    progress, cancel : callables, optional
        See :mod:`medseg.core.progress`.

    Returns
    -------
    Volume
        ``array``: modality values (CT in HU), dtype int16/int32 when the rescale is exact in
        integers, else float32 (stored dtype when there is no rescale). ``dicom_source``: the
        :class:`DicomSource` record (files, UIDs, per-slice SOP instances and
        ImagePositionPatient in array z order) that DICOM SEG/RTSTRUCT exports reference; None
        for an image without patient geometry. ``meta`` (provenance): ``source``,
        ``format`` ('dicom'), ``Modality``, ``StudyInstanceUID``, ``SeriesInstanceUID``,
        ``FrameOfReferenceUID``, ``PatientID``, ``PatientName``, ``SeriesDescription``,
        ``series_key`` (what ``series_uid=`` selects this series by),
        ``SeriesNumber``, ``files`` and ``sop_instance_uids`` in array z order (``None`` for
        interpolated slices), ``frames`` (frame index within a multi-frame file, else None),
        ``warnings`` (list of str, also logged), ``interpolated_slices``, ``gantry_tilt_deg``,
        ``PhotometricInterpretation``.

    Raises
    ------
    SeriesSelectionError
        No image series, or ``series_uid`` not found.
    DicomError
        The series is inconsistent, lacks geometry, is colour, or its pixels cannot be decoded.
    """
    from medseg.io.limits import check_declared_size

    root = Path(path)
    scan = scan_dicom(root, progress=progress, cancel=cancel)
    series = select_series(scan, series_uid)
    _note_other_series(scan, series, series_uid, root)
    where = series.files[0] if len(series.files) == 1 else str(root)
    plan = _loadable_plan(series, where, strict=strict)
    _refuse_colour(plan, where)
    notes = _notes(series, plan)
    for w in notes:
        log.warning("%s: %s", where, w)
    # raw stored slices plus the float32 result may be held at once
    check_declared_size(where, (len(plan.images) + int(np.prod(plan.shape[:1])), *plan.shape[1:]), 4,
                        fields=f"{len(plan.images)} images x Rows x Columns (stored and rescaled)")
    array = read_pixels(plan, progress=progress, cancel=cancel)
    return Volume(array, plan.affine, _provenance(root, series, plan, notes),  # type: ignore[arg-type]
                  dicom_source=_source_record(series, plan))


def read_dicom_source(path: str | Path, *, series_uid: Optional[str] = None, strict: bool = False) -> DicomSource:
    """The :class:`DicomSource` record of a series from its headers only (no pixel is read).

    What an export needs when it has only the series' folder: the same scan, series selection
    and slice ordering as :func:`read_dicom`, without decoding pixels.

    Raises
    ------
    SeriesSelectionError
        No image series, or ``series_uid`` not found.
    DicomError
        The series cannot be loaded, or its images carry no patient geometry.
    """
    root = Path(path)
    series = select_series(scan_dicom(root), series_uid)
    where = series.files[0] if len(series.files) == 1 else str(root)
    plan = _loadable_plan(series, where, strict=strict)
    record = _source_record(series, plan)
    if record is None:
        raise DicomError(where, "no patient geometry (ImagePositionPatient/ImageOrientationPatient) on a "
                                "regular grid: no source record", "use a series read as a 3D volume")
    return record


def _note_other_series(scan: DicomScan, series: SeriesInfo, series_uid: Optional[str], root: Path) -> None:
    """Warn when the default rule picked one of several loadable series."""
    loadable = [s for s in scan.series if s.loadable]
    if series_uid is None and len(loadable) > 1:
        log.warning("%s holds %d image series; loading %s (%s, %d images, the most); pass series_uid= to choose",
                    root, len(loadable), series.series_uid, series.description or series.modality, series.n_images)


def _loadable_plan(series: SeriesInfo, where: str, *, strict: bool) -> StackPlan:
    """The series' stack plan; DicomError (naming the problem and the fix) when it cannot load."""
    plan = series._plan(strict=strict)
    if plan.problem is not None:
        raise DicomError(where, f"series {series.series_uid}: {plan.problem}", plan.fix)
    return plan


def _refuse_colour(plan: StackPlan, where: str) -> None:
    """DicomError for colour images: medseg segments greyscale modality values."""
    f0 = plan.images[0].file
    photometric = {im.file.photometric for im in plan.images}
    if f0.samples != 1 or not photometric <= {"MONOCHROME1", "MONOCHROME2"}:
        raise DicomError(where, f"colour image (PhotometricInterpretation {'/'.join(sorted(photometric))}, "
                         f"{f0.samples} samples per pixel)",
                         "medseg segments greyscale CT/MR/PET volumes; convert the series to greyscale")


def _notes(series: SeriesInfo, plan: StackPlan) -> list[str]:
    """Warnings of the read: missing UID, the plan's geometry findings, MONOCHROME1."""
    notes = ([series.warnings[0]] if series.uid_missing else []) + list(plan.warnings)
    if any(im.file.photometric == "MONOCHROME1" for im in plan.images):
        notes.append("MONOCHROME1: values kept as stored modality values (not inverted); only the display "
                     "convention differs (SimpleITK inverts them)")
    return notes


def _acquired_images(plan: StackPlan) -> list[Optional[ImageRecord]]:
    """The source image of each array slice in z order; None for interpolated slices."""
    return [plan.images[srcs[0][0]] if len(srcs) == 1 else None for srcs in plan.sources]


def _source_record(series: SeriesInfo, plan: StackPlan) -> Optional[DicomSource]:
    """The series' :class:`DicomSource`, or None (with a warning) when its slices do not lie
    within the export tolerance of the planned grid."""
    record = source_from_images(
        _acquired_images(plan), study_uid=series.study_uid,
        series_uid="" if series.uid_missing else series.series_uid,
        frame_of_reference_uid=series.frame_of_reference_uid, modality=series.modality)
    if record is None or plan.affine is None:
        return None
    try:
        record.check_grid(plan.shape, plan.affine, what="volume")
    except GeometryError as exc:  # the reader accepts up to 0.5 mm off the stacking line
        log.warning("series %s: no DICOM source record for SEG/RTSTRUCT export: %s", series.series_uid, exc)
        return None
    return record


def _provenance(root: Path, series: SeriesInfo, plan: StackPlan, notes: list[str]) -> dict[str, Any]:
    """``Volume.meta`` of a DICOM read (see :func:`read_dicom`)."""
    images = _acquired_images(plan)
    return {
        "source": str(root), "format": "dicom", "Modality": series.modality,
        "StudyInstanceUID": series.study_uid,
        "SeriesInstanceUID": "" if series.uid_missing else series.series_uid, "series_key": series.series_uid,
        "FrameOfReferenceUID": series.frame_of_reference_uid, "PatientID": series.patient_id,
        "PatientName": series.patient_name, "SeriesDescription": series.description,
        "SeriesNumber": series.series_number,
        "files": [im.file.path if im else None for im in images],
        "sop_instance_uids": [im.sop_uid if im else None for im in images],
        "frames": [im.frame if im else None for im in images],
        "warnings": notes, "interpolated_slices": list(plan.interpolated),
        "gantry_tilt_deg": round(plan.tilt_deg, 4),
        "PhotometricInterpretation": sorted({im.file.photometric for im in plan.images})[0],
    }
