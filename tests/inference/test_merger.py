"""RegionMerger is a MONAI Merger: under PatchInferer with MONAI's own splitter it gives AvgMerger's
numbers (constant blending), their argmax as labels and their softmax as probabilities; the
input-grid label writer inverts the forward mapping exactly on axis-aligned, flipped and oblique grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import AvgMerger, PatchInferer, SlidingWindowSplitter

from medseg.core.errors import InputError
from medseg.inference.mapping import GridPermutation, InputGridLabels, preprocess_labels
from medseg.inference.merger import RegionMerger
from medseg.models.config import PreprocessingConfig
from medseg.core.volume import Volume

from .grids import grid


def _net(out_channels=5):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(6, out_channels, 3, padding=1)).eval()


def _monai(x, splitter, merger_cls, net, **kw):
    with torch.inference_mode():
        return PatchInferer(splitter, merger_cls=merger_cls, batch_size=2, **kw)(x, net)


@pytest.mark.parametrize("shape, patch, overlap", [
    ((23, 19, 17), (8, 6, 10), 0.25),    # no axis a multiple of the step: MONAI's splitter pads the ends
    ((21, 30, 9), (10, 12, 6), 0.5),
])
def test_region_merger_is_avg_merger_under_patch_inferer(shape, patch, overlap):
    x = torch.randn((1, 1) + shape, generator=torch.Generator().manual_seed(1))
    net = _net()
    splitter = SlidingWindowSplitter(patch, overlap=overlap, pad_mode="constant")
    locations = [loc for _, loc in splitter(x)]
    assert len(locations) > 8
    ref = _monai(x, splitter, AvgMerger, net)
    assert ref.shape == (1, 5) + shape
    kw = dict(patch_size=patch, locations=locations, mode="constant")
    logits = _monai(x, splitter, RegionMerger, net, output="logits", **kw)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-6)
    labels = _monai(x, splitter, RegionMerger, net, output="labels", **kw)
    assert labels.shape == (1, 1) + shape and labels.dtype == torch.uint8
    agree = (labels[0, 0].long() == ref[0].argmax(0)).float().mean().item()
    assert agree >= 0.9999, agree   # float rounding can only flip exact ties
    assert len(torch.unique(labels)) == 5
    probabilities = _monai(x, splitter, RegionMerger, net, output="probabilities", **kw)
    torch.testing.assert_close(probabilities, ref.softmax(1), rtol=1e-5, atol=1e-6)


def test_region_merger_gaussian_blending_differs_from_averaging():
    """mode is honoured: MONAI's Gaussian importance map is not a plain average."""
    x = torch.randn((1, 1, 23, 19, 17), generator=torch.Generator().manual_seed(2))
    net = _net()
    splitter = SlidingWindowSplitter((8, 6, 10), overlap=0.5, pad_mode="constant")
    kw = dict(patch_size=(8, 6, 10), locations=[loc for _, loc in splitter(x)], output="logits")
    flat = _monai(x, splitter, RegionMerger, net, mode="constant", **kw)
    gauss = _monai(x, splitter, RegionMerger, net, mode="gaussian", **kw)
    assert (flat - gauss).abs().max() > 1e-3


def test_region_merger_refuses_missing_windows_and_reuse():
    merger = RegionMerger((1, 2, 8, 8), (1, 2, 8, 8), patch_size=(4, 4), locations=[(0, 0), (0, 4), (4, 0), (4, 4)],
                          output="logits")
    merger.aggregate(torch.ones(1, 2, 4, 4), (0, 0))
    with pytest.raises(InputError, match="3 regions still wait for windows"):
        merger.finalize()
    for loc in [(0, 4), (4, 0), (4, 4)]:
        merger.aggregate(torch.full((1, 2, 4, 4), 2.0), loc)
    out = merger.finalize()
    assert out[0, :, :4, :4].eq(1.0).all() and out[0, :, 4:, 4:].eq(2.0).all()
    with pytest.raises(InputError, match="finalized"):
        merger.aggregate(torch.ones(1, 2, 4, 4), (0, 0))
    with pytest.raises(InputError, match="output must be"):
        RegionMerger((1, 2, 8, 8), patch_size=(4, 4), locations=[(0, 0)], output="argmax")


@pytest.mark.parametrize("kind", ["axial", "flipped", "oblique"])
def test_input_grid_labels_invert_the_forward_mapping(kind):
    """Labels taken to the model grid (forward) and written back region by region (inverse) are the input's."""
    shape, affine = grid(kind, (9, 12, 11), (4.0, 4.0, 4.0))   # the model's spacing: a permutation, no resampling
    rng = np.random.default_rng(3)
    labels = Volume(rng.integers(0, 6, shape).astype(np.uint8), affine)
    cfg = PreprocessingConfig(target_spacing=(4.0, 4.0, 4.0), orientation="RAS")
    model = preprocess_labels(labels, cfg)
    grid_map = GridPermutation(np.asarray(model.affine, float), labels)
    on_model = model.as_tensor()[0].to(torch.uint8)
    assert not torch.equal(on_model, torch.as_tensor(labels.array))  # the forward mapping moves voxels
    sink = InputGridLabels(grid_map, np.uint8)
    cuts = [sorted({0, n} | set(range(2, n, 5))) for n in on_model.shape]
    for idx in np.ndindex(*(len(c) - 1 for c in cuts)):
        box = tuple(slice(c[i], c[i + 1]) for c, i in zip(cuts, idx))
        sink.add(box, on_model[box])
    np.testing.assert_array_equal(sink.result(), labels.array)
