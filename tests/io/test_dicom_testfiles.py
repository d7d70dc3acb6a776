"""pydicom's and pydicom-data's test files: each loads or fails with a named medseg error.

Compressed transfer syntaxes are checked voxel for voxel against their uncompressed twins
(JPEG 2000, JPEG-LS, RLE, JPEG lossless, big endian), and enhanced multi-frame objects against
the classic series they were converted from, in several transfer syntaxes.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from dicom_helpers import align_to, oblique_direction, ramp_volume, write_series
from medseg.core.errors import DicomError, MedsegError, SeriesSelectionError
from medseg.io.dicom import read_dicom

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ALL_FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))


def _name(path: str) -> str:
    return path.split("site-packages/")[-1]


def test_both_collections_are_present():
    names = {os.path.basename(f) for f in ALL_FILES}
    # pydicom's own files and pydicom-data's compressed-syntax files
    assert {"CT_small.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "693_J2KR.dcm"} <= names


# Files medseg refuses for a reason pydicom cannot confirm on its own (see _independent_refusal):
# name -> the words medseg's message must contain and why that refusal is right.
KNOWN_REFUSALS: dict[str, tuple[str, str]] = {}

_NOT_IMAGE_WORDS = ("not an image", "not a volume", "DICOMDIR")


def _independent_refusal(path: str, message: str) -> str | None:
    """Why pydicom (not medseg) agrees that this file is no loadable 3D image, or None.

    Checks the fact behind each kind of medseg refusal: not DICOM at all, a non-image object
    (SOP class, DICOMDIR), no Rows/Columns, no patient geometry, pixel data that cannot be decoded.
    """
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        if "not a DICOM file" in message:  # no preamble and no DICOM tag at its start
            try:
                bare = pydicom.dcmread(path, force=True)
            except Exception:  # noqa: BLE001 - not parseable at all: agreed
                return "not a DICOM file"
            return None if ("Rows" in bare and "SOPClassUID" in bare) else "not a DICOM file"
        ds = pydicom.dcmread(path, force=True)  # no preamble: a bare data set, as medseg reads it
    except Exception as exc:  # noqa: BLE001 - pydicom cannot parse it either
        return f"pydicom cannot read it: {type(exc).__name__}"
    sop = str(ds.get("SOPClassUID", ""))
    sop_name = pydicom.uid.UID(sop).name if sop else ""
    if "DirectoryRecordSequence" in ds:
        return "DICOMDIR" if "DICOMDIR" in message else None
    if sop and "Image Storage" not in sop_name or sop_name == "RT Image Storage":
        return f"non-image SOP class {sop_name}" if any(w in message for w in _NOT_IMAGE_WORDS) else None
    if "Rows" not in ds or "Columns" not in ds or "PixelData" not in ds:
        return "no Rows/Columns/PixelData" if "no image" in message else None
    if "colour image" in message:
        photometric = str(ds.get("PhotometricInterpretation", ""))
        colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1 or photometric == "PALETTE COLOR"
        return f"colour ({photometric})" if colour else None
    if "no patient geometry" in message:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        has_frame_pos = bool(per_frame) and "PlanePositionSequence" in per_frame[0]
        if ("ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds) and not has_frame_pos:
            return "no ImagePositionPatient/ImageOrientationPatient"
        return None
    if "truncated" in message or "cannot decode the pixel data" in message:
        try:
            ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - the point: pydicom cannot decode it either
            return f"pydicom cannot decode its pixels: {type(exc).__name__}"
        return None
    return None


def _reference(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of one file from pydicom alone: pixel array with the modality rescale,
    frames ordered along the slice normal, affine from IPP/IOP/PixelSpacing (LPS, k/j/i columns)."""
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    arr = ds.pixel_array.reshape(frames, ds.Rows, ds.Columns)
    if frames > 1:
        shared = ds.SharedFunctionalGroupsSequence[0]
        per = ds.PerFrameFunctionalGroupsSequence
        iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        ps = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float)
        pos = np.array([f.PlanePositionSequence[0].ImagePositionPatient for f in per], float)
        pvt = shared.PixelValueTransformationSequence[0]
        values = arr * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
    elif "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds:
        iop = np.array(ds.ImageOrientationPatient, float)
        ps = np.array(ds.PixelSpacing, float)
        pos = np.array([ds.ImagePositionPatient], float)
        values = apply_modality_lut(arr, ds)
    else:  # one 2D image without patient geometry: the assumed grid medseg states in its warning
        iop = np.array([1.0, 0, 0, 0, 1, 0])
        pairs = [np.array(ds.get(k) or [0, 0], float) for k in ("PixelSpacing", "ImagerPixelSpacing")]
        ps = next((p for p in pairs if p.size == 2 and (p > 0).all()), np.ones(2))  # first valid pair
        pos = np.zeros((1, 3))
        values = apply_modality_lut(arr, ds)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    order = np.argsort(pos @ normal, kind="stable")
    values, pos = values[order], pos[order]
    if frames > 1:
        step = (pos[-1] - pos[0]) / (frames - 1)
    else:
        step = normal * float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = step, col * ps[0], row * ps[1], pos[0]
    return values, affine


