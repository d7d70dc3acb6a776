"""Tile-wise stitching, lazily preprocessed input and lean clean-up: MONAI's numbers, the same class maps,
less memory."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medseg.core.errors import InputError
from medseg.core.geometry import make_affine
from medseg.inference import segment
from medseg.core.memory import release_free_memory
from medseg.inference.postprocess import _drop, postprocess_label_map
from medseg.inference.mapping import GridPermutation, PermutedInput, model_grid, preprocess_volume
from medseg.inference.merger import _cuts, _live_peak, _monai_windows, sliding_window, tile_order
from medseg.core.labels import LabelTable
from medseg.models import PostprocessingConfig, load_model
from medseg.models.config import IntensityConfig, PreprocessingConfig
from medseg.samples.phantom import make_phantom
from medseg.core.volume import Volume

from .grids import grid


def _net(out_channels=4):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(6, out_channels, 3, padding=1)).eval()


class _Partition:
    """A sink that checks that the finished regions partition the image and assembles them."""

    def __init__(self, shape):
        self.out = None
        self.shape = tuple(shape)

    def add(self, box, region):
        if self.out is None:
            self.out = torch.full((region.shape[0],) + self.shape, float("nan"), dtype=torch.float32)
        index = (slice(None),) + box
        assert torch.isnan(self.out[index]).all(), f"region {box} overlaps another"
        self.out[index] = region.float()

    def result(self):
        assert not torch.isnan(self.out).any(), "the regions leave voxels out"
        return self.out


def _stitch(x, roi, net, **kw):
    """Blended logits, assembled from the finished regions, checking that they partition the image."""
    with torch.inference_mode():
        return sliding_window(x, roi, net, output="logits", sink=_Partition(x.shape[2:]), **kw)


@pytest.mark.parametrize("shape, roi, overlap, batch", [
    ((37, 29, 23), (12, 10, 8), 0.25, 1),
    ((37, 29, 23), (12, 10, 8), 0.5, 3),
    ((30, 7, 21), (9, 12, 8), 0.25, 2),      # axis 1 shorter than the window: padded as MONAI pads
])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_tiles_in_monai_order_are_monai(shape, roi, overlap, batch, mode):
    x = torch.randn((1, 1) + shape, generator=torch.Generator().manual_seed(1))
    net = _net()
    with torch.inference_mode():
        ref = sliding_window_inference(x, roi, batch, net, overlap=overlap, mode=mode, padding_mode="replicate")[0]
    out = _stitch(x, roi, net, overlap=overlap, mode=mode, sw_batch_size=batch, order=(0, 1, 2))
    if batch == 1:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    else:  # the network sees other batches than MONAI's: float rounding
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", [(1, 0, 2), (2, 1, 0), None])
def test_tiles_in_other_orders_match_monai_to_rounding(order):
    shape, roi = (25, 33, 41), (10, 12, 14)
    x = torch.randn((1, 1) + shape, generator=torch.Generator().manual_seed(2))
    net = _net()
    with torch.inference_mode():
        ref = sliding_window_inference(x, roi, 1, net, overlap=0.25, mode="gaussian")[0]
    torch.testing.assert_close(_stitch(x, roi, net, overlap=0.25, order=order), ref, rtol=1e-5, atol=1e-6)


def test_tiles_refuse_a_batch_and_a_bad_order():
    with pytest.raises(InputError, match=r"one image \(1, C, \*spatial\)"):
        sliding_window(torch.zeros(2, 1, 8, 8, 8), (4, 4, 4), _net(), overlap=0.25)
    with pytest.raises(InputError, match="permutation"):
        sliding_window(torch.zeros(1, 1, 8, 8, 8), (4, 4, 4), _net(), overlap=0.25, order=(0, 0, 1))


def test_tile_order_holds_less_than_a_slab():
    for size, roi in [((512, 512, 300), (80, 64, 48)), ((256, 256, 128), (80, 64, 48))]:
        monai_order = _monai_windows(size, roi, 0.25, (0, 1, 2))
        cuts = _cuts(size, roi, [sorted({w[a] for w in monai_order}) for a in range(3)])
        best = tile_order(size, roi, 0.25)
        held = _live_peak(_monai_windows(size, roi, 0.25, best), roi, cuts)
        assert held <= _live_peak(monai_order, roi, cuts)
        slab = min(roi[a] * np.prod(size) // size[a] for a in range(3))  # a slab-wise ring's voxels
        assert held < 0.5 * slab, (size, best, held, slab)
    # no choice to make: MONAI's order
    assert tile_order((20, 20, 20), (32, 32, 32), 0.25) == (0, 1, 2)


def test_float16_accumulation_agrees_with_float32():
    shape, roi = (40, 36, 44), (16, 12, 20)
    x = torch.randn((1, 1) + shape, generator=torch.Generator().manual_seed(3))
    net = _net(out_channels=7)
    ref = _stitch(x, roi, net, overlap=0.25)
    half = _stitch(x, roi, net, overlap=0.25, accumulate_dtype=torch.float16)
    torch.testing.assert_close(half, ref, rtol=2e-3, atol=2e-3)
    agree = (half.argmax(0) == ref.argmax(0)).float().mean().item()
    assert agree >= 0.999, agree


def test_float16_accumulation_falls_back_to_float32_on_large_logits():
    shape, roi = (24, 20, 28), (10, 8, 12)
    x = torch.randn((1, 1) + shape, generator=torch.Generator().manual_seed(4))
    net = _net()

    def loud(w):  # logits around 1e6: float16 sums would be infinite
        return net(w) * 1e6

    ref = _stitch(x, roi, loud, overlap=0.5)
    half = _stitch(x, roi, loud, overlap=0.5, accumulate_dtype=torch.float16)
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half, ref, rtol=1e-5, atol=1.0)


def _ct_config(spacing=(4.0, 4.0, 4.0), kind="ct_window"):
    intensity = IntensityConfig(kind=kind, window=(-160.0, 240.0)) if kind == "ct_window" else IntensityConfig(kind=kind)
    return PreprocessingConfig(target_spacing=spacing, orientation="RAS", axis_aligned=False, intensity=intensity)


def _coronal(shape, spacing, centre=(0.0, 5.0, 0.0)):
    """Array axes (A/P, I/S, L/R) with z running downwards: the model grid is a permutation with a flip."""
    d = np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]])
    spacing = np.asarray(spacing, float)
    origin = np.asarray(centre) - d @ (spacing * (np.asarray(shape) - 1) / 2)
    return tuple(shape), make_affine(spacing, origin, d)


@pytest.mark.parametrize("kind, dtype", [("axial", np.int16), ("flipped", np.int16), ("coronal", np.float32),
                                         ("flipped", np.uint8)])
def test_permuted_input_is_the_preprocessed_volume(kind, dtype):
    shape, affine = _coronal((18, 30, 26), (4.0, 4.0, 4.0)) if kind == "coronal" else grid(kind, (20, 30, 26), (4.0, 4.0, 4.0))
    rng = np.random.default_rng(5)
    low = 0 if dtype == np.uint8 else -300
    image = Volume(rng.integers(low, 250, shape).astype(dtype), affine)
    cfg = _ct_config()
    before = image.array.copy()
    lazy = PermutedInput.create(image, cfg)
    assert lazy is not None
    ref = preprocess_volume(image, cfg)
    np.testing.assert_allclose(lazy.affine, np.asarray(ref.affine), atol=1e-9)
    assert lazy.shape == (1,) + tuple(ref.shape)
    torch.testing.assert_close(lazy[:, :, :, :, :][0], ref.as_tensor(), rtol=0, atol=0)
    box = (slice(3, 11), slice(5, 20), slice(2, 9))
    torch.testing.assert_close(lazy[(slice(None), slice(None)) + box][0], ref.as_tensor()[(slice(None),) + box],
                               rtol=0, atol=0)
    np.testing.assert_array_equal(image.array, before)  # the caller's array is never modified
    with pytest.raises(InputError, match="index a PermutedInput"):
        lazy[0]


def test_permuted_input_only_where_preprocessing_is_a_permutation():
    shape, affine = grid("oblique", (20, 30, 26), (3.0, 3.5, 3.5))
    assert PermutedInput.create(Volume(np.zeros(shape, np.int16), affine), _ct_config()) is None
    shape, affine = grid("axial", (20, 30, 26), (3.0, 3.5, 3.5))   # resampled
    assert PermutedInput.create(Volume(np.zeros(shape, np.int16), affine), _ct_config()) is None
    shape, affine = grid("axial", (20, 30, 26), (4.0, 4.0, 4.0))
    assert PermutedInput.create(Volume(np.zeros(shape, np.int16), affine), _ct_config(kind="mr_zscore")) is None
    # the lazily computed model grid is preprocess_volume's, also where it resamples
    for kind, spacing in [("oblique", (3.0, 3.5, 3.5)), ("axial", (5.0, 3.0, 2.5))]:
        shape, affine = grid(kind, (20, 30, 26), spacing)
        image = Volume(np.zeros(shape, np.int16), affine)
        ref = preprocess_volume(image, _ct_config())
        m_affine, m_shape = model_grid(image, _ct_config())
        assert m_shape == tuple(ref.shape[1:])
        np.testing.assert_allclose(m_affine, np.asarray(ref.affine), atol=1e-6)


@pytest.mark.parametrize("kind", ["axial", "flipped", "coronal"])
def test_grid_permutation_maps_boxes_and_blocks(kind):
    shape, affine = _coronal((6, 9, 7), (4.0, 4.0, 4.0)) if kind == "coronal" else grid(kind, (6, 9, 7), (4.0, 4.0, 4.0))
    image = Volume(np.arange(np.prod(shape), dtype=np.int32).reshape(shape), affine)
    cfg = _ct_config()
    cfg = replace(cfg, intensity=IntensityConfig(kind="none"))
    model = preprocess_volume(image, cfg).as_tensor()[0]   # the volume on the model grid: exact values
    g = GridPermutation(np.asarray(preprocess_volume(image, cfg).affine), image)
    np.testing.assert_array_equal(g.to_model(image.array), model.numpy())
    np.testing.assert_array_equal(g.to_input(model.numpy()), image.array)
    torch.testing.assert_close(g.to_input(model), torch.as_tensor(image.array, dtype=torch.float32))
    box = (slice(1, 4), slice(2, 5), slice(0, 3))
    np.testing.assert_array_equal(g.to_model(image.array[g.input_box(box)]), model.numpy()[box])
    # an oblique grid already at the model's spacing is not resampled (axis_aligned: false): the model grid
    oblique_shape, oblique = grid("oblique", (6, 9, 7), (4.0, 4.0, 4.0))
    assert PermutedInput.create(Volume(np.zeros(oblique_shape, np.int16), oblique), cfg) is not None
    oblique_shape, oblique = grid("oblique", (6, 9, 7), (3.0, 3.5, 3.5))
    resampled = Volume(np.zeros(oblique_shape, np.int16), oblique)
    with pytest.raises(InputError, match="not the input grid up to axis permutation"):
        GridPermutation(np.asarray(preprocess_volume(resampled, cfg).affine), resampled)


def _small_window_model(patch=(16, 24, 32)):
    m = load_model(device="cpu")
    pre = replace(m.config.preprocessing, target_spacing=(4.0, 4.0, 4.0))
    return replace(m, config=replace(m.config, preprocessing=pre,
                                     inference=replace(m.config.inference, patch_size=patch)))


@pytest.mark.parametrize("kind", ["flipped", "coronal"])
def test_tile_path_matches_the_whole_volume_path(kind):
    """The model grid is the input grid up to axis order and flips: the lazy, tile-wise class map is the
    whole-volume class map; float16 accumulators agree on >= 99.9 % of voxels."""
    shape, affine = (_coronal((80, 48, 80), (4.0, 4.0, 4.0), centre=(0.0, 0.0, 0.0)) if kind == "coronal"
                     else grid(kind, (48, 80, 80), (4.0, 4.0, 4.0), centre=(0.0, 0.0, 0.0)))
    image, _ = make_phantom(shape=shape, affine=affine, seed=3)
    model = _small_window_model()
    assert PermutedInput.create(image, model.config.preprocessing) is not None
    whole = segment(image, model=model, probabilities=True, postprocess=False)
    tiles = segment(image, model=model, postprocess=False)
    assert tiles.label_map.same_grid(image, atol=1e-9) and tiles.array.dtype == np.uint8
    agree = np.mean(tiles.array == whole.array)
    assert agree >= 0.9999, agree
    assert len(np.unique(tiles.array)) >= 5
    half = segment(image, model=model, postprocess=False, accumulate="float16")
    agree = np.mean(half.array == tiles.array)
    assert agree >= 0.999, f"float16 and float32 accumulation agree on {agree:.5f} of voxels"
    with pytest.raises(InputError, match="accumulate must be one of"):
        segment(image, model=model, accumulate="bfloat16")


def test_postprocessing_in_place_is_the_copying_one():
    labels = LabelTable.from_names(["liver", "spleen", "tumour"])
    rng = np.random.default_rng(6)
    lm = (rng.random((30, 40, 40)) < 0.02).astype(np.uint8)       # liver specks
    lm[5:20, 5:25, 5:25] = 1                                        # the liver
    lm[22:28, 30:38, 30:38] = 2
    lm[2, 35, 35] = 2                                               # a spleen speck
    lm[10:12, 10:12, 10:12] = 3                                     # a tumour inside the liver
    lm[8:10, 12:14, 12:14] = 0                                      # a hole in the liver
    rules = {"liver": PostprocessingConfig(largest_component=True, fill_holes=True),
             "spleen": PostprocessingConfig(largest_component=True),
             "tumour": PostprocessingConfig(min_size_ml=0.005)}
    copied = postprocess_label_map(lm, rules, labels, voxel_volume_ml=0.001)
    assert copied is not lm and np.count_nonzero(copied != lm) > 100
    work = lm.copy()
    out = postprocess_label_map(work, rules, labels, voxel_volume_ml=0.001, in_place=True)
    assert out is work
    np.testing.assert_array_equal(out, copied)
    assert out[2, 35, 35] == 0 and out[8, 12, 12] == 1 and out[10, 10, 10] == 3
    with pytest.raises(InputError, match="must hold integers"):
        postprocess_label_map(lm.astype(np.float32), rules, labels, voxel_volume_ml=0.001)


def test_drop_in_slabs_is_the_whole_lookup():
    rng = np.random.default_rng(7)
    comp = rng.integers(0, 6, (9, 10, 11)).astype(np.uint16)
    remove = np.array([False, True, False, True, True, False])
    sub = rng.integers(1, 3, comp.shape).astype(np.uint8)
    mask = np.ones(comp.shape, bool)
    expected_sub, expected_mask = sub.copy(), mask.copy()
    expected_sub[remove[comp]] = 0
    expected_mask[remove[comp]] = False
    _drop(remove, comp, sub, mask, chunk=50)   # a slab of under one slice: one slice at a time
    np.testing.assert_array_equal(sub, expected_sub)
    np.testing.assert_array_equal(mask, expected_mask)


def test_release_free_memory_keeps_live_memory():
    a = np.arange(1_000_000)
    assert isinstance(release_free_memory(), bool)
    assert a[-1] == 999_999
