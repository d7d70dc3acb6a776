"""Read one DICOM file's header (never its pixels) into plain records.

A file yields one :class:`FileRecord` (what the pixel reader needs: transfer syntax, pixel
layout, where the pixel data starts) and one :class:`ImageRecord` per 2D image it holds
(a classic single-frame file holds one; an enhanced multi-frame file one per frame, with the
per-frame functional groups resolved). Files that are not images are reported with a reason
by raising :class:`Skip`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, Optional

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

__all__ = ["FileRecord", "ImageRecord", "Skip", "read_header"]

_DEFLATED = "1.2.840.10008.1.2.1.99"
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_RAW_START = {b"\x02\x00", b"\x08\x00"}  # group 0002 or 0008, little endian: a file without preamble

# SOP classes that hold no image to segment, by UID prefix, with the reason shown to users.
_NON_IMAGE = [
    ("1.2.840.10008.1.3.10", "a DICOMDIR (media directory), not an image"),
    ("1.2.840.10008.5.1.4.1.1.88.59", "a Key Object Selection document, not an image"),
    ("1.2.840.10008.5.1.4.1.1.88.", "a Structured Report (SR), not an image"),
    ("1.2.840.10008.5.1.4.1.1.481.3", "an RT Structure Set (RTSTRUCT), not an image; "
     "it is an export target (medseg.export.write_rtstruct)"),
    ("1.2.840.10008.5.1.4.1.1.481.2", "an RT Dose grid, not an image to segment"),
    ("1.2.840.10008.5.1.4.1.1.481.", "an RT object (plan, treatment record or RT image), not a volume"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "a Segmentation (DICOM SEG), not an image; "
     "it is an export target (medseg.export.write_dicom_seg)"),
    ("1.2.840.10008.5.1.4.1.1.66", "a registration / raw-data / fiducials object, not an image"),
    ("1.2.840.10008.5.1.4.1.1.11.", "a presentation state, not an image"),
    ("1.2.840.10008.5.1.4.1.1.9.", "a waveform (ECG, audio, ...), not an image"),
    ("1.2.840.10008.5.1.4.1.1.104.", "an encapsulated document (PDF, CDA, STL, ...), not an image"),
    ("1.2.840.10008.5.1.4.1.1.67", "a real-world value map, not an image"),
    ("1.2.840.10008.5.1.4.1.1.68.", "a surface object, not an image"),
    ("1.2.840.10008.5.1.4.1.1.4.2", "an MR spectroscopy object, not an image"),
]


class Skip(Exception):
    """The file is not an image this reader loads; ``str(exc)`` is the reason."""


@dataclass
class FileRecord:
    """Pixel-level facts about one file (shared by all its frames)."""

    path: str
    transfer_syntax: str
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    frames: int
    little_endian: bool
    #: offset of the first pixel byte and the byte length of a native, undefined-length-free
    #: PixelData value; None where pydicom must decode (compressed, deflated, big endian).
    pixel_offset: Optional[int] = None
    pixel_length: Optional[int] = None
    modality_lut: bool = False
    #: SOPClassUID (from the file meta when the data set lacks it)
    sop_class: str = ""

    @property
    def fast(self) -> bool:
        """True when the pixel bytes can be read straight from disk (native little endian)."""
        return (
            self.pixel_offset is not None
            and self.little_endian
            and self.samples == 1
            and self.bits_allocated in (8, 16, 32)
            and not self.modality_lut
        )


@dataclass
class ImageRecord:
    """One 2D image of a series (a single-frame file or one frame of a multi-frame file)."""

    file: FileRecord
    frame: Optional[int]
    sop_uid: str
    position: Optional[tuple[float, float, float]]
    orientation: Optional[tuple[float, ...]]
    pixel_spacing: Optional[tuple[float, float]]
    slope: float
    intercept: float
    slice_thickness: Optional[float] = None
    spacing_between_slices: Optional[float] = None
    #: tags that tell apart images sharing a position (echoes, phases, acquisitions)
    distinguish: dict[str, Any] = field(default_factory=dict)
    #: ImagerPixelSpacing (projection radiographs: spacing at the detector), used only for a
    #: single 2D image without patient geometry
    imager_pixel_spacing: Optional[tuple[float, float]] = None


@dataclass
class SeriesTags:
    """The series-level tags medseg groups and describes series by."""

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    description: str
    series_number: Optional[int]
    patient_id: str
    patient_name: str


@dataclass
class HeaderInfo(SeriesTags):
    """Series-level tags of a file plus its images."""

    sop_class: str
    gantry_tilt: Optional[float]
    images: list[ImageRecord]
    file: FileRecord


def _floats(value: Any, n: int) -> Optional[tuple[float, ...]]:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _float(value: Any, default: Optional[float] = None) -> Optional[float]:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _first(ds: Optional[Dataset], seq: str) -> Optional[Dataset]:
    if ds is None:
        return None
    items = ds.get(seq)
    return items[0] if items else None


def _pixel_extent(fp: Any, ds: Dataset, size: int, ts: str) -> tuple[Optional[int], Optional[int]]:
    """Locate PixelData after a ``stop_before_pixels`` read; raise Skip if it is truncated.

    Returns ``(offset, length)`` of a native value, or ``(None, None)`` for encapsulated
    (compressed) or deflated data, whose fragments are walked to detect truncation.
    """
    if ts == _DEFLATED:
        return None, None
    start = fp.tell()
    implicit, little = ds.original_encoding
    if implicit is None:  # no encoding known (e.g. no meta and nothing parsed)
        return None, None
    endian = "<" if little else ">"
    head = fp.read(8)
    if len(head) < 8:
        raise Skip("truncated: the header ends before the pixel data")
    group, elem = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | elem) not in _PIXEL_TAGS:
        raise Skip("no pixel data (an image header without pixels)")
    if not implicit and not (head[4:6].isalpha() and head[4:6].isupper()):
        implicit = True  # the file says explicit VR but is encoded implicit (pydicom copes too)
    if implicit:
        (length,) = struct.unpack(endian + "I", head[4:8])
        offset = start + 8
    else:
        vr = head[4:6]
        if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN", b"OV"):
            more = fp.read(4)
            if len(more) < 4:
                raise Skip("truncated inside the pixel data header")
            (length,) = struct.unpack(endian + "I", more)
            offset = start + 12
        else:
            (length,) = struct.unpack(endian + "H", head[6:8])
            offset = start + 8
    if length == 0xFFFFFFFF:
        _walk_fragments(fp, offset, size)
        return None, None
    if offset + length > size:
        raise Skip(f"truncated: pixel data needs {length} bytes, the file holds {max(size - offset, 0)}")
    if (group << 16 | elem) != 0x7FE00010:  # float / double pixel data: let pydicom convert it
        return None, None
    return offset, length


def _walk_fragments(fp: Any, offset: int, size: int) -> None:
    """Follow encapsulated items to the sequence delimiter; raise Skip when the file ends first."""
    pos = offset
    fp.seek(pos)
    for _ in range(1_000_000):
        head = fp.read(8)
        if len(head) < 8:
            raise Skip("truncated: compressed pixel data ends before its last fragment")
        group, elem, length = struct.unpack("<HHI", head)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return
        if (group, elem) != (0xFFFE, 0xE000):
            raise Skip(f"corrupt compressed pixel data: unexpected item ({group:04X},{elem:04X}) at byte {pos}")
        pos += 8 + length
        if pos > size:
            raise Skip("truncated: compressed pixel data ends before its last fragment")
        fp.seek(pos)
    raise Skip("corrupt compressed pixel data: too many fragments")


def _looks_like_uid(value: Any) -> bool:
    s = str(value or "")
    return bool(s) and all(c.isdigit() or c == "." for c in s)


def read_header(path: str) -> HeaderInfo:
    """Parse one file's header. Raise :class:`Skip` with a reason for non-images."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise Skip(f"cannot open ({exc.strerror or exc})") from exc
    if size == 0:
        raise Skip("empty file")
    try:
        with open(path, "rb") as fp:
            pre = fp.read(132)
            has_preamble = len(pre) == 132 and pre[128:132] == b"DICM"
            if not has_preamble and (len(pre) < 8 or (pre[:2] not in _RAW_START and pre[:2][::-1] not in _RAW_START)):
                # never let pydicom's force mode parse an arbitrary (maybe huge) file as DICOM
                raise Skip("not a DICOM file (no 'DICM' marker and no DICOM tag at the start)")
            fp.seek(0)
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_preamble)
            if not has_preamble and not _looks_like_uid(ds.get("SOPClassUID")):
                raise Skip("not a DICOM file (no 'DICM' marker and no SOP Class UID)")
            meta = getattr(ds, "file_meta", None)
            ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
            if not ts:
                implicit, little = ds.original_encoding
                ts = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
            sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
            if not _looks_like_uid(sop_class) and "Rows" not in ds and "SOPInstanceUID" not in ds:
                raise Skip("not a DICOM file: a 'DICM' marker, but no DICOM data set after it "
                           "(no SOP Class UID, no image attributes)")
            for prefix, reason in _NON_IMAGE:
                if sop_class.startswith(prefix):
                    raise Skip(reason)
            if "Rows" not in ds or "Columns" not in ds:
                raise Skip(f"no image (SOP class {UID(sop_class).name if sop_class else 'unknown'} has no Rows/Columns)")
            offset, length = _pixel_extent(fp, ds, size, ts)
        # tags are decoded lazily: a corrupt value (unknown VR, bad length) raises here, not at dcmread
        return _records(path, ds, ts, sop_class, offset, length)
    except Skip:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Skip(f"unreadable DICOM header ({type(exc).__name__}: {text[:160]})") from exc


