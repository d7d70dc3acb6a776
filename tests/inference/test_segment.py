"""segment(): outputs on the input grid, probabilities, 2D slice-wise, callbacks, postprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.core.errors import CancelledError, InputError
from medseg.inference import enable_dropout, predict_probabilities, segment
from medseg.inference.postprocess import postprocess_label_map
from medseg.core.labels import LabelTable
from medseg.models import LoadedModel, PostprocessingConfig, config_from_mapping
from medseg.models.registry import build_network
from medseg.core.volume import Volume

from .grids import KINDS, grid


def tiny_model(spatial_dims=3, slice_axis="axial", dropout=0.0, in_channels=1):
    patch = [16, 16, 16]
    if spatial_dims == 2:
        patch[{"axial": 0, "coronal": 1, "sagittal": 2}[slice_axis]] = 1
    cfg = config_from_mapping({
        "name": "tiny", "in_channels": in_channels,
        "network": {"name": "unet", "spatial_dims": spatial_dims, "channels": [4, 8], "strides": [2],
                    "dropout": dropout},
        "labels": {1: "a", 2: "b"},
        "preprocessing": {"target_spacing": [5.0, 4.0, 4.0]},
        "inference": {"patch_size": patch, "slice_axis": slice_axis, "overlap": 0.25},
    })
    torch.manual_seed(0)
    net = build_network(cfg.network, in_channels=in_channels, out_channels=3).eval()
    return LoadedModel(cfg, net, torch.device("cpu"))


def _image(kind, shape=(14, 22, 18), spacing=(4.5, 3.5, 3.0)):
    shape, affine = grid(kind, shape, spacing)
    rng = np.random.default_rng(0)
    return Volume(rng.normal(0, 100, shape).astype(np.int16), affine, {"Modality": "CT"})


@pytest.mark.parametrize("kind", KINDS)
def test_output_on_input_grid(kind):
    image = _image(kind)
    seg = segment(image, model=tiny_model(), probabilities=True)
    assert seg.label_map.same_grid(image, atol=1e-9)
    assert seg.array.dtype == np.uint8
    p = seg.probabilities.array
    assert p.shape == (3,) + image.shape and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(seg.array, p.argmax(0))
    assert seg.labels.names == ["a", "b"]


def test_probabilities_only_when_asked_and_reusable_api():
    image = _image("axial")
    model = tiny_model()
    seg = segment(image, model=model)
    assert seg.probabilities is None
    probs = predict_probabilities(image, model)
    assert probs.same_grid(image) and probs.array.shape[0] == 3
    np.testing.assert_array_equal(probs.array.argmax(0), seg.array)


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_two_d_model_runs_slice_by_slice(axis):
    image = _image("oblique")
    seg = segment(image, model=tiny_model(2, axis), probabilities=True)
    assert seg.label_map.same_grid(image, atol=1e-9)
    np.testing.assert_allclose(seg.probabilities.array.sum(0), 1.0, atol=1e-4)


def test_progress_and_cancel():
    image = _image("axial", shape=(20, 40, 40), spacing=(5.0, 4.0, 4.0))
    calls = []
    segment(image, model=tiny_model(), progress=lambda d, t, m: calls.append((d, t, m)))
    seg_calls = [c for c in calls if c[2] == "segmenting"]
    assert seg_calls and seg_calls[-1][0] == seg_calls[-1][1]
    with pytest.raises(CancelledError, match="cancelled"):
        segment(image, model=tiny_model(), cancel=lambda: True)


def test_wrong_channel_count():
    with pytest.raises(InputError, match="needs 2 input channel"):
        segment(_image("axial"), model=tiny_model(in_channels=2))


def test_mc_dropout_varies_only_when_enabled():
    image = _image("axial")
    model = tiny_model(dropout=0.5)
    a = predict_probabilities(image, model).array
    b = predict_probabilities(image, model).array
    np.testing.assert_array_equal(a, b)
    c = predict_probabilities(image, model, mc_dropout=True).array
    assert not np.allclose(a, c)
    assert not any(m.training for m in model.network.modules())
    enable_dropout(model.network)
    assert any(m.training for m in model.network.modules())


def test_postprocessing_rules():
    labels = LabelTable.from_names(["liver", "tumour"])
    lm = np.zeros((10, 20, 20), np.uint8)
    lm[2:8, 2:12, 2:12] = 1
    lm[4:6, 5:8, 5:8] = 0          # hole
    lm[5, 6, 6] = 2                # tumour inside the hole region
    lm[1, 18, 18] = 1              # speck
    lm[8, 16:19, 16:19] = 2        # small tumour far away (9 voxels)
    rules = {"liver": PostprocessingConfig(largest_component=True, fill_holes=True),
             "tumour": PostprocessingConfig(min_size_ml=0.005)}
    out = postprocess_label_map(lm, rules, labels, voxel_volume_ml=0.001)
    assert out[1, 18, 18] == 0                      # speck removed
    assert out[4, 5, 5] == 1                        # hole filled
    assert out[5, 6, 6] == 0                        # single-voxel tumour below 5 voxels removed
    assert out[8, 17, 17] == 2                      # 9-voxel tumour kept
    assert lm[1, 18, 18] == 1                       # input not mutated


@pytest.mark.parametrize("kind", ["axial", "flipped"])
def test_same_grid_fast_path_matches_probability_path(kind):
    image = _image(kind, spacing=(5.0, 4.0, 4.0))  # the tiny model's grid, up to flips
    model = tiny_model()
    fast = segment(image, model=model)
    full = segment(image, model=model, probabilities=True)
    np.testing.assert_array_equal(fast.array, full.array)
    assert fast.label_map.same_grid(image, atol=1e-9)