@pytest.mark.parametrize("path", ALL_FILES, ids=_name)
def test_loads_or_fails_with_a_named_reason(path):
    """Every file that loads equals pydicom's own reading voxel for voxel and in geometry; every
    file refused is refused for a reason pydicom confirms (or is listed in KNOWN_REFUSALS)."""
    name = os.path.basename(path)
    try:
        vol = read_dicom(path)
    except (DicomError, SeriesSelectionError) as exc:
        message = str(exc)
        assert len(message) > 30 and "Traceback" not in message
        if name in KNOWN_REFUSALS:
            assert KNOWN_REFUSALS[name][0] in message
            return
        why = _independent_refusal(path, message)
        assert why is not None, f"{name}: a valid image refused: {message}"
        return
    assert name not in KNOWN_REFUSALS, f"{name} now loads: remove it from KNOWN_REFUSALS"
    assert vol.meta["files"] and vol.meta["SeriesInstanceUID"] is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, affine = _reference(path)
        if "ImageOrientationPatient" not in pydicom.dcmread(path, stop_before_pixels=True) \
                and int(getattr(vol, "shape", (0,))[0]) == 1 and "NumberOfFrames" not in pydicom.dcmread(
                    path, stop_before_pixels=True):
            assert any("without patient geometry" in w for w in vol.meta["warnings"]), name
    assert vol.shape == ref.shape
    np.testing.assert_allclose(vol.array, ref, rtol=1e-6, atol=1e-6, err_msg=name)
    if np.issubdtype(vol.array.dtype, np.integer):
        np.testing.assert_array_equal(vol.array, ref, err_msg=name)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4, err_msg=name)


def _read(name: str):
    return read_dicom(get_testdata_file(name))


@pytest.mark.parametrize("compressed, reference", [
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),      # JPEG 2000 lossless
    ("693_J2KR.dcm", "693_UNCR.dcm"),                   # JPEG 2000 lossless (pydicom-data)
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),                   # JPEG 2000 lossless, 1024^2, float rescale
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless
    ("MR_small_RLE.dcm", "MR_small.dcm"),               # RLE lossless
    ("MR_small_bigendian.dcm", "MR_small.dcm"),         # explicit VR big endian
    ("MR_small_expb.dcm", "MR_small.dcm"),
    ("MR_small_implicit.dcm", "MR_small.dcm"),          # implicit VR little endian
])
def test_compressed_and_big_endian_match_uncompressed(compressed, reference):
    a, b = _read(compressed), _read(reference)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)


def test_lossy_jpeg2000_decodes_close_to_the_original():
    a, b = _read("693_J2KI.dcm"), _read("693_UNCI.dcm")
    assert np.mean(np.abs(a.array.astype(float) - b.array)) < 5.0  # HU; lossy


def test_jpeg_lossless_ct_decodes_to_hu():
    vol = _read("bad_sequence.dcm")  # CT, JPEG lossless process 14
    assert vol.meta["Modality"] == "CT" and vol.array.dtype == np.int16 and vol.array.min() < -500


def test_matches_simpleitk_on_single_files():
    import SimpleITK as sitk

    from medseg.io.itk import volume_from_sitk

    for name in ("CT_small.dcm", "MR_small.dcm", "693_J2KR.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"):
        ours = _read(name)
        ref = volume_from_sitk(sitk.ReadImage(get_testdata_file(name)))
        np.testing.assert_array_equal(ours.array, ref.array.reshape(ours.shape), err_msg=name)
        np.testing.assert_allclose(ours.affine[:3, 1:], ref.affine[:3, 1:], atol=1e-4, err_msg=name)


def test_enhanced_ct_rescale_comes_from_functional_groups():
    path = get_testdata_file("eCT_Supplemental.dcm")
    vol = read_dicom(path)
    ds = pydicom.dcmread(path)
    assert "RescaleIntercept" not in ds  # only in SharedFunctionalGroups/PixelValueTransformation
    assert vol.shape == (2, 512, 512)
    np.testing.assert_allclose(vol.spacing, (10.0, 0.388672, 0.388672), atol=1e-6)
    # IOP rows run to patient right: normal = row x column points inferior, so the frame at
    # z = -149 mm comes first in array order
    assert vol.meta["frames"] == [1, 0]
    np.testing.assert_allclose(vol.affine[:3, 3], [99.5, -301.5, -149.0], atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 0], [0, 0, -10.0], atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 2], [-0.388672, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(vol.array, ds.pixel_array[[1, 0]].astype(np.int32) - 1024)


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"])
def test_enhanced_mr_without_functional_groups_is_named(name):
    # these test files had their functional groups stripped: no per-frame positions exist
    with pytest.raises(DicomError, match="no patient geometry: a multi-frame file without per-frame positions"):
        _read(name)


def test_truncated_and_non_image_files_are_named():
    with pytest.raises(SeriesSelectionError, match="truncated"):
        _read("MR_truncated.dcm")
    with pytest.raises(SeriesSelectionError, match="truncated: compressed pixel data"):
        _read("emri_small_jpeg_2k_lossless_too_short.dcm")
    with pytest.raises(SeriesSelectionError, match="Structured Report"):
        _read("test-SR.dcm")
    with pytest.raises(SeriesSelectionError, match="RT Structure Set"):
        _read("rtstruct.dcm")
    with pytest.raises(SeriesSelectionError, match=r"Segmentation \(DICOM SEG\)"):
        _read("liver.dcm")
    with pytest.raises(SeriesSelectionError, match="not a DICOM file"):
        _read("README.txt")
    # a single 2D image without geometry loads as one slice (issue 18), but this one is colour
    with pytest.raises(DicomError, match="colour image"):
        _read("SC_rgb_rle.dcm")


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90",
                                    "1.2.840.10008.1.2.4.80"])
