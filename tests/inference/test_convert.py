"""Geometry conversion point 2: Volume ⇄ MetaTensor, and preprocessing ⇄ its inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medseg.core.errors import GeometryError, InputError
from medseg.inference.convert import metatensor_to_volume, volume_to_metatensor
from medseg.inference.mapping import map_to_input_grid, preprocess_labels, preprocess_volume
from medseg.models import IntensityConfig, PreprocessingConfig
from medseg.core.volume import Volume

from .grids import KINDS, grid


def _linear_volume(kind, shape=(12, 20, 16), spacing=(4.0, 2.5, 3.0)):
    shape, affine = grid(kind, shape, spacing)
    kk, jj, ii = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    pts = np.stack([kk, jj, ii], -1).reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
    values = (pts @ np.array([1.0, 2.0, 3.0])).reshape(shape)  # f(LPS x, y, z)
    return Volume(values.astype(np.float32), affine)


@pytest.mark.parametrize("kind", KINDS)
def test_metatensor_round_trip(kind):
    vol = _linear_volume(kind)
    mt = volume_to_metatensor(vol)
    assert tuple(mt.shape) == (1, vol.shape[2], vol.shape[1], vol.shape[0])
    back = metatensor_to_volume(mt)
    assert back.same_grid(vol, atol=1e-9)
    np.testing.assert_array_equal(back.array, vol.array)


@pytest.mark.parametrize("kind", KINDS)
def test_metatensor_affine_is_ras_of_the_same_voxels(kind):
    vol = _linear_volume(kind)
    mt = volume_to_metatensor(vol)
    A = np.asarray(mt.affine)
    # voxel (i, j, k) of the tensor is voxel (k, j, i) of the volume, at RAS = (-x, -y, z)
    for k, j, i in [(0, 0, 0), (3, 7, 5), (11, 19, 15)]:
        lps = vol.index_to_world(np.array([[k, j, i]]))[0]
        ras = (A @ [i, j, k, 1])[:3]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-9)
        assert float(mt[0, i, j, k]) == pytest.approx(float(vol.array[k, j, i]))


def test_multichannel_and_errors():
    vol = _linear_volume("axial")
    two = Volume(np.stack([vol.array, -vol.array]), vol.affine)
    back = metatensor_to_volume(volume_to_metatensor(two))
    np.testing.assert_array_equal(back.array, two.array)
    with pytest.raises(GeometryError, match="plain tensor has no geometry"):
        metatensor_to_volume(torch.zeros(1, 2, 2, 2))
    with pytest.raises(GeometryError, match="channel-first"):
        metatensor_to_volume(MetaTensor(torch.zeros(2, 2, 2)))
    with pytest.raises(GeometryError, match="space must be RAS"):
        metatensor_to_volume(MetaTensor(torch.zeros(1, 2, 2, 2), meta={"space": "LPS"}))


@pytest.mark.parametrize("kind", KINDS)
def test_preprocessing_lands_on_world_positions_and_inverts(kind):
    """f(x, y, z) linear in LPS: resampling is exact, so both directions can be checked in mm."""
    vol = _linear_volume(kind)
    cfg = PreprocessingConfig(target_spacing=(3.0, 2.0, 2.5), orientation="RAS", intensity=IntensityConfig("none"))
    x = preprocess_volume(vol, cfg)
    model = metatensor_to_volume(x)
    np.testing.assert_allclose(model.spacing, (3.0, 2.0, 2.5), atol=1e-6)
    # interior model voxels hold f at their own world position
    kk, jj, ii = np.meshgrid(*(np.arange(2, s - 2) for s in model.shape), indexing="ij")
    idx = np.stack([kk, jj, ii], -1).reshape(-1, 3)
    world = model.index_to_world(idx)
    inside = np.all(np.abs(vol.world_to_index(world) - (np.asarray(vol.shape) - 1) / 2)
                    < (np.asarray(vol.shape) - 1) / 2 - 0.01, axis=1)
    expect = world @ np.array([1.0, 2.0, 3.0])
    got = model.array[tuple(idx.T)]
    np.testing.assert_allclose(got[inside], expect[inside], atol=1e-2)
    # and the inverse brings it back onto the input grid
    back = map_to_input_grid(x.as_tensor(), np.asarray(x.affine), vol, slice(0, vol.shape[0]))[0].numpy()
    assert back.shape == vol.shape
    core = (slice(2, -2),) * 3
    err = np.abs(back - vol.array)[core]
    assert np.median(err) < 0.05 and np.percentile(err, 90) < 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_labels_are_resampled_nearest(kind):
    vol = _linear_volume(kind)
    labels = Volume((np.arange(np.prod(vol.shape)) % 5).reshape(vol.shape).astype(np.uint8), vol.affine)
    cfg = PreprocessingConfig(target_spacing=(3.0, 2.0, 2.5))
    y = preprocess_labels(labels, cfg)
    assert set(np.unique(y.numpy())) <= {0, 1, 2, 3, 4}
    back = map_to_input_grid(y.as_tensor(), np.asarray(y.affine), labels, slice(0, 4), mode="nearest")
    assert set(np.unique(back.numpy())) <= {0, 1, 2, 3, 4}
    with pytest.raises(InputError, match="labels are never interpolated"):
        map_to_input_grid(y.as_tensor(), np.asarray(y.affine), labels, slice(0, 4), mode="bicubic")


@pytest.mark.parametrize("kind", ["axial", "flipped"])
def test_same_spacing_inverse_is_an_exact_copy(kind):
    """Orientation only (spacing kept): the inverse is the permutation/flip path, bit exact."""
    vol = _linear_volume(kind)
    cfg = PreprocessingConfig(target_spacing=(0.0, 0.0, 0.0), intensity=IntensityConfig("none"))
    x = preprocess_volume(vol, cfg)
    for zs in (slice(0, vol.shape[0]), slice(3, 7)):
        back = map_to_input_grid(x.as_tensor(), np.asarray(x.affine), vol, zs)[0].numpy()
        np.testing.assert_array_equal(back, vol.array[zs])
