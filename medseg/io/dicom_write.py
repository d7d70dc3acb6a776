"""Write an image :class:`~medseg.core.volume.Volume` as a classic single-frame DICOM series.

One file per array slice ``z`` (``IM00001.dcm`` …), CT Image Storage (or MR Image Storage
for ``modality="MR"``), explicit VR little endian, signed 16-bit stored values with
RescaleSlope/Intercept. Geometry is written exactly from the affine: for slice ``k``,
ImagePositionPatient = ``affine @ (k, 0, 0, 1)``, ImageOrientationPatient = the unit ``x``
(row) and ``y`` (column) columns of the affine, PixelSpacing = ``(spacing_y, spacing_x)``,
SliceThickness/SpacingBetweenSlices = the distance between slice planes. A sheared affine (the
``k`` column not perpendicular to the slices, as read from a gantry-tilted CT) is written as
tilted slices too, so it round-trips through :func:`medseg.io.dicom.read_dicom`.

UIDs are derived from ``seed`` with :func:`pydicom.uid.generate_uid` (deterministic entropy),
and dates are fixed, so writing the same volume twice gives byte-identical files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import numpy as np

from medseg.core.errors import GeometryError, InputError
from medseg.core.geometry import spacing_of
from medseg.io.atomic import atomic_path
from medseg.core.progress import CancelCallback, ProgressCallback, StepProgress
from medseg.core.volume import Volume

__all__ = ["write_dicom_series", "choose_rescale"]

log = logging.getLogger(__name__)

_SOP = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_I16 = np.iinfo(np.int16)


def choose_rescale(array: np.ndarray, modality: str = "CT") -> tuple[float, float]:
    """Slope and intercept that store ``array`` in int16.

    Integer data whose range fits int16 after the shift is stored exactly: slope 1 and
    intercept -1024 for CT (the common scanner convention), 0 otherwise. Other data is mapped
    linearly onto the int16 range (quantisation step = range / 65535).
    """
    a = np.asarray(array)
    lo, hi = float(a.min()), float(a.max())
    integral = np.issubdtype(a.dtype, np.integer) or bool(np.all(np.mod(a, 1) == 0))
    intercept = -1024.0 if modality == "CT" else 0.0
    if integral and lo - intercept >= _I16.min and hi - intercept <= _I16.max:
        return 1.0, intercept
    if integral and lo >= _I16.min and hi <= _I16.max:
        return 1.0, 0.0
    slope = (hi - lo) / (_I16.max - _I16.min) if hi > lo else 1.0
    return slope, lo - _I16.min * slope


def _ds(value: float) -> str:
    """A DS string (max 16 chars) that keeps as much precision as fits."""
    for digits in range(12, 0, -1):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{value:.6g}"


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    patient_name: str = "ANONYMOUS^MEDSEG",
    patient_id: str = "MEDSEG",
    series_description: str = "medseg volume",
    study_description: str = "",
    modality: Literal["CT", "MR"] = "CT",
    seed: int | str = 0,
    uid_prefix: Optional[str] = None,
    rescale: tuple[float, float] | Literal["auto"] = "auto",
    series_number: int = 1,
    study_date: str = "20260101",
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> list[Path]:
    """Write ``volume`` as a DICOM series (one file per slice) into ``folder``.

    Parameters
    ----------
    volume : Volume
        ``(Z, Y, X)`` image; CT values in HU. The in-plane axes (y, x) must be orthogonal.
    folder : str or Path
        Output folder (created). It must be empty, unless ``overwrite`` is True, in which case
        the ``*.dcm`` files already in it are deleted first (a stale slice left behind would
        silently join the new series).
    patient_name, patient_id, series_description, study_description : str
        Written to the matching tags.
    modality : {'CT', 'MR'}
        Chooses CT Image Storage or MR Image Storage.
    seed : int or str
        Entropy for the Study/Series/FrameOfReference/SOP Instance UIDs: the same seed gives
        the same UIDs (and identical files).
    uid_prefix : str, optional
        UID root ending with '.', default pydicom's.
    rescale : (slope, intercept) or 'auto'
        How values become stored int16: ``stored = round((value - intercept) / slope)``.
        'auto' uses :func:`choose_rescale` (exact for integer HU).
    series_number : int
    study_date : str
        ``YYYYMMDD``; fixed by default so output is reproducible.
    overwrite : bool
        Replace the ``*.dcm`` files of a non-empty ``folder``.
    progress, cancel : callables, optional
        See :mod:`medseg.core.progress`.

    Returns
    -------
    list of Path
        The files written, in array z order.

    Raises
    ------
    InputError
        For a 4D volume, values that do not fit int16 with the given rescale, a bad modality,
        or a non-empty folder without ``overwrite``.
    GeometryError
        When the row and column axes of the affine are not orthogonal.
    """
    arr = volume.array
    slope, intercept = _checked_rescale(arr, modality, rescale)
    row, col, normal = _slice_axes(volume.affine)
    uid = _uid_maker(seed, uid_prefix)
    spec = _Series(
        modality=modality, study_uid=uid("study"), series_uid=uid("series", series_number),
        for_uid=uid("frame-of-reference"), series_number=series_number, patient_name=patient_name,
        patient_id=patient_id, series_description=series_description, study_description=study_description,
        study_date=study_date, slope=slope, intercept=intercept, affine=volume.affine, normal=normal,
        iop=[_ds(float(v)) for v in (*row, *col)])
    out = _prepare_folder(Path(folder), overwrite)
    steps = StepProgress(arr.shape[0], "writing DICOM series", progress=progress, cancel=cancel)
    written = [_write_slice(spec, k, arr, out, uid("instance", series_number, k), steps) for k in range(arr.shape[0])]
    log.info("wrote %d DICOM slices to %s (series %s)", len(written), out, spec.series_uid)
    return written


def _write_slice(spec: "_Series", k: int, arr: np.ndarray, out: Path, sop_uid: str, steps: StepProgress) -> Path:
    """Write slice ``k`` atomically as ``IM<k+1>.dcm`` (zero-padded to at least 5 digits)."""
    path = out / f"IM{k + 1:0{max(5, len(str(arr.shape[0])))}d}.dcm"
    with atomic_path(path) as tmp:
        _slice_dataset(spec, k, arr[k], sop_uid).save_as(tmp, enforce_file_format=True)
    steps.step()
    return path


@dataclass(frozen=True)
class _Series:
    """What every slice of one written series shares."""

    modality: str
    study_uid: str
    series_uid: str
    for_uid: str
    series_number: int
    patient_name: str
    patient_id: str
    series_description: str
    study_description: str
    study_date: str
    slope: float
    intercept: float
    affine: np.ndarray
    normal: np.ndarray
    iop: list


def _checked_rescale(arr: np.ndarray, modality: str, rescale: Any) -> tuple[float, float]:
    """(slope, intercept) from ``rescale`` (or :func:`choose_rescale`); InputError for a 4D
    array, an unknown modality, or values that do not fit int16 with them."""
    if arr.ndim != 3:
        raise InputError(f"write_dicom_series needs a (Z, Y, X) volume, got shape {arr.shape}; "
                         "write one channel at a time")
    if modality not in _SOP:
        raise InputError(f"modality must be one of {sorted(_SOP)}, got {modality!r}")
    slope, intercept = choose_rescale(arr, modality) if rescale == "auto" else (float(rescale[0]), float(rescale[1]))
    if slope <= 0:
        raise InputError(f"rescale slope must be > 0, got {slope}")
    lo, hi = float(arr.min()), float(arr.max())
    smin, smax = round((lo - intercept) / slope), round((hi - intercept) / slope)
    if smin < _I16.min or smax > _I16.max:
        raise InputError(f"values {lo}..{hi} do not fit int16 with slope {slope} and intercept {intercept} "
                         f"(stored {smin}..{smax}); use rescale='auto' or a larger slope")
    return slope, intercept


def _slice_axes(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row (x), column (y) and slice-normal LPS vectors of an affine; GeometryError unless
    the row and column axes are orthogonal."""
    row = a[:3, 2] / np.linalg.norm(a[:3, 2])
    col = a[:3, 1] / np.linalg.norm(a[:3, 1])
    if abs(float(row @ col)) > 1e-6:
        raise GeometryError("the volume's x and y axes are not orthogonal; DICOM slices need a rectangular "
                            "pixel grid: resample the volume first")
    return row, col, np.cross(row, col)