# -- fast tag access: decode the few tags we need straight from the raw bytes -------------------
# (pydicom's generic conversion with validation costs ~30 us per tag; a 300-slice series reads
# ~35 tags per file, so this halves the header scan)

def _text(ds: Dataset, tag: int) -> Optional[str]:
    e = ds.get_item(tag)
    if e is None:
        return None
    v = e.value
    if isinstance(e, RawDataElement):
        return "" if v is None else v.decode("latin-1").strip(" \x00")
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)


def _nums(ds: Dataset, tag: int, n: int) -> Optional[tuple[float, ...]]:
    t = _text(ds, tag)
    if not t:
        return None
    try:
        out = tuple(float(x) for x in t.split("\\"))
    except ValueError:
        return None
    return out if len(out) == n else None


def _num(ds: Dataset, tag: int, default: Optional[float] = None) -> Optional[float]:
    t = _text(ds, tag)
    if not t:
        return default
    try:
        return float(t.split("\\")[0])
    except ValueError:
        return default


def _ushort(ds: Dataset, tag: int, default: int) -> int:
    e = ds.get_item(tag)
    if e is None or e.value is None:
        return default
    if isinstance(e, RawDataElement):
        if len(e.value) < 2:
            return default
        return int.from_bytes(e.value[:2], "little" if e.is_little_endian else "big")
    v = e.value
    return int(v[0] if isinstance(v, (list, tuple)) else v)


