"""The real CT series (JPEG 2000 lossless) loads exactly as SimpleITK and dcm2niix load it."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from dicom_helpers import align_to
from medseg.core.geometry import LPS_TO_RAS, reverse_axes
from medseg.io.dicom import read_dicom, scan_dicom
from medseg.core.volume import Volume

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def real_ct(real_data):
    folder = real_data / "ct_dicom_series"
    return folder, read_dicom(folder)


def test_real_series_scan(real_ct):
    folder, vol = real_ct
    scan = scan_dicom(folder)
    assert len(scan.series) == 1 and not scan.skipped
    s = scan.series[0]
    assert s.modality == "CT" and s.n_images == 20 and s.shape == (20, 512, 512)
    # de-identified: SeriesInstanceUID is blank, so files are grouped by a documented fallback key
    assert s.uid_missing and s.series_uid.startswith("nouid-")
    assert s.problem is None


def test_real_series_matches_simpleitk(real_ct):
    import SimpleITK as sitk

    from medseg.io.itk import volume_from_sitk

    folder, vol = real_ct
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    ref = volume_from_sitk(reader.Execute())
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, ref.array)  # HU, voxel for voxel
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-3)
    assert vol.shape == (20, 512, 512)
    np.testing.assert_allclose(vol.spacing, (2.0, 0.9765625, 0.9765625), atol=1e-6)  # not SliceThickness (3)
    assert int(vol.array.min()) == -1024


def _dcm2niix() -> str:
    exe = shutil.which("dcm2niix")
    if exe is None:
        msg = "dcm2niix not installed (apt-get install dcm2niix)"
        if os.environ.get("MEDSEG_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg + "; CI installs it")
        pytest.skip(msg)
    return exe


def test_real_series_matches_dcm2niix(real_ct, tmp_path):
    import nibabel as nib

    folder, vol = real_ct
    subprocess.run([_dcm2niix(), "-z", "n", "-b", "n", "-f", "ct", "-o", str(tmp_path), str(folder)],
                   check=True, capture_output=True, timeout=120)
    img = nib.load(str(tmp_path / "ct.nii"))
    # documented conversion: NIfTI's affine maps (i, j, k) to RAS; LPS = diag(-1, -1, 1) @ RAS,
    # and array order (k, j, i) is the transposed array with the affine's columns reversed
    affine_lps = reverse_axes(LPS_TO_RAS @ img.affine)
    data = np.asarray(img.dataobj)
    slope, inter = img.header.get_slope_inter()
    values = data * (slope if slope else 1.0) + (inter if inter else 0.0)
    ref = Volume(values.transpose(2, 1, 0), affine_lps, {})
    # dcm2niix stores the rows flipped (y towards anterior): same grid up to that flip
    np.testing.assert_array_equal(align_to(ref, vol), ref.array)
    flip_y = np.eye(4)
    flip_y[1, 1], flip_y[1, 3] = -1, vol.shape[1] - 1
    np.testing.assert_allclose(vol.affine @ flip_y, ref.affine, atol=1e-3)