def _uid_maker(seed: int | str, uid_prefix: Optional[str]) -> Callable[..., str]:
    """UIDs derived from ``seed`` and what they name (deterministic)."""
    import pydicom
    from pydicom.uid import generate_uid

    def uid(*what: object) -> str:
        return generate_uid(prefix=uid_prefix or pydicom.uid.PYDICOM_ROOT_UID,
                            entropy_srcs=[str(seed), *(str(w) for w in what)])

    return uid


def _prepare_folder(out: Path, overwrite: bool) -> Path:
    """Create ``out``; refuse a non-empty one unless ``overwrite`` (then delete its ``*.dcm``)."""
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out}: folder is not empty; write a DICOM series into an empty folder "
                             "or pass overwrite=True to replace its .dcm files")
        for old in out.glob("*.dcm"):
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _slice_dataset(spec: _Series, k: int, pixels: np.ndarray, sop_uid: str) -> Any:
    """The data set of slice ``k``: identification, patient/study/series, plane, pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP[spec.modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDSEG_0_1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"] if spec.modality == "CT" else ["DERIVED", "SECONDARY", "OTHER"]
    ds.SOPClassUID = _SOP[spec.modality]
    ds.SOPInstanceUID = sop_uid
    _patient_study_series(ds, spec, k)
    _plane(ds, spec, k)
    _pixel_module(ds, spec, pixels)
    return ds


def _patient_study_series(ds: Any, spec: _Series, k: int) -> None:
    """Patient, study, series, equipment and the modality's required acquisition attributes."""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = spec.modality
    ds.Manufacturer = "medseg"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = spec.study_description
    ds.SeriesDescription = spec.series_description
    ds.Laterality = ""
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    if spec.modality == "CT":
        ds.KVP = ""
    else:
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.EchoTime = ""
        ds.RepetitionTime = ""
        ds.EchoTrainLength = ""
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = spec.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1


