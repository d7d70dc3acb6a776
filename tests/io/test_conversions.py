"""NIfTI (nibabel) and ITK (SimpleITK) conversions against each library's own index→world mapping.

Random oblique grids (Hypothesis): a voxel (k, j, i) of a Volume must land on the same point in
the converted image as the library computes it (nibabel's RAS affine on index (i, j, k);
SimpleITK's TransformIndexToPhysicalPoint), and every voxel value must follow its index.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.core.errors import FileFormatError, GeometryError
from medseg.core.geometry import make_affine
from medseg.io.itk import affine_from_sitk, volume_from_sitk, volume_to_sitk
from medseg.io.nifti import read_nifti, volume_from_nibabel, volume_to_nibabel, write_nifti
from medseg.core.volume import Volume

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
spacings = st.tuples(*(st.floats(0.2, 8.0) for _ in range(3)))
origins = st.tuples(*(st.floats(-300.0, 300.0) for _ in range(3)))
angles = st.tuples(*(st.floats(-np.pi, np.pi) for _ in range(3)))
shapes = st.tuples(st.integers(1, 5), st.integers(2, 6), st.integers(2, 7))


def rotation(a: float, b: float, c: float, flip: bool = False) -> np.ndarray:
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    r = rz @ ry @ rx
    return r @ np.diag([1, 1, -1]) if flip else r  # flip: a left-handed grid


def _volume(shape, spacing, origin, euler, flip, dtype=np.int16):
    arr = np.arange(np.prod(shape)).reshape(shape).astype(dtype)  # every voxel differs
    return Volume(arr, make_affine(spacing, origin, rotation(*euler, flip)))


def _indices(shape):
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return np.stack([k.ravel(), j.ravel(), i.ravel()], 1)


@SETTINGS
@given(shapes, spacings, origins, angles, st.booleans())
def test_nifti_voxels_land_where_nibabel_puts_them(shape, spacing, origin, euler, flip):
    vol = _volume(shape, spacing, origin, euler, flip)
    img = volume_to_nibabel(vol)
    data = np.asanyarray(img.dataobj)
    kji = _indices(shape)
    ijk = kji[:, ::-1]
    # nibabel: index (i, j, k) -> RAS; medseg: (k, j, i) -> LPS; RAS = (-x, -y, z) of LPS
    ras = nib.affines.apply_affine(img.affine, ijk)
    lps = vol.index_to_world(kji)
    # NIfTI stores sform/qform as float32: ~4e-5 mm resolution at 600 mm
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-4)
    np.testing.assert_array_equal(data[ijk[:, 0], ijk[:, 1], ijk[:, 2]], vol.array[kji[:, 0], kji[:, 1], kji[:, 2]])
    assert img.get_sform(coded=True)[1] == 1 and img.get_qform(coded=True)[1] == 1
    assert img.header.get_xyzt_units() == ("mm", "sec")
    back = volume_from_nibabel(img, {"k": 1})
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.meta == {"k": 1}


@SETTINGS
@given(shapes, spacings, origins, angles, st.booleans())
def test_itk_voxels_land_where_simpleitk_puts_them(shape, spacing, origin, euler, flip):
    vol = _volume(shape, spacing, origin, euler, flip, np.float32)
    img = volume_to_sitk(vol)
    assert img.GetSize() == shape[::-1]
    np.testing.assert_allclose(img.GetSpacing(), spacing[::-1], rtol=1e-9)
    for kji in ([0, 0, 0], [shape[0] - 1, 0, 1], [0, shape[1] - 1, shape[2] - 1], [shape[0] - 1, 1, 0]):
        ijk = tuple(int(v) for v in kji[::-1])
        np.testing.assert_allclose(img.TransformIndexToPhysicalPoint(ijk), vol.index_to_world(np.array([kji]))[0],
                                   atol=1e-6)
        assert img.GetPixel(ijk) == vol.array[tuple(kji)]
    back = volume_from_sitk(img, {"src": "x"})
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-9)
    np.testing.assert_allclose(affine_from_sitk(img), vol.affine, atol=1e-9)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.meta == {"src": "x"}


def test_multichannel_volumes_convert_with_channels_first():
    vol = _volume((3, 4, 5), (2.0, 1.0, 0.5), (1, 2, 3), (0.2, 0.1, -0.3), False, np.float32)
    mc = vol.with_array(np.stack([vol.array, -vol.array, 2 * vol.array]))
    img = volume_to_sitk(mc)
    assert img.GetNumberOfComponentsPerPixel() == 3 and img.GetSize() == (5, 4, 3)
    assert img.GetPixel(4, 1, 2) == (vol.array[2, 1, 4], -vol.array[2, 1, 4], 2 * vol.array[2, 1, 4])
    back = volume_from_sitk(img)
    np.testing.assert_array_equal(back.array, mc.array)
    nimg = volume_to_nibabel(mc)
    assert nimg.shape == (5, 4, 3, 3)
    assert np.asanyarray(nimg.dataobj)[4, 1, 2, 1] == -vol.array[2, 1, 4]
    np.testing.assert_array_equal(volume_from_nibabel(nimg).array, mc.array)
    single = nib.Nifti1Image(np.asanyarray(volume_to_nibabel(vol).dataobj)[..., None], nimg.affine)
    squeezed = volume_from_nibabel(single)  # a trailing channel axis of 1 is dropped
    assert squeezed.array.ndim == 3
    np.testing.assert_array_equal(squeezed.array, vol.array)


def test_itk_refuses_a_sheared_affine_and_non_3d_images():
    affine = make_affine((2.0, 1.0, 1.0))
    affine[:3, 0] += (0.0, 0.5, 0.0)  # tilted: slices step posteriorly
    with pytest.raises(GeometryError, match="sheared"):
        volume_to_sitk(Volume(np.zeros((3, 4, 5), np.float32), affine))
    ok = affine.copy()
    ok[:3, 0] = (0.0, 0.0, 2.0)
    ok[1, 0] += 1e-5  # rounding noise is not shear
    volume_to_sitk(Volume(np.zeros((3, 4, 5), np.float32), ok))
    with pytest.raises(ValueError, match="3D"):
        affine_from_sitk(sitk.Image(4, 4, sitk.sitkUInt8))


def test_nifti_bool_masks_are_written_as_uint8(tmp_path):
    mask = np.zeros((3, 4, 5), bool)
    mask[1, 2, 3] = True
    vol = Volume(mask, make_affine((2.0, 1.0, 1.0)))
    img = volume_to_nibabel(vol)
    assert img.get_data_dtype() == np.uint8
    write_nifti(vol, tmp_path / "m.nii.gz")
    back = read_nifti(tmp_path / "m.nii.gz")
    assert back.array.dtype == np.uint8 and back.array[1, 2, 3] == 1 and back.array.sum() == 1
    assert back.meta == {"source": str(tmp_path / "m.nii.gz"), "format": "nifti"}


def test_nifti_qform_only_file_uses_its_qform(tmp_path):
    vol = _volume((2, 3, 4), (3.0, 1.5, 0.7), (5, -6, 7), (0.4, -0.2, 0.1), False)
    img = volume_to_nibabel(vol)
    img.set_sform(None, code=0)
    nib.save(img, tmp_path / "q.nii")
    back = read_nifti(tmp_path / "q.nii")
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_nifti_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_nifti(tmp_path / "absent.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not gzip data")
    with pytest.raises(FileFormatError, match="cannot read as NIfTI"):
        read_nifti(tmp_path / "bad.nii.gz")
    five = nib.Nifti1Image(np.zeros((2, 2, 2, 2, 2), np.float32), np.eye(4))
    nib.save(five, tmp_path / "five.nii")
    with pytest.raises(FileFormatError, match="3D or 4D"):
        read_nifti(tmp_path / "five.nii")
    with pytest.raises(ValueError, match="3D or 4D"):
        volume_from_nibabel(nib.Nifti1Image(np.zeros((2, 2), np.float32), np.eye(4)))
