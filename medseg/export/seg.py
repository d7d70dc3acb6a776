"""DICOM Segmentation (SEG) export through highdicom.

One segment per label present in the label map, numbered 1..N in label-index order (DICOM
requires consecutive segment numbers; the label index is kept as the segment's tracking ID and
the label name as its SegmentLabel). Codes come from the label table (``Label.code`` as the
segmented property type, ``Label.category`` as its category), SNOMED CT Tissue by default.
The object references the source series (Study/Series/SOP Instance UIDs, Frame of Reference)
and is written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from medseg import __version__
from medseg.core.errors import DependencyError, InputError
from medseg.export._common import codes_of, exported_labels
from medseg.export._source import SourceLike, content_uid, load_source
from medseg.io.atomic import atomic_path
from medseg.core.progress import CancelCallback, ProgressCallback, StepProgress
from medseg.core.segmentation import Segmentation

__all__ = ["write_dicom_seg", "read_dicom_seg"]

log = logging.getLogger(__name__)


def _hd():
    try:
        import highdicom as hd
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DependencyError("DICOM SEG export needs highdicom: pip install 'highdicom>=0.23'") from exc
    return hd


#: equipment and content attributes of every SEG medseg writes
_EQUIPMENT = dict(manufacturer="medseg", manufacturer_model_name="medseg", software_versions=__version__,
                  device_serial_number="0", content_label="MEDSEG",
                  content_description="Segmentation exported by medseg")


def _code(hd, code):
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def write_dicom_seg(
    segmentation: Segmentation,
    path: str | Path,
    *,
    source: SourceLike,
    segmentation_type: Literal["binary", "labelmap"] = "binary",
    algorithm: Optional[str] = None,
    series_description: str = "medseg segmentation",
    series_number: int = 300,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Path:
    """Write ``segmentation`` as a DICOM SEG referencing its source series.

    Parameters
    ----------
    segmentation : Segmentation
        (Z, Y, X) label map on the source series' grid.
    path : str or Path
        Output ``.dcm`` file.
    source : Volume, DICOM folder or list of files
        The source series (see :func:`medseg.export._source.load_source`).
    segmentation_type : {"binary", "labelmap"}
        ``"binary"`` (one bit-packed frame per segment and slice; read by every viewer) or
        ``"labelmap"`` (one 8/16-bit frame per slice; DICOM 2024 Supplement 243, far faster
        with many labels but not yet read everywhere).
    algorithm : str, optional
        Name of the algorithm (model) that made the labels; the segments are then marked
        AUTOMATIC with an algorithm identification, otherwise MANUAL.
    series_description, series_number
        Of the new SEG series.
    progress, cancel : callables, optional
        See :mod:`medseg.core.progress`.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        Unknown ``segmentation_type``, or an empty label map (a SEG needs a segment).
    GeometryError
        The label grid is not the source grid.
    """
    hd = _hd()
    if segmentation_type not in ("binary", "labelmap"):
        raise InputError(f"segmentation_type must be 'binary' or 'labelmap', got {segmentation_type!r}")
    steps = StepProgress(3, "DICOM SEG", progress=progress, cancel=cancel)
    src = load_source(source, segmentation)
    labels = exported_labels(segmentation)
    if not labels:
        raise InputError("the label map is empty (only background); a DICOM SEG needs at least one segment")
    steps.step()
    pixels = _segment_numbers(segmentation, labels)
    series_uid = content_uid("seg-series", src.series_uid, segmentation_type, pixels, [str(l) for l in labels])
    seg = hd.seg.Segmentation(
        source_images=src.headers(),
        pixel_array=pixels,
        segmentation_type=segmentation_type.upper(),
        segment_descriptions=_segment_descriptions(hd, labels, src.series_uid, algorithm),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=content_uid("seg-instance", series_uid),
        instance_number=1,
        series_description=series_description[:64],
        omit_empty_frames=True,
        **_EQUIPMENT,
    )
    _derive_dimension_uid(seg, series_uid)
    steps.step()
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    steps.step()
    log.info("wrote DICOM SEG %s (%d segments, %s)", path, len(labels), segmentation_type)
    return Path(path)


def _segment_numbers(segmentation: Segmentation, labels: list) -> np.ndarray:
    """(Z, Y, X) map of segment numbers 1..N (label-index order), uint8 or uint16."""
    lut = np.zeros(int(segmentation.array.max()) + 1, dtype=np.uint16)
    for number, label in enumerate(labels, start=1):
        lut[label.index] = number
    return lut[segmentation.array].astype(np.uint8 if len(labels) < 256 else np.uint16)


def _segment_descriptions(hd: Any, labels: list, source_series_uid: str, algorithm: Optional[str]) -> list:
    """One highdicom SegmentDescription per label: name, codes, colour, tracking ID and UID."""
    from pydicom.sr.codedict import codes

    out = []
    for number, label in enumerate(labels, start=1):
        category, prop = codes_of(label)
        kwargs = {}
        if algorithm:
            kwargs["algorithm_identification"] = hd.AlgorithmIdentificationSequence(
                name=algorithm, family=codes.cid7162.ArtificialIntelligence, version=__version__)
        out.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label.name[:64],
            segmented_property_category=_code(hd, category),
            segmented_property_type=_code(hd, prop),
            algorithm_type="AUTOMATIC" if algorithm else "MANUAL",
            tracking_id=f"label {label.index}",
            tracking_uid=content_uid("tracking", source_series_uid, label.index, label.name),
            display_color=hd.color.CIELabColor.from_rgb(*label.color) if hasattr(hd.color.CIELabColor, "from_rgb") else None,
            **kwargs,
        ))
    return out


def _derive_dimension_uid(seg: Any, series_uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID by one derived from the content,
    so that the same segmentation always gives the same object."""
    dim_uid = content_uid("seg-dimensions", series_uid)
    old = {str(item.DimensionOrganizationUID) for item in seg.get("DimensionOrganizationSequence", [])}
    for item in list(seg.get("DimensionOrganizationSequence", [])) + list(seg.get("DimensionIndexSequence", [])):
        if str(item.get("DimensionOrganizationUID", "")) in old:
            item.DimensionOrganizationUID = dim_uid