def _plane(ds: Any, spec: _Series, k: int) -> None:
    """Image Plane of slice ``k``, exactly from the affine (see the module docstring)."""
    a = spec.affine
    slice_gap = abs(float(a[:3, 0] @ spec.normal))  # > 0: the Volume's affine is never singular
    _, spacing_y, spacing_x = spacing_of(a)
    ds.SliceThickness = _ds(slice_gap)
    ds.SpacingBetweenSlices = _ds(slice_gap)
    position = a[:3, 3] + k * a[:3, 0]
    ds.ImagePositionPatient = [_ds(float(v)) for v in position]
    ds.ImageOrientationPatient = spec.iop
    ds.FrameOfReferenceUID = spec.for_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(float(position @ spec.normal))
    ds.PixelSpacing = [_ds(spacing_y), _ds(spacing_x)]


def _pixel_module(ds: Any, spec: _Series, pixels: np.ndarray) -> None:
    """Signed 16-bit stored values with RescaleSlope/Intercept."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(spec.intercept)
    ds.RescaleSlope = _ds(spec.slope)
    if spec.modality == "CT":
        ds.RescaleType = "HU"
    stored = np.rint((pixels.astype(np.float64) - spec.intercept) / spec.slope).astype("<i2")
    ds.PixelData = stored.tobytes()