_T = {  # tag numbers of the attributes read for every file
    "SeriesInstanceUID": 0x0020000E, "StudyInstanceUID": 0x0020000D, "FrameOfReferenceUID": 0x00200052,
    "SOPInstanceUID": 0x00080018, "Modality": 0x00080060, "SeriesNumber": 0x00200011, "PatientID": 0x00100020,
    "NumberOfFrames": 0x00280008, "Rows": 0x00280010, "Columns": 0x00280011, "SamplesPerPixel": 0x00280002,
    "BitsAllocated": 0x00280100, "BitsStored": 0x00280101, "PixelRepresentation": 0x00280103,
    "PhotometricInterpretation": 0x00280004, "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037, "PixelSpacing": 0x00280030, "RescaleSlope": 0x00281053,
    "RescaleIntercept": 0x00281052, "SliceThickness": 0x00180050, "SpacingBetweenSlices": 0x00180088,
    "GantryDetectorTilt": 0x00181120, "ImageType": 0x00080008, "ModalityLUTSequence": 0x00283000,
    "SharedFunctionalGroupsSequence": 0x52009229, "PerFrameFunctionalGroupsSequence": 0x52009230,
    "ImagerPixelSpacing": 0x00181164,
}
_DISTINGUISH = {"AcquisitionNumber": 0x00200012, "EchoNumbers": 0x00180086, "TemporalPositionIdentifier": 0x00200100,
                "TriggerTime": 0x00181060, "DiffusionBValue": 0x00189087, "ImageType": 0x00080008}