def read_dicom_seg(path: str | Path, *, source: SourceLike, segmentation: Segmentation | None = None) -> np.ndarray:
    """Read a DICOM SEG back onto its source grid as a (Z, Y, X) label map.

    Segment numbers are mapped back to label indices through each segment's tracking ID
    (``"label <index>"``, as written by :func:`write_dicom_seg`), else kept as they are.

    Parameters
    ----------
    path : str or Path
        The SEG file.
    source : Volume, DICOM folder or list of files
        The source series, giving the slice order.
    segmentation : Segmentation, optional
        Only used to check the source grid; the map is returned on the source grid.

    Returns
    -------
    (Z, Y, X) uint16 ndarray
    """
    hd = _hd()
    seg = hd.seg.segread(str(path))
    if segmentation is None:
        from medseg.core.labels import LabelTable
        from medseg.core.volume import Volume

        if not isinstance(source, Volume):
            raise InputError("read_dicom_seg needs segmentation= (for the grid) unless source is a Volume "
                             "read from DICOM")
        segmentation = Segmentation(Volume(np.zeros(source.shape, np.uint8), source.affine), LabelTable())
    uids = load_source(source, segmentation).sop_instance_uids
    numbers = list(seg.segment_numbers)
    lut = np.zeros(max(numbers, default=0) + 1, dtype=np.uint16)
    for number in numbers:
        desc = seg.get_segment_description(number)
        tid = getattr(desc, "tracking_id", None) or ""
        lut[number] = int(tid.split()[-1]) if tid.startswith("label ") else number
    combined = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=numbers, combine_segments=True, relabel=False,
        ignore_spatial_locations=True, dtype=np.uint16,
    )
    out = lut[combined]
    return out
