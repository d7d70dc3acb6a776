"""The resampled class-map path: regions gathered into slabs and sampled onto the input grid give the
whole-volume path's class map; memory-lean preprocessing gives the same values."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import ScaleIntensityRange

from medseg.core.errors import InputError
from medseg.inference import segment
from medseg.inference.postprocess import postprocess_label_map
from medseg.inference.mapping import SlabArgmax, map_to_input_grid, preprocess_volume, spatial_transforms
from medseg.inference.merger import argmax_channels, sliding_window, tile_order
from medseg.inference.segment import _label_map
from medseg.models import load_model
from medseg.models.config import IntensityConfig, PreprocessingConfig
from medseg.inference.convert import volume_to_metatensor
from medseg.samples.phantom import make_phantom
from medseg.core.volume import Volume

from .grids import grid


def _net(out_channels=4):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(6, out_channels, 3, padding=1)).eval()


@pytest.mark.parametrize("kind, axis", [("axial", 0), ("flipped", 1), ("oblique", 2), ("oblique", 0)])
def test_slab_argmax_from_regions_in_any_order_is_the_whole_inverse(kind, axis):
    """Regions arriving out of order, gathered into slabs along ``axis``: the class map of the
    trilinear inverse of the whole model-grid probabilities."""
    shape, affine = grid(kind, (14, 18, 16), (3.0, 3.5, 3.5))
    image = Volume(np.zeros(shape, np.int16), affine)
    cfg = PreprocessingConfig(target_spacing=(4.0, 4.0, 4.0), orientation="RAS")
    x = preprocess_volume(image, cfg)
    model_affine, model_shape = np.asarray(x.affine, float), tuple(x.shape[1:])
    logits = torch.randn((4,) + model_shape, generator=torch.Generator().manual_seed(5))
    probs = torch.nn.functional.avg_pool3d(logits[None], 3, 1, 1)[0].mul_(6).softmax(0)   # smooth: few ties
    expected = argmax_channels(map_to_input_grid(probs, model_affine, image, slice(0, shape[0])), torch.int32)
    cuts = [sorted({0, n} | set(range(3, n, 4))) for n in model_shape]
    boxes = [tuple(slice(c[i], c[i + 1]) for c, i in zip(cuts, idx))
             for idx in np.ndindex(*(len(c) - 1 for c in cuts))]
    order = np.random.default_rng(6).permutation(len(boxes))
    for min_slab in (1, 5, 16):   # every region its own slab, some joined, all joined
        inverse = SlabArgmax(image, model_affine, model_shape, axis, np.uint8, min_slab=min_slab)
        for k in order:
            inverse.add(boxes[k], probs[(slice(None),) + boxes[k]].clone())
        agree = np.mean(inverse.result() == expected.numpy())
        assert agree >= 0.999, (min_slab, agree)
    with pytest.raises(InputError, match="missing model slices"):
        SlabArgmax(image, model_affine, model_shape, axis, np.uint8).result()


def test_tile_order_is_monai_order_unless_memory_drops():
    assert tile_order((100, 100, 100), (48, 64, 80), 0.25) == (0, 1, 2)
    order = tile_order((200, 200, 200), (64, 64, 1), 0.25)   # 2D model: one slice along axis 2
    assert order != (0, 1, 2) and order[0] == 2


def test_slab_argmax_refuses_slabs_out_of_order():
    shape, affine = grid("oblique", (6, 8, 8), (4.0, 4.0, 4.0))
    inverse = SlabArgmax(Volume(np.zeros(shape, np.int16), affine), np.eye(4), (8, 8, 6), 0, np.uint8)
    with pytest.raises(InputError, match="slabs must arrive in order"):
        inverse.add_slab(slice(2, 4), torch.zeros(3, 2, 8, 6))


def _small_window_model(patch=(16, 24, 32)):
    """The bundled default model with small windows, so a small phantom spans several slabs on every axis."""
    m = load_model(device="cpu")
    return replace(m, config=replace(m.config, inference=replace(m.config.inference, patch_size=patch)))


@pytest.mark.parametrize("kind, spacing", [
    ("axial", (3.0, 3.5, 3.5)),      # resampled: slab-wise trilinear inverse
    ("flipped", (4.0, 4.0, 4.0)),    # the model grid up to flips: argmax on the model grid, exact copy
    ("oblique", (3.0, 3.5, 3.5)),
])
def test_slab_path_matches_whole_volume_on_the_input_grid(kind, spacing):
    shape, affine = grid(kind, (48, 80, 80), spacing, centre=(0.0, 0.0, 0.0))
    image, truth = make_phantom(shape=shape, affine=affine, seed=3)
    model = _small_window_model()
    whole = segment(image, model=model, probabilities=True, postprocess=False)
    slabwise = segment(image, model=model, postprocess=False)
    assert slabwise.probabilities is None
    assert slabwise.label_map.same_grid(image, atol=1e-9) and slabwise.array.dtype == np.uint8
    np.testing.assert_array_equal(whole.array, whole.probabilities.array.argmax(0))
    agree = np.mean(slabwise.array == whole.array)
    assert agree >= 0.999, f"slab-wise and whole-volume class maps agree on {agree:.5f} of voxels"
    # not a trivial map: the large organs are found
    assert len(np.unique(slabwise.array)) >= 5
    if kind == "oblique":
        # slabs along the other model axes (the outermost axis of the window order)
        for axis in (1, 2):
            lm = _label_map(image, model, np.uint8, _order=(axis, 0, 3 - axis))
            agree = np.mean(lm == whole.array)
            assert agree >= 0.999, f"axis {axis}: {agree:.5f}"
        # postprocessing still runs on the slab path
        cleaned = segment(image, model=model)
        expected = postprocess_label_map(slabwise.array, model.config.postprocessing, model.config.label_table,
                                         voxel_volume_ml=image.voxel_volume_ml)
        np.testing.assert_array_equal(cleaned.array, expected)


def test_slab_path_two_d_model_runs_slice_by_slice():
    from .test_segment import _image, tiny_model

    image = _image("oblique", shape=(20, 40, 36))
    model = tiny_model(2, "coronal")
    whole = segment(image, model=model, probabilities=True)
    slabwise = segment(image, model=model)
    assert slabwise.label_map.same_grid(image, atol=1e-9)
    assert np.mean(slabwise.array == whole.array) >= 0.999


def test_argmax_channels_takes_the_first_of_ties():
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 5.0, 3.0], [0.0, 5.0, 4.0]])
    assert argmax_channels(x).tolist() == [0, 1, 2]


@pytest.mark.parametrize("kind, dtype", [("oblique", np.int16), ("flipped", np.float32), ("axial", np.uint16)])
def test_lean_preprocessing_gives_the_float_first_values(kind, dtype):
    shape, affine = grid(kind, (20, 30, 26), (4.0, 3.0, 3.5))
    rng = np.random.default_rng(4)
    image = Volume(rng.integers(-300, 400, shape).astype(dtype) if dtype != np.uint16
                   else rng.integers(0, 600, shape).astype(dtype), affine)
    before = image.array.copy()
    cfg = PreprocessingConfig(target_spacing=(4.0, 3.0, 3.5), orientation="RAS",
                              intensity=IntensityConfig("ct_window", window=(-160.0, 240.0)))
    x = preprocess_volume(image, cfg)
    ref = volume_to_metatensor(image, dtype=torch.float32)
    for t in spatial_transforms(cfg):
        ref = t(ref)
    ref = ScaleIntensityRange(a_min=-160.0, a_max=240.0, b_min=0.0, b_max=1.0, clip=True)(ref)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.as_tensor(), ref.as_tensor().float(), rtol=0, atol=0)
    np.testing.assert_allclose(x.affine.numpy(), ref.affine.numpy())
    np.testing.assert_array_equal(image.array, before)   # the caller's array is never normalised in place


def test_lean_preprocessing_never_writes_into_the_input():
    # a float32 image already on the model grid in RAS order: every spatial transform is the identity
    from medseg.core.geometry import make_affine

    arr = np.linspace(-500, 500, 1 * 4 * 5 * 6, dtype=np.float32).reshape(1, 4, 5, 6)
    direction = np.diag([-1.0, -1.0, 1.0])  # LPS axes reversed = RAS
    image = Volume(arr[0], make_affine((2.0, 2.0, 2.0), (0.0, 0.0, 0.0), direction))
    before = image.array.copy()
    cfg = PreprocessingConfig(target_spacing=(2.0, 2.0, 2.0), orientation="RAS",
                              intensity=IntensityConfig("ct_window", window=(-100.0, 100.0)))
    x = preprocess_volume(image, cfg)
    np.testing.assert_array_equal(image.array, before)
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0


def test_postprocessing_with_more_components_than_uint16_holds():
    from medseg.core.labels import LabelTable
    from medseg.models import PostprocessingConfig

    lm = np.zeros((3, 600, 600), np.uint8)
    lm[0, ::2, ::2] = 1              # 90,000 single-voxel specks
    lm[2, 100:200, 100:200] = 1      # the organ
    lm[2, 400:402, 400:402] = 2
    labels = LabelTable.from_names(["liver", "tumour"])
    out = postprocess_label_map(lm, {"liver": PostprocessingConfig(largest_component=True)}, labels,
                                voxel_volume_ml=0.001)
    expected = np.zeros_like(lm)
    expected[2, 100:200, 100:200] = 1
    expected[2, 400:402, 400:402] = 2
    np.testing.assert_array_equal(out, expected)


def test_stitching_takes_one_image():
    with pytest.raises(InputError, match=r"one image \(1, C, \*spatial\)"):
        sliding_window(torch.zeros(2, 1, 8, 8, 8), (4, 4, 4), _net(), overlap=0.25)
