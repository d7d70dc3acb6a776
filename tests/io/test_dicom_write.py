"""write_dicom_series: round trips through medseg and SimpleITK, validity, reproducibility."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from dicom_helpers import align_to, flipped_direction, oblique_direction, ramp_volume
from medseg.core.errors import GeometryError, InputError
from medseg.io.dicom import read_dicom
from medseg.io.dicom_write import choose_rescale, write_dicom_series
from medseg.core.volume import Volume

GRIDS = {"axial": None, "flipped": flipped_direction(), "oblique": oblique_direction()}


def _sitk_read(folder):
    import SimpleITK as sitk

    from medseg.io.itk import volume_from_sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return volume_from_sitk(reader.Execute())


@pytest.mark.parametrize("grid", GRIDS)
def test_round_trip_medseg_and_simpleitk(tmp_path, grid):
    vol = ramp_volume(shape=(7, 13, 11), direction=GRIDS[grid], spacing=(2.5, 0.9, 0.6))
    files = write_dicom_series(vol, tmp_path, seed=grid)
    assert len(files) == 7
    ours = read_dicom(tmp_path)
    theirs = _sitk_read(tmp_path)
    for back in (ours, theirs):
        np.testing.assert_array_equal(align_to(vol, back), vol.array)
    np.testing.assert_array_equal(ours.array, theirs.array)
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-4)
    if grid == "axial":  # stacking along +normal: the axial volume comes back index for index
        np.testing.assert_allclose(ours.affine, vol.affine, atol=1e-6)
        np.testing.assert_array_equal(ours.array, vol.array)


def test_float_volume_is_quantised_within_half_a_step(tmp_path):
    rng = np.random.default_rng(0)
    vol = Volume.from_spacing(rng.normal(0, 300, (3, 8, 9)).astype(np.float32), (3.0, 1.0, 1.0))
    slope, intercept = choose_rescale(vol.array)
    write_dicom_series(vol, tmp_path, modality="MR")
    back = read_dicom(tmp_path)
    assert back.array.dtype == np.float32 and back.meta["Modality"] == "MR"
    assert np.max(np.abs(back.array - vol.array)) <= slope / 2 + 1e-3


def test_rescale_choice_is_exact_for_hu():
    assert choose_rescale(np.array([-1024, 3000], dtype=np.int16)) == (1.0, -1024.0)
    assert choose_rescale(np.array([0, 32000], dtype=np.int16)) == (1.0, 0.0)


def test_same_seed_same_files_and_uids(tmp_path):
    vol = ramp_volume(shape=(3, 8, 8))
    a = write_dicom_series(vol, tmp_path / "a", seed=42)
    b = write_dicom_series(vol, tmp_path / "b", seed=42)
    c = write_dicom_series(vol, tmp_path / "c", seed=43)
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]
    da, dc = pydicom.dcmread(a[0]), pydicom.dcmread(c[0])
    assert da.SeriesInstanceUID != dc.SeriesInstanceUID and da.StudyInstanceUID != dc.StudyInstanceUID
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in a}
    assert len(uids) == 3
    assert da.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert da.SOPClassUID == pydicom.uid.CTImageStorage
    assert da.RescaleType == "HU" and float(da.RescaleIntercept) == -1024.0
    assert float(da.SliceThickness) == pytest.approx(2.0) and float(da.SpacingBetweenSlices) == pytest.approx(2.0)
    custom = write_dicom_series(vol, tmp_path / "d", seed=1, uid_prefix="1.2.3.")
    assert pydicom.dcmread(custom[0]).SeriesInstanceUID.startswith("1.2.3.")


def test_dciodvfy_finds_no_errors(tmp_path):
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    files = write_dicom_series(ramp_volume(shape=(2, 8, 8), direction=oblique_direction()), tmp_path)
    out = subprocess.run([exe, str(files[0])], capture_output=True, text=True, timeout=60)
    report = out.stdout + out.stderr
    assert "CTImage" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report


def test_writer_errors(tmp_path):
    vol = ramp_volume(shape=(2, 4, 4))
    with pytest.raises(InputError, match=r"needs a \(Z, Y, X\) volume"):
        write_dicom_series(Volume(np.zeros((2, 2, 4, 4)), vol.affine), tmp_path)
    with pytest.raises(InputError, match="modality must be one of"):
        write_dicom_series(vol, tmp_path, modality="PT")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="do not fit int16"):
        write_dicom_series(vol.with_array(vol.array.astype(np.float32) * 100), tmp_path, rescale=(1.0, 0.0))
    with pytest.raises(InputError, match="slope must be > 0"):
        write_dicom_series(vol, tmp_path, rescale=(0.0, 0.0))
    sheared = vol.affine.copy()
    sheared[:3, 1] += sheared[:3, 2]  # y axis leans towards x: pixels are not rectangles
    with pytest.raises(GeometryError, match="x and y axes are not orthogonal"):
        write_dicom_series(Volume(vol.array, sheared), tmp_path)


def test_non_empty_folder_needs_overwrite(tmp_path):
    write_dicom_series(ramp_volume(shape=(4, 8, 8)), tmp_path, seed=1)
    with pytest.raises(InputError, match="folder is not empty"):
        write_dicom_series(ramp_volume(shape=(2, 8, 8)), tmp_path, seed=2)
    write_dicom_series(ramp_volume(shape=(2, 8, 8)), tmp_path, seed=2, overwrite=True)
    assert len(list(tmp_path.glob("*.dcm"))) == 2  # no stale slice from the first series
    assert read_dicom(tmp_path).shape == (2, 8, 8)