def _check_pixel_header(rec: FileRecord, native_length: Optional[int]) -> None:
    """Rows, Columns, NumberOfFrames, SamplesPerPixel and BitsAllocated: sane, consistent with the
    length of native pixel data, and within the memory limit (:mod:`medseg.io.limits`); else Skip."""
    from medseg.core.errors import ResourceLimitError
    from medseg.io.limits import check_declared_size

    if rec.rows <= 0 or rec.columns <= 0:
        raise Skip(f"no image: Rows x Columns is {rec.rows} x {rec.columns}")
    if rec.frames <= 0:
        raise Skip(f"no image: NumberOfFrames is {rec.frames}")
    if rec.bits_allocated not in (1, 8, 16, 32, 64):
        raise Skip(f"unsupported BitsAllocated {rec.bits_allocated} (expected 1, 8, 16, 32 or 64)")
    if not 0 < rec.bits_stored <= rec.bits_allocated:
        raise Skip(f"BitsStored {rec.bits_stored} does not fit BitsAllocated {rec.bits_allocated}; the header is corrupt")
    if rec.samples not in (1, 3, 4):
        raise Skip(f"unsupported SamplesPerPixel {rec.samples}")
    # (colour images are refused with their own reason before any pixel is read)
    if native_length is not None and rec.bits_allocated % 8 == 0 and rec.samples == 1:
        expected = rec.rows * rec.columns * rec.samples * rec.frames * rec.bits_allocated // 8
        if native_length < expected:
            raise Skip(f"Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated/8 = {rec.rows} x "
                       f"{rec.columns} x {rec.frames} x {rec.samples} x {rec.bits_allocated // 8} = {expected} bytes, "
                       f"but the pixel data holds {native_length}: the header or the file is corrupt")
    try:
        # held as float32 at most after rescaling (8 bytes when stored as 64-bit)
        check_declared_size(rec.path, (rec.frames, rec.rows, rec.columns, rec.samples),
                            max(4, rec.bits_allocated // 8),
                            fields="NumberOfFrames x Rows x Columns x SamplesPerPixel (as float32)")
    except ResourceLimitError as exc:
        raise Skip(exc.problem) from exc


def _records(path: str, ds: Dataset, ts: str, sop_class: str, offset: Optional[int],
             length: Optional[int]) -> HeaderInfo:
    """The file's :class:`FileRecord`, its images (per frame for enhanced multi-frame files)
    and its series-level tags."""
    rec = _file_record(path, ds, ts, sop_class, offset, length)
    meta = getattr(ds, "file_meta", None)
    sop_uid = _text(ds, _T["SOPInstanceUID"]) or (str(meta.get("MediaStorageSOPInstanceUID", "")) if meta else "")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") if ds.get_item(_T["PerFrameFunctionalGroupsSequence"]) \
        else None
    if per_frame is not None and len(per_frame) > 0:
        images = _enhanced_images(ds, rec, sop_uid, per_frame)
    else:
        images = _classic_images(ds, rec, sop_uid)
    sn = _num(ds, _T["SeriesNumber"])
    return HeaderInfo(
        series_uid=_text(ds, _T["SeriesInstanceUID"]) or "",
        study_uid=_text(ds, _T["StudyInstanceUID"]) or "",
        frame_of_reference_uid=_text(ds, _T["FrameOfReferenceUID"]) or "",
        modality=_text(ds, _T["Modality"]) or "",
        description=str(ds.get("SeriesDescription", "") or ""),  # charset-aware
        series_number=int(sn) if sn is not None else None,
        patient_id=str(ds.get("PatientID", "") or ""),
        patient_name=str(ds.get("PatientName", "") or ""),
        sop_class=sop_class,
        gantry_tilt=_num(ds, _T["GantryDetectorTilt"]),
        images=images,
        file=rec,
    )


def _file_record(path: str, ds: Dataset, ts: str, sop_class: str, offset: Optional[int],
                 length: Optional[int]) -> FileRecord:
    """Pixel layout of the file, checked (:func:`_check_pixel_header`); the direct pixel read is
    switched off where the native pixel data is shorter than the header says."""
    T = _T
    _, little = ds.original_encoding
    frames = int(_num(ds, T["NumberOfFrames"], 1) or 1)
    bits_allocated = _ushort(ds, T["BitsAllocated"], 16)
    rec = FileRecord(
        path=path,
        transfer_syntax=ts,
        rows=_ushort(ds, T["Rows"], 0),
        columns=_ushort(ds, T["Columns"], 0),
        samples=_ushort(ds, T["SamplesPerPixel"], 1),
        bits_allocated=bits_allocated,
        bits_stored=_ushort(ds, T["BitsStored"], bits_allocated),
        signed=_ushort(ds, T["PixelRepresentation"], 0) == 1,
        photometric=(_text(ds, T["PhotometricInterpretation"]) or "MONOCHROME2").strip(),
        frames=frames,
        little_endian=bool(little) and ts != "1.2.840.10008.1.2.2",
        pixel_offset=offset if ts in _NATIVE else None,
        pixel_length=length if ts in _NATIVE else None,
        modality_lut=ds.get_item(T["ModalityLUTSequence"]) is not None,
        sop_class=sop_class,
    )
    _check_pixel_header(rec, length if ts in _NATIVE else None)
    if rec.pixel_length is not None:
        expected = rec.rows * rec.columns * rec.samples * frames * rec.bits_allocated // 8
        if rec.bits_allocated % 8 or rec.pixel_length < expected:
            rec.pixel_offset = rec.pixel_length = None  # let pydicom decide (and explain)
    return rec


def _common_distinguish(ds: Dataset) -> dict[str, Any]:
    """The tags (present in the file) that tell apart images sharing a position."""
    return {k: v for k, tag in _DISTINGUISH.items() if (v := _text(ds, tag))}


def _enhanced_images(ds: Dataset, rec: FileRecord, sop_uid: str, per_frame: Any) -> list[ImageRecord]:
    """One image per frame of an enhanced multi-frame file, per-frame functional groups first,
    then the shared ones."""
    slope = _num(ds, _T["RescaleSlope"], 1.0) or 1.0
    intercept = _num(ds, _T["RescaleIntercept"], 0.0) or 0.0
    common_dist = _common_distinguish(ds)
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    images: list[ImageRecord] = []
    for f in range(rec.frames):
        pf = per_frame[f] if f < len(per_frame) else None

        def group(name: str) -> Optional[Dataset]:
            return _first(pf, name) or _first(shared, name)

        pos = group("PlanePositionSequence")
        ori = group("PlaneOrientationSequence")
        meas = group("PixelMeasuresSequence")
        pvt = group("PixelValueTransformationSequence")
        content = _first(pf, "FrameContentSequence")
        dist = dict(common_dist)
        if content is not None:
            for k in ("StackID", "TemporalPositionIndex", "DimensionIndexValues"):
                if content.get(k) not in (None, ""):
                    dist[k] = str(content.get(k))
        images.append(ImageRecord(
            file=rec, frame=f, sop_uid=sop_uid,
            position=_floats(pos.get("ImagePositionPatient") if pos else None, 3),  # type: ignore[arg-type]
            orientation=_floats(ori.get("ImageOrientationPatient") if ori else None, 6),  # type: ignore[arg-type]
            pixel_spacing=_floats(meas.get("PixelSpacing") if meas else None, 2),  # type: ignore[arg-type]
            slope=_float(pvt.get("RescaleSlope"), 1.0) or 1.0 if pvt else slope,
            intercept=_float(pvt.get("RescaleIntercept"), 0.0) or 0.0 if pvt else intercept,
            slice_thickness=_float(meas.get("SliceThickness") if meas else None),
            spacing_between_slices=_float(meas.get("SpacingBetweenSlices") if meas else None)
            or _num(ds, _T["SpacingBetweenSlices"]),
            distinguish=dist,
        ))
    return images


def _classic_images(ds: Dataset, rec: FileRecord, sop_uid: str) -> list[ImageRecord]:
    """The image(s) of a classic file: one, or one per frame without per-frame geometry (a
    legacy multi-frame file has one position for all frames)."""
    T = _T
    position = _nums(ds, T["ImagePositionPatient"], 3)
    common = dict(
        orientation=_nums(ds, T["ImageOrientationPatient"], 6), pixel_spacing=_nums(ds, T["PixelSpacing"], 2),
        slope=_num(ds, T["RescaleSlope"], 1.0) or 1.0, intercept=_num(ds, T["RescaleIntercept"], 0.0) or 0.0,
        slice_thickness=_num(ds, T["SliceThickness"]), spacing_between_slices=_num(ds, T["SpacingBetweenSlices"]),
        imager_pixel_spacing=_nums(ds, T["ImagerPixelSpacing"], 2),
    )
    common_dist = _common_distinguish(ds)
    multi = rec.frames > 1
    return [ImageRecord(file=rec, frame=f if multi else None, sop_uid=sop_uid,  # type: ignore[arg-type]
                        position=None if multi else position, distinguish=dict(common_dist), **common)
            for f in range(rec.frames)]