def test_enhanced_multiframe_in_compressed_syntaxes(tmp_path, syntax):
    """Enhanced CT (per-frame positions, shared rescale) in RLE / JPEG 2000 / JPEG-LS lossless."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.uid import generate_uid

    vol = ramp_volume(shape=(4, 36, 34), direction=oblique_direction(), seed=4)
    files = write_series(vol, tmp_path / "classic", seed=11)
    legacy = [pydicom.dcmread(f) for f in files]
    for ds in legacy:  # stored values (HU + 1024) are all >= 0: re-declare them unsigned for the codecs
        assert np.frombuffer(ds.PixelData, "<i2").min() >= 0
        ds.PixelRepresentation = 0
    enhanced = LegacyConvertedEnhancedCTImage(legacy, generate_uid(), 3, generate_uid(), 1,
                                              transfer_syntax_uid=syntax)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "ct.dcm")
    out = read_dicom(tmp_path / "mf")
    np.testing.assert_array_equal(align_to(vol, out), vol.array)
    assert str(pydicom.dcmread(tmp_path / "mf" / "ct.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax


@pytest.mark.parametrize("name, error", [
    ("MR_truncated.dcm", SeriesSelectionError), ("rtstruct.dcm", SeriesSelectionError),
    ("README.txt", SeriesSelectionError), ("SC_rgb_rle.dcm", DicomError), ("emri_small.dcm", DicomError),
])
def test_errors_are_medseg_errors(name, error):
    """Refusals of real test files are medseg errors of the named kind (not a pydicom, numpy or
    codec exception leaking through) and name the file."""
    with pytest.raises(MedsegError) as info:
        _read(name)
    assert type(info.value) is error and name in str(info.value)


def _to_big_endian(ds: pydicom.Dataset, path) -> None:
    ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)


@pytest.mark.parametrize("layout", ["classic", "enhanced"])
def test_big_endian_series(tmp_path, layout):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.uid import generate_uid

    vol = ramp_volume(shape=(4, 10, 9), direction=oblique_direction(), seed=6)
    files = write_series(vol, tmp_path / "le", seed=13)
    (tmp_path / "be").mkdir()
    if layout == "classic":
        for f in files:
            _to_big_endian(pydicom.dcmread(f), tmp_path / "be" / f.name)
    else:
        mf = LegacyConvertedEnhancedCTImage([pydicom.dcmread(f) for f in files], generate_uid(), 3, generate_uid(), 1)
        _to_big_endian(mf, tmp_path / "be" / "mf.dcm")
    out = read_dicom(tmp_path / "be")
    assert {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for f in (tmp_path / "be").iterdir()} == {pydicom.uid.ExplicitVRBigEndian}
    np.testing.assert_array_equal(align_to(vol, out), vol.array)


def test_jpeg_baseline_enhanced_ct(tmp_path):
    """8-bit JPEG baseline (lossy) frames with per-frame geometry: decoded, rescaled, close."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    vol = ramp_volume(shape=(3, 40, 36), seed=3)
    legacy = []
    for f in write_series(vol, tmp_path / "classic", seed=14):
        ds = pydicom.dcmread(f)
        stored = np.frombuffer(ds.PixelData, "<i2").astype(np.int32)
        ds.PixelData = ((stored // 16) % 256).astype(np.uint8).tobytes()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        legacy.append(ds)
    mf = LegacyConvertedEnhancedCTImage(legacy, generate_uid(), 3, generate_uid(), 1,
                                        transfer_syntax_uid=JPEGBaseline8Bit)
    (tmp_path / "jpeg").mkdir()
    mf.save_as(tmp_path / "jpeg" / "ct.dcm")
    out = read_dicom(tmp_path / "jpeg")
    expected = np.stack([np.frombuffer(ds.PixelData, np.uint8).reshape(40, 36) for ds in legacy]).astype(float) - 1024
    assert out.array.dtype == np.int16
    assert np.mean(np.abs(out.array - expected)) < 2.0  # lossy, but the right frames in the right place
