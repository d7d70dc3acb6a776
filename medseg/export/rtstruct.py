"""DICOM RT Structure Set (RTSTRUCT) export: per-slice contours in patient coordinates.

Written with pydicom directly (not rt-utils, whose mask → contour path has had orientation
bugs): for every label and every source slice, the 0.5 iso-contours of the slice mask
(:func:`skimage.measure.find_contours` on a zero-padded mask, so every contour is closed) are
mapped voxel ``(k, j, i)`` → LPS mm through the label map's affine. That is exact for axial,
flipped and oblique grids alike, because the affine is the one the source headers define
(checked by :func:`medseg.export._source.load_source`). Holes become nested contours, which
planning systems combine with the even-odd (XOR) rule; :func:`rasterize_rtstruct` does the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from medseg import __version__
from medseg.core.errors import DicomError, InputError
from medseg.export._common import codes_of, exported_labels, now_dicom
from medseg.export._source import SourceLike, SourceSeries, content_uid, load_source
from medseg.io.atomic import atomic_path
from medseg.core.progress import CancelCallback, ProgressCallback, StepProgress
from medseg.core.segmentation import Segmentation

__all__ = ["write_rtstruct", "mask_contours", "rasterize_rtstruct"]

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
DETACHED_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"


_CONTOUR_DATA = 0x30060050


def _ds_raw(tag: int, values: np.ndarray):
    """A DS multi-value element kept raw (pydicom's per-value DS objects are slow for 10^6 values)."""
    from pydicom.dataelem import RawDataElement

    text = "\\".join(_fmt(v) for v in values.tolist()).encode("ascii")
    if len(text) % 2:
        text += b" "
    return RawDataElement(tag, "DS", len(text), text, 0, False, True)


def _fmt(v: float) -> str:
    s = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _contour_points(item) -> np.ndarray:
    """(N, 3) LPS points of a contour item, parsed from the raw bytes when possible."""
    elem = item.get_item(_CONTOUR_DATA)
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        return np.array(bytes(value).replace(b"\\", b" ").split(), dtype=float).reshape(-1, 3)
    return np.asarray(item.ContourData, dtype=float).reshape(-1, 3)


def mask_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed 0.5 iso-contours of a 2D boolean mask.

    Parameters
    ----------
    mask2d : (Y, X) bool ndarray

    Returns
    -------
    list of (N, 2) float ndarrays
        Vertices ``(j, i)`` in continuous voxel indices, without the repeated closing point
        and with collinear vertices removed.
    """
    from skimage.measure import find_contours

    padded = np.pad(mask2d.astype(np.float32), 1)
    out = []
    for c in find_contours(padded, 0.5, fully_connected="high"):
        c = c - 1.0
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        c = _drop_collinear(c)
        if len(c) >= 3:
            out.append(c)
    return out


def _drop_collinear(poly: np.ndarray) -> np.ndarray:
    """Remove vertices of a closed polygon that lie on the line through their neighbours."""
    if len(poly) < 4:
        return poly
    prev, nxt = np.roll(poly, 1, axis=0), np.roll(poly, -1, axis=0)
    a, b = poly - prev, nxt - poly
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    keep = np.abs(cross) > 1e-9
    return poly[keep] if keep.sum() >= 3 else poly


def write_rtstruct(
    segmentation: Segmentation,
    path: str | Path,
    *,
    source: SourceLike,
    algorithm: Optional[str] = None,
    structure_set_label: str = "MEDSEG",
    series_description: str = "medseg structures",
    series_number: int = 301,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Path:
    """Write ``segmentation`` as an RTSTRUCT referencing its source series.

    Parameters
    ----------
    segmentation : Segmentation
        (Z, Y, X) label map on the source grid; one ROI per label present.
    path : str or Path
        Output ``.dcm`` file.
    source : Volume, DICOM folder or list of files
        The source series.
    algorithm : str, optional
        Name of the generating algorithm; ROIs are then AUTOMATIC, else MANUAL.
    structure_set_label, series_description, series_number
        Of the new structure set.
    progress, cancel : callables, optional
        One step per label.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        An empty label map.
    GeometryError
        The label grid is not the source grid.
    """
    import pydicom

    src = load_source(source, segmentation)
    labels = exported_labels(segmentation)
    if not labels:
        raise InputError("the label map is empty (only background); an RTSTRUCT needs at least one ROI")
    steps = StepProgress(len(labels) + 1, "RTSTRUCT", progress=progress, cancel=cancel)
    series_uid = content_uid("rt-series", src.series_uid, segmentation.array, [str(l) for l in labels])
    ds = _structure_set(src, series_uid, structure_set_label=structure_set_label,
                        series_description=series_description, series_number=series_number)
    _add_rois(ds, segmentation, labels, src, algorithm, steps)
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
    steps.step()
    log.info("wrote RTSTRUCT %s (%d ROIs)", path, len(labels))
    return Path(path)


_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")
_PATIENT_STUDY_OPTIONAL = ("IssuerOfPatientID", "StudyDescription", "PatientAge")


def _structure_set(src: SourceSeries, series_uid: str, *, structure_set_label: str, series_description: str,
                   series_number: int) -> Any:
    """The RTSTRUCT data set without ROIs: file meta, patient and study (copied from the first
    source header), RT series, equipment, structure set and the referenced source instances."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    sop_uid = content_uid("rt-instance", series_uid)
    date, time = now_dicom()
    first = src.first_header()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    for key in _PATIENT_STUDY:
        setattr(ds, key, first.get(key, "") or "")
    for key in _PATIENT_STUDY_OPTIONAL:
        if first.get(key):
            setattr(ds, key, first.get(key))
    ds.StudyInstanceUID = src.study_uid
    # RT Series and General Equipment
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = "medseg"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = 1
    # Structure Set
    ds.StructureSetLabel = structure_set_label[:16]
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ReferencedFrameOfReferenceSequence = _referenced_frame(src)
    # Frame of Reference module (part of the RT Structure Set IOD since 2021)
    ds.FrameOfReferenceUID = src.frame_of_reference_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""
    return ds


def _image_ref(sop_class_uid: str, sop_instance_uid: str) -> Any:
    """A ContourImageSequence item referencing one source instance."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def _referenced_frame(src: SourceSeries) -> Any:
    """ReferencedFrameOfReferenceSequence: frame → study → series → every source instance."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    rt_series = Dataset()
    rt_series.SeriesInstanceUID = src.series_uid
    rt_series.ContourImageSequence = Sequence(
        [_image_ref(c, i) for c, i in zip(src.sop_class_uids, src.sop_instance_uids)])
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = DETACHED_STUDY_SOP_CLASS
    rt_study.ReferencedSOPInstanceUID = src.study_uid
    rt_study.RTReferencedSeriesSequence = Sequence([rt_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = src.frame_of_reference_uid
    frame.RTReferencedStudySequence = Sequence([rt_study])
    return Sequence([frame])


def _add_rois(ds: Any, segmentation: Segmentation, labels: list, src: SourceSeries, algorithm: Optional[str],
              steps: StepProgress) -> None:
    """StructureSetROI, ROIContour and RTROIObservations sequences: one ROI per label."""
    from pydicom.sequence import Sequence

    roi_items, contour_items, observation_items = [], [], []
    for number, label in enumerate(labels, start=1):
        roi_items.append(_roi(number, label, src.frame_of_reference_uid, algorithm))
        contours = _label_contours(segmentation, label.index, src)
        if not contours:  # pragma: no cover - labels are taken from the map, so each has voxels
            raise DicomError(src.files[0], f"no contour for ROI {label.name}")
        contour_items.append(_roi_contour(number, label, contours))
        observation_items.append(_observation(number, label))
        steps.step()
    ds.StructureSetROISequence = Sequence(roi_items)
    ds.ROIContourSequence = Sequence(contour_items)
    ds.RTROIObservationsSequence = Sequence(observation_items)
    ds.ApprovalStatus = "UNAPPROVED"
    for rc in ds.ROIContourSequence:  # keep the raw ContourData raw when writing
        for item in rc.ContourSequence:
            item.set_original_encoding(False, True, item._character_set)


def _roi(number: int, label: Any, frame_of_reference_uid: str, algorithm: Optional[str]) -> Any:
    """A StructureSetROISequence item."""
    from pydicom.dataset import Dataset

    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_of_reference_uid
    roi.ROIName = label.name[:64]
    roi.ROIGenerationAlgorithm = "AUTOMATIC" if algorithm else "MANUAL"
    if algorithm:
        roi.ROIGenerationDescription = f"{algorithm} (medseg {__version__})"[:64]
    return roi


def _label_contours(segmentation: Segmentation, index: int, src: SourceSeries) -> list:
    """ContourSequence items of one label: the closed contours of each slice ``k`` mapped
    voxel → LPS through the label map's affine (checked against the source slices), each
    referencing source instance ``k``."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    affine = segmentation.affine
    mask = segmentation.array == index
    uids, classes = src.sop_instance_uids, src.sop_class_uids
    out = []
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        for c in mask_contours(mask[k]):
            kji = np.column_stack([np.full(len(c), float(k)), c])
            xyz = kji @ affine[:3, :3].T + affine[:3, 3]
            item = Dataset()
            item.ContourImageSequence = Sequence([_image_ref(classes[k], uids[k])])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(xyz)
            item[_CONTOUR_DATA] = _ds_raw(_CONTOUR_DATA, xyz.ravel())
            out.append(item)
    return out


def _roi_contour(number: int, label: Any, contours: list) -> Any:
    """A ROIContourSequence item."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    rc = Dataset()
    rc.ROIDisplayColor = list(label.color)
    rc.ReferencedROINumber = number
    rc.ContourSequence = Sequence(contours)
    return rc


def _observation(number: int, label: Any) -> Any:
    """An RTROIObservationsSequence item with the label's identification code."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    obs = Dataset()
    obs.ObservationNumber = number
    obs.ReferencedROINumber = number
    obs.RTROIInterpretedType = "ORGAN" if label.category is None or label.category.value == "123037004" else ""
    obs.ROIInterpreter = ""
    _, prop = codes_of(label)
    code = Dataset()
    code.CodeValue = prop.value
    code.CodingSchemeDesignator = prop.scheme
    code.CodeMeaning = prop.meaning[:64]
    obs.RTROIIdentificationCodeSequence = Sequence([code])
    return obs


def _fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Scan-line fill of closed polygons ``(N, 2)`` in ``(j, i)`` with the even-odd rule.

    A pixel is inside when its centre ``(j, i)`` is; edges follow the half-open rule so that
    a vertex on a scan line is counted once.
    """
    y0 = np.concatenate([p[:, 0] for p in polygons])
    x0 = np.concatenate([p[:, 1] for p in polygons])
    y1 = np.concatenate([np.roll(p[:, 0], -1) for p in polygons])
    x1 = np.concatenate([np.roll(p[:, 1], -1) for p in polygons])
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    r0 = np.ceil(lo).astype(np.int64)
    r1 = np.ceil(hi).astype(np.int64)  # rows r with lo <= r < hi
    n = np.maximum(r1 - r0, 0)
    edge = np.repeat(np.arange(len(y0)), n)
    rows = np.repeat(r0, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    t = (rows - y0[edge]) / (y1[edge] - y0[edge])
    xs = x0[edge] + t * (x1[edge] - x0[edge])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    out = np.zeros(shape, dtype=bool)
    if len(rows) == 0:
        return out
    start_cols = np.clip(np.ceil(xs[0::2]), 0, shape[1]).astype(np.int64)
    end_cols = np.clip(np.ceil(xs[1::2]), 0, shape[1]).astype(np.int64)
    prow = rows[0::2]
    keep = (prow >= 0) & (prow < shape[0]) & (end_cols > start_cols)
    diff = np.zeros((shape[0], shape[1] + 1), dtype=np.int32)
    np.add.at(diff, (prow[keep], start_cols[keep]), 1)
    np.add.at(diff, (prow[keep], end_cols[keep]), -1)
    return np.cumsum(diff, axis=1)[:, :-1] > 0


def rasterize_rtstruct(path: str | Path, segmentation_or_volume, *, off_plane: str = "raise") -> dict[str, np.ndarray]:
    """Rasterise an RTSTRUCT's contours onto a grid (even-odd rule for nested contours).

    Parameters
    ----------
    path : str or Path
        RTSTRUCT file.
    segmentation_or_volume : Segmentation or Volume
        Gives the grid (shape and affine); contours are mapped LPS → index through it.
    off_plane : {"raise", "skip"}
        What to do with a contour that lies between the grid's slices (or outside them):
        raise :class:`DicomError`, or leave it out with a logged warning (opening a clinical
        structure set whose small helper ROIs were drawn between slices).

    Returns
    -------
    dict
        ROI name → (Z, Y, X) bool mask; a voxel is inside when its centre is.

    Raises
    ------
    DicomError
        A contour does not lie on a slice plane of the grid.
    """
    import pydicom

    vol = getattr(segmentation_or_volume, "label_map", segmentation_or_volume)
    inv = np.linalg.inv(vol.affine)
    ds = pydicom.dcmread(str(path))
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    zz, yy, xx = vol.shape
    for rc in ds.ROIContourSequence:
        mask = np.zeros(vol.shape, dtype=bool)
        per_slice: dict[int, list[np.ndarray]] = {}
        for c in getattr(rc, "ContourSequence", []):
            xyz = _contour_points(c)
            kji = xyz @ inv[:3, :3].T + inv[:3, 3]
            k = float(np.round(kji[:, 0].mean()))
            if np.abs(kji[:, 0] - k).max() > 0.01 or not 0 <= k < zz:
                if off_plane == "skip":
                    log.warning("%s: a contour of ROI %s lies off the slice planes (index z %.3f); left out",
                                Path(path).name, names.get(int(rc.ReferencedROINumber)), float(kji[:, 0].mean()))
                    continue
                raise DicomError(path, f"a contour of ROI {names.get(int(rc.ReferencedROINumber))} is off the "
                                       f"slice planes (index z {kji[:, 0].min():.3f}..{kji[:, 0].max():.3f})",
                                 "rasterise it onto the grid of its source series")
            per_slice.setdefault(int(k), []).append(kji[:, 1:])
        for k, polys in per_slice.items():
            mask[k] = _fill_even_odd(polys, (yy, xx))
        out[names[int(rc.ReferencedROINumber)]] = mask
    return out
