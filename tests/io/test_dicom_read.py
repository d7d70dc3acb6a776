"""medseg.io.dicom on synthetic series: ordering, selection, bad input, tilt, gaps, multi-frame."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_helpers import align_to, flipped_direction, oblique_direction, ramp_volume, write_series
from medseg.core.errors import DicomError, MedsegError, SeriesSelectionError
from medseg.io import read_volume
from medseg.io.dicom import read_dicom, scan_dicom, select_series
from medseg.core.volume import Volume


def _edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


@pytest.fixture
def axial(tmp_path):
    vol = ramp_volume()
    files = write_series(vol, tmp_path / "axial", seed=1)
    return vol, tmp_path / "axial", files


# -- ordering and geometry -------------------------------------------------------------------

def test_order_by_position_not_filename_or_instance_number(axial, tmp_path):
    vol, folder, files = axial
    # scramble file names and InstanceNumber: the order must come from the positions only
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(files))
    moved = tmp_path / "scrambled" / "nested" / "deeper"
    moved.mkdir(parents=True)
    for new, old in zip(perm, files):
        ds = pydicom.dcmread(old)
        ds.InstanceNumber = int(new) + 100
        ds.save_as(moved / f"zz{new:03d}")
    out = read_dicom(tmp_path / "scrambled")
    np.testing.assert_array_equal(out.array, vol.array)
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-6)
    assert out.meta["files"] == [str(moved / f"zz{perm[k]:03d}") for k in range(len(files))]
    assert out.meta["warnings"] == []


def test_meta_and_dispatch_through_read_volume(axial):
    vol, folder, files = axial
    out = read_volume(folder)
    ds = pydicom.dcmread(files[0])
    assert out.meta["Modality"] == "CT"
    assert out.meta["SeriesInstanceUID"] == ds.SeriesInstanceUID
    assert out.meta["StudyInstanceUID"] == ds.StudyInstanceUID
    assert out.meta["FrameOfReferenceUID"] == ds.FrameOfReferenceUID
    assert out.meta["PatientID"] == ds.PatientID
    assert out.meta["sop_instance_uids"][0] == ds.SOPInstanceUID
    assert out.array.dtype == np.int16  # slope 1, intercept -1024: exact in int16
    # a single file loads on its own
    one = read_dicom(files[2])
    np.testing.assert_array_equal(one.array[0], vol.array[2])


def test_scan_reports_geometry_without_pixels(axial):
    vol, folder, _ = axial
    scan = scan_dicom(folder)
    (s,) = scan.series
    assert s.shape == vol.shape and s.orientation == vol.orientation
    np.testing.assert_allclose(s.spacing, vol.spacing, atol=1e-6)
    np.testing.assert_allclose(s.origin, vol.origin, atol=1e-6)
    assert s.summary()["n_images"] == vol.shape[0]


@pytest.mark.parametrize("kind", ["flipped", "oblique"])
def test_flipped_and_oblique_land_on_the_same_world_grid(tmp_path, kind):
    direction = flipped_direction() if kind == "flipped" else oblique_direction()
    vol = ramp_volume(direction=direction)
    write_series(vol, tmp_path / kind, seed=2)
    out = read_dicom(tmp_path / kind)
    np.testing.assert_array_equal(align_to(vol, out), vol.array)
    # slices are stacked along +normal (row x column): the z axis may be reversed, never x/y
    np.testing.assert_allclose(out.affine[:3, 1:3], vol.affine[:3, 1:3], atol=1e-6)


# -- gantry tilt, gaps, uneven spacing --------------------------------------------------------

def test_gantry_tilt_keeps_voxels_with_sheared_affine(tmp_path, caplog):
    vol = ramp_volume(shear=(0.0, 0.35, 0.0))  # slice centres step posteriorly: ~10 degree tilt
    write_series(vol, tmp_path / "tilt", seed=3)
    with caplog.at_level(logging.WARNING):
        out = read_dicom(tmp_path / "tilt")
    np.testing.assert_array_equal(out.array, vol.array)
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-6)
    assert out.meta["gantry_tilt_deg"] == pytest.approx(np.degrees(np.arctan(0.35 / 2.0)), abs=1e-3)
    assert any("gantry tilt" in w for w in out.meta["warnings"])
    assert "gantry tilt" in caplog.text


def test_missing_slice_is_reported_and_interpolated(axial, caplog):
    vol, folder, files = axial
    files[3].unlink()
    with caplog.at_level(logging.WARNING):
        out = read_dicom(folder)
    assert out.shape == vol.shape
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-6)
    for k in (0, 1, 2, 4, 5):
        np.testing.assert_array_equal(out.array[k], vol.array[k])
    expected = np.rint((vol.array[2].astype(float) + vol.array[4]) / 2)
    np.testing.assert_array_equal(out.array[3], expected)
    assert out.meta["interpolated_slices"] == [3]
    assert out.meta["files"][3] is None and out.meta["sop_instance_uids"][3] is None
    assert any("1 missing slice" in w for w in out.meta["warnings"])
    assert "missing slice" in caplog.text
    with pytest.raises(DicomError, match="irregular slice spacing.*strict=True"):
        read_dicom(folder, strict=True)


def test_uneven_spacing_is_resampled_with_a_warning(axial):
    vol, folder, files = axial
    ds = pydicom.dcmread(files[2])
    ds.ImagePositionPatient = [float(v) for v in vol.affine[:3, 3] + 2.6 * vol.affine[:3, 0]]
    ds.save_as(files[2])
    out = read_dicom(folder)
    assert any("uneven slice spacing" in w for w in out.meta["warnings"])
    np.testing.assert_allclose(out.spacing[0], 2.0, atol=0.05)
    np.testing.assert_array_equal(out.array[0], vol.array[0])
    with pytest.raises(DicomError, match="strict"):
        read_dicom(folder, strict=True)


# -- bad input --------------------------------------------------------------------------------

def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeriesSelectionError, match="no image series found.*no files"):
        read_dicom(tmp_path / "empty")


def test_non_dicom_file_is_skipped_with_reason(axial):
    vol, folder, _ = axial
    (folder / "notes.txt").write_text("not an image\n" * 50)
    (folder / "empty.dcm").write_bytes(b"")
    scan = scan_dicom(folder)
    reasons = {Path(s.path).name: s.reason for s in scan.skipped}
    assert "not a DICOM file" in reasons["notes.txt"]
    assert reasons["empty.dcm"] == "empty file"
    np.testing.assert_array_equal(read_dicom(folder).array, vol.array)
    with pytest.raises(SeriesSelectionError, match="notes.txt: not a DICOM file"):
        read_dicom(folder / "notes.txt")


def test_truncated_file_is_skipped_then_reported_as_missing(axial):
    vol, folder, files = axial
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 100])
    scan = scan_dicom(folder)
    assert [Path(s.path).name for s in scan.skipped] == [files[3].name]
    assert scan.skipped[0].reason.startswith("truncated")
    out = read_dicom(folder)
    assert any("missing slice" in w for w in out.meta["warnings"])
    files[2].write_bytes(files[2].read_bytes()[:300])  # cut inside the header
    with pytest.raises(SeriesSelectionError, match="unreadable DICOM header|truncated"):
        read_dicom(files[2])


def test_two_interleaved_series_in_one_folder(tmp_path):
    a = ramp_volume(shape=(6, 12, 10), seed=1)
    b = ramp_volume(shape=(4, 12, 10), seed=2, origin=(-10.0, 20.0, 7.0))
    fa = write_series(a, tmp_path / "a", seed="A", series_number=1)
    fb = write_series(b, tmp_path / "b", seed="B", series_number=2)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for n, f in enumerate(fa + fb):  # interleave names: a0, b0, a1, b1, ...
        shutil.copy(f, mixed / f"{(n % 6) * 2 + (n >= 6):03d}_{f.name}")
    scan = scan_dicom(mixed)
    assert len(scan.series) == 2
    uid_a = pydicom.dcmread(fa[0]).SeriesInstanceUID
    uid_b = pydicom.dcmread(fb[0]).SeriesInstanceUID
    assert select_series(scan).series_uid == uid_a  # the default: most images
    np.testing.assert_array_equal(read_dicom(mixed).array, a.array)
    np.testing.assert_array_equal(read_dicom(mixed, series_uid=uid_b).array, b.array)
    with pytest.raises(SeriesSelectionError, match=f"not found.*{uid_a}.*{uid_b}"):
        read_dicom(mixed, series_uid="1.2.3.4")


def test_two_acquisitions_sharing_one_series_uid_are_refused(tmp_path, axial):
    vol, folder, files = axial
    for k, f in enumerate(files):  # a second echo at the same positions, same SeriesInstanceUID
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
        ds.EchoNumbers = 2
        ds.save_as(folder / f"echo2_{k}.dcm")
    with pytest.raises(DicomError, match="share a position.*EchoNumbers"):
        read_dicom(folder)


def test_duplicate_copies_of_one_instance_are_dropped(axial):
    vol, folder, files = axial
    shutil.copy(files[1], folder / "copy_of_slice_2.dcm")
    out = read_dicom(folder)
    np.testing.assert_array_equal(out.array, vol.array)
    assert any("duplicate file" in w for w in out.meta["warnings"])


def test_inconsistent_rows_and_orientation(axial, tmp_path):
    vol, folder, files = axial
    _edit(files[1], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    with pytest.raises(DicomError, match="different ImageOrientationPatient"):
        read_dicom(folder)
    other = write_series(ramp_volume(shape=(2, 8, 10)), tmp_path / "small", seed=9)
    ds = pydicom.dcmread(other[0])
    ds.SeriesInstanceUID = pydicom.dcmread(files[0]).SeriesInstanceUID
    ds.save_as(folder / "small.dcm")
    with pytest.raises(DicomError, match=r"different sizes \(Rows, Columns\)"):
        read_dicom(folder)


def test_missing_geometry_and_spacing_are_named(axial):
    vol, folder, files = axial
    ds = pydicom.dcmread(files[0])
    del ds.PixelSpacing
    ds.save_as(files[0])
    with pytest.raises(DicomError, match="no PixelSpacing"):
        read_dicom(folder)
    del ds.ImagePositionPatient
    ds.save_as(files[0])
    with pytest.raises(DicomError, match="no patient geometry"):  # one image of a series lacks it
        read_dicom(folder)
    # alone, a 2D image without geometry loads as one slice on a stated, assumed grid (issue 18)
    one = read_dicom(files[0])
    assert one.shape == (1, ds.Rows, ds.Columns)
    assert any("without patient geometry" in w and "1 mm assumed" in w for w in one.meta["warnings"])


def test_non_image_objects_are_skipped(axial):
    vol, folder, files = axial
    for name, uid in [("sr.dcm", "1.2.840.10008.5.1.4.1.1.88.11"), ("rtstruct.dcm", "1.2.840.10008.5.1.4.1.1.481.3"),
                      ("seg.dcm", "1.2.840.10008.5.1.4.1.1.66.4"), ("pr.dcm", "1.2.840.10008.5.1.4.1.1.11.1")]:
        ds = pydicom.dcmread(files[0])
        ds.SOPClassUID = uid
        ds.file_meta.MediaStorageSOPClassUID = uid
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".9"
        ds.save_as(folder / name)
    scan = scan_dicom(folder)
    reasons = {Path(s.path).name: s.reason for s in scan.skipped}
    assert "Structured Report" in reasons["sr.dcm"]
    assert "RT Structure Set" in reasons["rtstruct.dcm"]
    assert "Segmentation (DICOM SEG)" in reasons["seg.dcm"]
    assert "presentation state" in reasons["pr.dcm"]
    assert len(scan.series) == 1


def test_monochrome1_keeps_modality_values(axial):
    vol, folder, files = axial
    for f in files:
        _edit(f, PhotometricInterpretation="MONOCHROME1")
    out = read_dicom(folder)
    np.testing.assert_array_equal(out.array, vol.array)
    assert out.meta["PhotometricInterpretation"] == "MONOCHROME1"
    assert any("MONOCHROME1" in w for w in out.meta["warnings"])


def test_colour_images_are_refused(axial):
    vol, folder, files = axial
    for f in files:
        _edit(f, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0)
    with pytest.raises(DicomError, match="colour image"):
        read_dicom(folder)


def test_float_rescale_and_bits_stored(axial, tmp_path):
    vol, folder, files = axial
    for f in files:
        _edit(f, RescaleSlope="0.5", RescaleIntercept="-3.25")
    out = read_dicom(folder)
    assert out.array.dtype == np.float32
    np.testing.assert_allclose(out.array, (vol.array.astype(float) + 1024) * 0.5 - 3.25, atol=1e-4)
    # 12 stored bits in 16 allocated, unsigned, junk in the high bits (overlay): masked away
    v2 = ramp_volume(shape=(2, 8, 8))
    g = write_series(v2, tmp_path / "bits", seed=5, rescale=(1.0, 0.0))
    for f in g:
        ds = pydicom.dcmread(f)
        stored = np.frombuffer(ds.PixelData, "<i2").astype(np.int32) + 1000
        ds.PixelData = ((stored & 0x0FFF) | 0x3000).astype("<u2").tobytes()
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.save_as(f)
    out2 = read_dicom(tmp_path / "bits")
    np.testing.assert_array_equal(out2.array, ((v2.array.astype(np.int32) + 1000) & 0x0FFF))
    for f in g:  # unsigned 12-bit CT with intercept -1024 (the usual scanner layout) -> int16 HU
        _edit(f, RescaleIntercept="-1024")
    out3 = read_dicom(tmp_path / "bits")
    assert out3.array.dtype == np.int16
    np.testing.assert_array_equal(out3.array, ((v2.array.astype(np.int32) + 1000) & 0x0FFF) - 1024)


def test_progress_and_cancel(axial):
    from medseg.core.errors import CancelledError

    vol, folder, _ = axial
    calls = []
    read_dicom(folder, progress=lambda d, t, m: calls.append((d, t, m)))
    assert any(m == "scanning DICOM headers" for _, _, m in calls)
    assert calls[-1][0] == calls[-1][1]
    with pytest.raises(CancelledError, match="cancelled"):
        read_dicom(folder, cancel=lambda: True)


def _break(folder: Path, how: str) -> None:
    files = sorted(folder.iterdir())
    if how == "empty":
        for f in files:
            f.unlink()
    elif how == "text":
        for f in files:
            f.write_text("not a DICOM file at all")
    elif how == "truncated":
        for f in files:
            f.write_bytes(f.read_bytes()[:-100])
    elif how == "no_geometry":
        for f in files:
            ds = pydicom.dcmread(f)
            del ds.ImagePositionPatient
            ds.save_as(f)
    elif how == "no_pixel_spacing":
        for f in files:
            ds = pydicom.dcmread(f)
            del ds.PixelSpacing
            ds.save_as(f)
    elif how == "mixed_sizes":
        ds = pydicom.dcmread(files[0])
        ds.Rows, ds.PixelData = ds.Rows - 2, ds.PixelData[: (ds.Rows - 2) * ds.Columns * 2]
        ds.save_as(files[0])
    elif how == "shared_position":
        _edit(files[1], ImagePositionPatient=pydicom.dcmread(files[0]).ImagePositionPatient)


@pytest.mark.parametrize("how, error, words", [
    ("empty", SeriesSelectionError, "no image series found"),
    ("text", SeriesSelectionError, "not a DICOM file"),
    ("truncated", SeriesSelectionError, "truncated"),
    ("no_geometry", DicomError, "no patient geometry"),
    ("no_pixel_spacing", DicomError, "no PixelSpacing"),
    ("mixed_sizes", DicomError, "different sizes"),
    ("shared_position", DicomError, "share a position"),
])
def test_every_failure_is_a_medseg_error(axial, how, error, words):
    """Each way a series can be unloadable raises its named medseg error (catchable as
    MedsegError and as the builtin a caller expects) naming the folder or file, the problem and a fix."""
    _, folder, _ = axial
    _break(folder, how)
    with pytest.raises(MedsegError) as info:
        read_dicom(folder)
    exc = info.value
    assert type(exc) is error, f"{how}: {type(exc).__name__}: {exc}"
    assert isinstance(exc, ValueError if error is SeriesSelectionError else OSError)
    message = str(exc)
    assert words in message and str(folder) in message and "Traceback" not in message
    assert len(message) > len(str(folder)) + 40  # problem and fix, not just the path


def test_absent_path_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        scan_dicom(tmp_path / "absent")


# -- enhanced multi-frame ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["axial", "oblique"])
def test_enhanced_multiframe_ct_matches_the_classic_series(tmp_path, kind):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.uid import generate_uid

    direction = None if kind == "axial" else oblique_direction()
    vol = ramp_volume(direction=direction)
    files = write_series(vol, tmp_path / "classic", seed=7)
    legacy = [pydicom.dcmread(f) for f in files]
    enhanced = LegacyConvertedEnhancedCTImage(legacy, generate_uid(), 5, generate_uid(), 1)
    # the rescale lives only in the functional groups (pydicom's apply_modality_lut misses it)
    assert "RescaleIntercept" not in enhanced
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "enhanced.dcm")
    out = read_dicom(tmp_path / "mf")
    np.testing.assert_array_equal(align_to(vol, out), vol.array)
    assert sorted(out.meta["frames"]) == list(range(vol.shape[0]))  # every frame once, in position order
    assert set(out.meta["files"]) == {str(tmp_path / "mf" / "enhanced.dcm")}
    classic = read_dicom(tmp_path / "classic")
    np.testing.assert_allclose(out.affine, classic.affine, atol=1e-5)


def test_too_many_missing_slices_are_refused(tmp_path):
    vol = ramp_volume(shape=(12, 8, 8))
    files = write_series(vol, tmp_path / "sparse", seed=8)
    for k in (3, 4, 5):
        files[k].unlink()
    with pytest.raises(DicomError, match="3 slices missing between 9 acquired ones: too sparse"):
        read_dicom(tmp_path / "sparse")


def test_file_without_preamble_or_meta_loads(axial, tmp_path):
    vol, folder, files = axial
    ds = pydicom.dcmread(files[1])
    del ds.file_meta
    ds.preamble = None
    raw = tmp_path / "raw_implicit"
    ds.save_as(raw, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert raw.read_bytes()[128:132] != b"DICM"
    out = read_dicom(raw)
    np.testing.assert_array_equal(out.array[0], vol.array[1])
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x1f\x8b" + bytes(5000))  # a gzip-like blob is rejected before parsing
    assert "no DICOM tag at the start" in scan_dicom(big).skipped[0].reason


def test_orthogonalize_resamples_a_tilted_volume(tmp_path):
    from medseg.io.dicom import orthogonalize
    from medseg.io.itk import volume_to_sitk

    vol = ramp_volume(shape=(7, 20, 18), shear=(0.0, 0.5, 0.0))
    write_series(vol, tmp_path / "tilt", seed=12)
    tilted = read_dicom(tmp_path / "tilt")
    with pytest.raises(MedsegError, match="sheared"):
        volume_to_sitk(tilted)  # ITK cannot store it: the reason to orthogonalize
    # a field linear in world coordinates is reproduced exactly by linear interpolation
    k, j, i = np.meshgrid(*(np.arange(n) for n in tilted.shape), indexing="ij")
    world = tilted.index_to_world(np.stack([k.ravel(), j.ravel(), i.ravel()], 1)).reshape(*tilted.shape, 3)
    field = (3 * world[..., 0] - 2 * world[..., 1] + world[..., 2]).astype(np.float32)
    ortho = orthogonalize(tilted.with_array(field), order=1)
    d = ortho.direction
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)
    volume_to_sitk(ortho)  # now representable
    tk, tj, ti = np.meshgrid(*(np.arange(n) for n in ortho.shape), indexing="ij")
    tw = ortho.index_to_world(np.stack([tk.ravel(), tj.ravel(), ti.ravel()], 1)).reshape(*ortho.shape, 3)
    expected = 3 * tw[..., 0] - 2 * tw[..., 1] + tw[..., 2]
    inside = (tj >= 3) & (tj <= ortho.shape[1] - 4)  # away from the edges shifted out of view
    np.testing.assert_allclose(ortho.array[inside], expected[inside], atol=1e-3)
    np.testing.assert_array_equal(ortho.array[3], field[3])  # the middle slice stays in place
    assert orthogonalize(ramp_volume()) is not None
    with pytest.raises(MedsegError, match=r"needs a \(Z, Y, X\) volume"):
        orthogonalize(tilted.with_array(np.stack([field, field])))
    skew = tilted.affine.copy()
    skew[:3, 1] += 0.3 * skew[:3, 2]
    with pytest.raises(MedsegError, match="y and x axes are not orthogonal"):
        orthogonalize(Volume(field, skew))


def test_blank_uids_from_deidentification(axial):
    vol, folder, files = axial
    for f in files:  # as the real series: SOP, Series and SOP class UIDs blanked in the dataset
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ""
        ds.SeriesInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(f)
    scan = scan_dicom(folder)
    (s,) = scan.series
    assert s.uid_missing and s.series_uid.startswith("nouid-") and s.n_images == vol.shape[0]
    out = read_dicom(folder, series_uid=s.series_uid)
    np.testing.assert_array_equal(out.array, vol.array)
    assert out.meta["SeriesInstanceUID"] == ""
    assert any("no SeriesInstanceUID" in w for w in scan.series[0].warnings)
    assert any("no SeriesInstanceUID" in w for w in out.meta["warnings"])
    assert out.meta["series_key"] == s.series_uid
    # what a caller holding meta["SeriesInstanceUID"] ("") passes back selects the same series
    np.testing.assert_array_equal(read_dicom(folder, series_uid="").array, vol.array)
    other = write_series(ramp_volume(shape=(2, 8, 8)), folder / "sub", seed=99)
    for f in other:
        _edit(f, SeriesInstanceUID="")
    with pytest.raises(SeriesSelectionError, match="2 series without SeriesInstanceUID"):
        read_dicom(folder, series_uid="")


def test_enhanced_multiframe_mr_with_float_rescale(tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedMRImage
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(1)
    vol = Volume(rng.normal(300, 80, (5, 10, 12)).astype(np.float32), ramp_volume(direction=flipped_direction()).affine)
    files = write_series(vol, tmp_path / "classic", seed=15, modality="MR")  # auto rescale: float slope
    slope = float(pydicom.dcmread(files[0]).RescaleSlope)
    enhanced = LegacyConvertedEnhancedMRImage([pydicom.dcmread(f) for f in files], generate_uid(), 5, generate_uid(), 1)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "mr.dcm")
    out = read_dicom(tmp_path / "mf")
    assert out.meta["Modality"] == "MR" and out.array.dtype == np.float32
    np.testing.assert_allclose(align_to(vol, out), vol.array, atol=slope / 2 + 1e-3)
