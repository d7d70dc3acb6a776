"""Round trips at conversion point 1: file ⇄ Volume ⇄ SimpleITK / nibabel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.core.errors import GeometryError
from medseg.core.geometry import make_affine, orientation_code
from medseg.io import read_volume, write_volume
from medseg.io.itk import volume_from_sitk, volume_to_sitk
from medseg.io.nifti import volume_from_nibabel, volume_to_nibabel
from medseg.core.volume import Volume


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


AXIAL = make_affine((2.5, 0.8, 0.7), (-100.0, -120.0, 30.0))
FLIPPED = make_affine((2.5, 0.8, 0.7), (10.0, 20.0, 30.0), np.array([[0, 0, -1], [0, -1, 0], [-1, 0, 0]], float))
OBLIQUE = make_affine((3.0, 1.1, 0.9), (5.0, -7.0, 11.0),
                      _rotation(np.array([1.0, 2.0, 0.5]), 0.4) @ np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float))
GRIDS = {"axial": AXIAL, "flipped": FLIPPED, "oblique": OBLIQUE}


@pytest.fixture(params=list(GRIDS))
def volume(request) -> Volume:
    rng = np.random.default_rng(1)
    return Volume(rng.integers(-1000, 2000, size=(7, 9, 11)).astype(np.int16), GRIDS[request.param])


def test_orientation_codes():
    assert orientation_code(AXIAL) == "SPL"
    assert orientation_code(FLIPPED) == "IAR"


def test_sitk_roundtrip(volume):
    image = volume_to_sitk(volume)
    assert image.GetSize() == volume.shape[::-1]
    # the same physical point through both libraries
    k, j, i = 3, 4, 5
    assert np.allclose(image.TransformIndexToPhysicalPoint((i, j, k)), volume.index_to_world(np.array([[k, j, i]]))[0])
    back = volume_from_sitk(image)
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.affine, volume.affine, atol=1e-9)


def test_nibabel_roundtrip(volume):
    img = volume_to_nibabel(volume)
    k, j, i = 3, 4, 5
    ras = nib.affines.apply_affine(img.affine, [i, j, k])
    lps = volume.index_to_world(np.array([[k, j, i]]))[0]
    assert np.allclose(ras, lps * [-1, -1, 1])
    assert np.asanyarray(img.dataobj)[i, j, k] == volume.array[k, j, i]
    back = volume_from_nibabel(img)
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.affine, volume.affine, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_file_roundtrip(volume, suffix, tmp_path):
    path = write_volume(volume, tmp_path / f"img{suffix}")
    back = read_volume(path)
    assert np.array_equal(back.array, volume.array)
    assert back.array.dtype == volume.array.dtype
    assert np.allclose(back.affine, volume.affine, atol=1e-4)
    assert not list(tmp_path.glob("*.partial*")), "temporary files left behind"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_files_agree_across_libraries(volume, suffix, tmp_path):
    """SimpleITK reading our file sees the same geometry (independent reader)."""
    path = write_volume(volume, tmp_path / f"img{suffix}")
    image = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(image), volume.array)
    assert np.allclose(image.GetOrigin(), volume.origin, atol=1e-4)
    assert np.allclose(image.TransformIndexToPhysicalPoint((5, 4, 3)),
                       volume.index_to_world(np.array([[3, 4, 5]]))[0], atol=1e-3)


def test_nifti_sform_preferred_over_qform(tmp_path):
    data = np.zeros((4, 5, 6), np.int16)
    sform = np.diag([2.0, 3.0, 4.0, 1.0])
    qform = np.diag([1.0, 1.0, 1.0, 1.0])
    img = nib.Nifti1Image(data, sform)
    img.set_sform(sform, code=2)
    img.set_qform(qform, code=1)
    nib.save(img, tmp_path / "a.nii.gz")
    vol = read_volume(tmp_path / "a.nii.gz")
    assert np.allclose(vol.spacing, (4.0, 3.0, 2.0))
    # only a qform: it is used
    img = nib.Nifti1Image(data, None)
    img.set_qform(np.diag([1.5, 1.5, 1.5, 1.0]), code=1)
    img.set_sform(np.eye(4), code=0)
    nib.save(img, tmp_path / "b.nii.gz")
    assert np.allclose(read_volume(tmp_path / "b.nii.gz").spacing, (1.5, 1.5, 1.5))


def test_sheared_affine_refused_by_itk():
    a = np.eye(4)
    a[0, 1] = 0.5
    with pytest.raises(GeometryError, match="sheared"):
        volume_to_sitk(Volume(np.zeros((2, 2, 2)), a))


def test_volume_requires_valid_affine():
    with pytest.raises(GeometryError, match="4x4"):
        Volume(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(GeometryError, match="singular"):
        Volume(np.zeros((2, 2, 2)), np.diag([1, 0, 1, 1]))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_header_only_grid_equals_the_read_volume(volume, suffix, tmp_path):
    """read_header (medseg info, memory checks) works out the grid without reading voxels: on
    axial, flipped and oblique volumes its shape, dtype and affine equal the full read's."""
    from medseg.io import read_header

    path = write_volume(volume, tmp_path / f"img{suffix}")
    head, full = read_header(path), read_volume(path)
    assert head.shape == full.shape == volume.shape
    assert head.array.dtype == full.array.dtype
    np.testing.assert_allclose(head.affine, full.affine, atol=1e-9)
    np.testing.assert_allclose(head.affine, volume.affine, atol=1e-4)
