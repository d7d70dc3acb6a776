"""Engines: guidance channels, the learned engine end to end, classical engine on phantoms and real MR."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.core.errors import ConfigError
from medseg.interactive import Session
from medseg.interactive.robot import most_interior_voxel, next_click, run_robot


def test_guidance_channels_encode_clicks_at_their_voxels():
    from medseg.interactive.learned import guidance_channels

    g = guidance_channels((8, 10, 12), np.array([[1, 2, 3], [7, 9, 11]]), np.array([[4, 5, 6]]), sigma=1.0)
    assert g.shape == (2, 8, 10, 12) and g.dtype == np.float32
    assert g[0, 1, 2, 3] == 1.0 and g[0, 7, 9, 11] == 1.0 and g[1, 4, 5, 6] == 1.0
    # the maxima are exactly the clicks, and each channel only holds its own sign
    assert set(map(tuple, np.argwhere(g[0] == 1.0))) == {(1, 2, 3), (7, 9, 11)}
    assert set(map(tuple, np.argwhere(g[1] == 1.0))) == {(4, 5, 6)}
    assert g[1, 1, 2, 3] < 1e-3 and g[0, 4, 5, 6] < 0.2
    assert np.isclose(g[0, 1, 2, 4], np.exp(-0.5))
    empty = guidance_channels((4, 4, 4), np.zeros((0, 3)), np.zeros((0, 3)), sigma=1.0)
    assert not empty.any()


def test_learned_engine_runs_bundled_model(phantom):
    image, seg = phantom
    s = Session("interactive_phantom")
    assert s.engine.name == "learned" and "point" in s.engine.prompt_types
    s.set_image(image)
    target = seg.array == 1  # liver
    r = run_robot(s, target, spacing=image.spacing, n_clicks=3, metrics_at=3)
    assert r.dice_at(3) > 0.3
    assert s.mask[r.clicks[0][0]]  # the positive click is honoured


def test_learned_config_errors(tmp_path):
    from medseg.interactive.learned import load_config

    with pytest.raises(ConfigError, match="not found"):
        load_config("interactive_does_not_exist")
    bad = tmp_path / "interactive_bad.yaml"
    bad.write_text("name: x\nlayers: 3\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(bad)


def test_train_interactive_tiny(tmp_path):
    from medseg.interactive.learned import InteractiveModelConfig, LearnedEngine, train_interactive

    cfg = InteractiveModelConfig(channels=(4, 8), strides=(2,), patch=(16, 32, 32), spacing=(12.0, 10.8, 10.8))
    out = train_interactive(None, tmp_path / "interactive_tiny.safetensors", config=cfg, iterations=4, n_phantoms=2)
    eng = LearnedEngine.load(out["config"])
    assert eng.config.patch == (16, 32, 32)


def test_robot_protocol():
    t = np.zeros((9, 9, 9), bool)
    t[1:8, 1:8, 1:8] = True
    assert most_interior_voxel(t, (1, 1, 1)) == (4, 4, 4)
    assert next_click(t, None, (1, 1, 1)) == ((4, 4, 4), True)
    pred = t.copy()
    pred[0:9, 0:9, 8] = True  # a leak on one face
    pred[3:6, 3:6, 3:6] = False  # a hole
    (idx, positive) = next_click(t, pred, (1, 1, 1))
    assert positive is False and idx[2] == 8  # leak (81 voxels) is larger than the hole (27)
    assert next_click(t, t, (1, 1, 1)) is None


def test_classical_engine_on_phantom_kidney(phantom):
    image, seg = phantom
    s = Session("classical")
    s.set_image(image)
    r = run_robot(s, seg.array == 3, spacing=image.spacing, n_clicks=5)  # right kidney
    assert r.dice_at(5) > 0.7
    assert r.dice_at(5) >= r.dice_at(1)


@pytest.mark.real_data
def test_real_mr_kidney_smoke(real_data):
    from medseg.io import read_volume

    image = read_volume(real_data / "mr_abdomen" / "image.nii.gz")
    labels = read_volume(real_data / "mr_abdomen" / "labels.nii.gz").array
    s = Session("classical")
    s.set_image(image)
    r = run_robot(s, labels == 3, spacing=image.spacing, n_clicks=3, metrics_at=3)  # left kidney
    assert r.dice_at(3) > 0.8
    assert np.isfinite(r.hd95_mm)
