"""Open an existing DICOM SEG or RTSTRUCT for correction, on the grid of its source series.

:func:`read_dicom_labels` finds the series the object references (``ReferencedSeriesSequence``)
in the folder next to it (or one given), reads it, and returns a :class:`Segmentation` on that
series' grid with the segment / ROI names, colours and codes. The label map's ``meta`` is the
source series' own (its files), so that writing it again with :func:`write_dicom_seg` or
:func:`write_rtstruct` references the same series.

RTSTRUCT ROIs may overlap (a tumour inside a lung, a margin around a tumour); a label map holds
one label per voxel, so larger ROIs are painted first and smaller ones over them, and each ROI
that lost voxels to another is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from medseg.core.errors import InputError
from medseg.core.labels import Code, Label, LabelTable, default_color, known_codes
from medseg.core.segmentation import Segmentation, smallest_label_dtype

log = logging.getLogger(__name__)

__all__ = ["dicom_object_kind", "referenced_series_uid", "find_source_series", "read_dicom_labels"]


def dicom_object_kind(path: str | Path) -> Optional[str]:
    """``"SEG"`` or ``"RTSTRUCT"`` for such a DICOM file, else None (never raises)."""
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # noqa: BLE001 - not DICOM, unreadable: not a SEG / RTSTRUCT
        return None
    modality = str(getattr(ds, "Modality", "")).upper()
    return modality if modality in ("SEG", "RTSTRUCT") else None


def referenced_series_uid(ds: Any) -> Optional[str]:
    """SeriesInstanceUID of the image series a SEG or RTSTRUCT dataset refers to."""
    for item in getattr(ds, "ReferencedSeriesSequence", []) or []:
        if getattr(item, "SeriesInstanceUID", None):
            return str(item.SeriesInstanceUID)
    for frame in getattr(ds, "ReferencedFrameOfReferenceSequence", []) or []:
        for study in getattr(frame, "RTReferencedStudySequence", []) or []:
            for series in getattr(study, "RTReferencedSeriesSequence", []) or []:
                if getattr(series, "SeriesInstanceUID", None):
                    return str(series.SeriesInstanceUID)
    return None


def find_source_series(path: str | Path, ds: Any, source: Optional[str | Path] = None) -> Any:
    """The source :class:`Volume` of a SEG/RTSTRUCT: in ``source``, else its folder, else the parent's.

    Raises
    ------
    InputError
        No series with the referenced SeriesInstanceUID was found.
    """
    from medseg.core.errors import SeriesSelectionError
    from medseg.io import dicom, read_volume

    uid = referenced_series_uid(ds)
    path = Path(path)
    folders = [Path(source)] if source is not None else [path.parent, path.parent.parent]
    for folder in folders:
        if not folder.is_dir():
            continue
        if uid is not None:  # one scan of the folder: read_volume finds the series or says it is absent
            try:
                return read_volume(folder, series_uid=uid)
            except SeriesSelectionError:
                continue
        scan = dicom.scan_dicom(folder)
        images = [s for s in scan.series if str(getattr(s, "modality", "")).upper() not in ("SEG", "RTSTRUCT")]
        if len(images) == 1:
            return read_volume(folder, series_uid=images[0].series_uid)
    raise InputError(f"{path}: its source series (SeriesInstanceUID {uid}) is not in "
                     f"{' or '.join(str(f) for f in folders)}; put the {getattr(ds, 'Modality', 'DICOM')} "
                     f"file next to the DICOM files of the series it was drawn on, or pass source=")


def _code(seq: Any) -> Optional[Code]:
    item = (seq or [None])[0]
    if item is None or not getattr(item, "CodeValue", None):
        return None
    return Code(str(item.CodeValue), str(getattr(item, "CodingSchemeDesignator", "SCT")),
                str(getattr(item, "CodeMeaning", "")))


def _seg_labels(ds: Any) -> dict[int, Label]:
    out = {}
    for s in ds.SegmentSequence:
        number = int(s.SegmentNumber)
        tid = str(getattr(s, "TrackingID", "") or "")
        index = int(tid.split()[-1]) if tid.startswith("label ") and tid.split()[-1].isdigit() else number
        name = str(getattr(s, "SegmentLabel", f"segment_{number}"))
        typ = _code(getattr(s, "SegmentedPropertyTypeCodeSequence", None))
        cat = _code(getattr(s, "SegmentedPropertyCategoryCodeSequence", None))
        out[index] = Label(index, name, default_color(index), typ, cat)
    return out


def read_dicom_labels(path: str | Path, *, source: Optional[str | Path] = None, volume: Any = None) -> Segmentation:
    """A DICOM SEG or RTSTRUCT as a :class:`Segmentation` on its source series' grid.

    Parameters
    ----------
    path : str or Path
        The SEG or RTSTRUCT file.
    source : str or Path, optional
        Folder of the source series; default: the file's folder, then its parent.
    volume : Volume, optional
        The source series already read (used when its SeriesInstanceUID is the one referenced).

    Raises
    ------
    InputError
        Not a SEG / RTSTRUCT, or its source series is not found.
    """
    import pydicom

    path = Path(path)
    kind = dicom_object_kind(path)
    if kind is None:
        raise InputError(f"{path}: not a DICOM SEG or RTSTRUCT (Modality); open images with read_volume")
    ds = pydicom.dcmread(str(path), stop_before_pixels=kind == "RTSTRUCT")
    uid = referenced_series_uid(ds)
    if volume is None or (uid is not None and str(volume.meta.get("SeriesInstanceUID", "")) != uid):
        volume = find_source_series(path, ds, source)
    if kind == "SEG":
        from medseg.export.seg import read_dicom_seg

        arr = read_dicom_seg(path, source=volume)
        labels = _seg_labels(ds)
        present = {int(v) for v in np.unique(arr) if v}
        table = LabelTable(tuple(labels.get(i, Label(i, f"label_{i}", default_color(i))) for i in sorted(present)))
        arr = arr.astype(smallest_label_dtype(max(present, default=1)))
    else:
        arr, table = _rtstruct_map(path, ds, volume)
    meta = dict(volume.meta)
    meta["opened_from"] = str(path)
    return Segmentation(volume.with_array(arr, **{k: v for k, v in meta.items() if k not in volume.meta}), table)


def _rtstruct_map(path: Path, ds: Any, volume: Any) -> tuple[np.ndarray, LabelTable]:
    from medseg.export.rtstruct import rasterize_rtstruct

    masks = rasterize_rtstruct(path, volume, off_plane="skip")
    colours = {}
    numbers = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    for rc in ds.ROIContourSequence:
        name = numbers.get(int(rc.ReferencedROINumber))
        if getattr(rc, "ROIDisplayColor", None) is not None and name is not None:
            colours[name] = tuple(int(c) for c in rc.ROIDisplayColor)
    names = list(masks)  # ROI order of the file: label index = position + 1
    arr = np.zeros(volume.shape, smallest_label_dtype(max(len(names), 1)))
    for name in sorted(names, key=lambda n: -int(masks[n].sum())):  # larger first, smaller over them
        arr[masks[name]] = names.index(name) + 1
    labels = []
    for i, name in enumerate(names, start=1):
        kept = int((arr == i).sum())
        if kept < int(masks[name].sum()):
            log.warning("%s: ROI %s overlaps smaller ROIs; %d of its %d voxels are shown as theirs",
                        path.name, name, int(masks[name].sum()) - kept, int(masks[name].sum()))
        code, category = known_codes(name)
        labels.append(Label(i, name, colours.get(name, default_color(i)), code, category))
    return arr, LabelTable(tuple(labels))
