"""MONAI bundles: export → `python -m monai.bundle run` gives medseg's label map; safe import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.core.errors import ModelError
from medseg.inference import segment
from medseg.io import read_volume, write_volume
from medseg.models import load_model
from medseg.models.bundle import export_bundle, import_bundle
from medseg.samples.phantom import make_phantom

from medseg.core.geometry import make_affine


def _oblique(shape, spacing):
    a = np.array([1.0, 0.5, 0.2]) / np.linalg.norm([1.0, 0.5, 0.2])
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.deg2rad(12.0)
    d = (np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k) @ np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])
    d = d * np.array([1.0, -1.0, 1.0])[None, :]  # and flipped along y
    origin = np.array([0.0, 5.0, 0.0]) - d @ (np.asarray(spacing) * (np.asarray(shape) - 1) / 2)
    return make_affine(spacing, origin, d)


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


def _dice(a, b):
    return 2 * np.sum(a == b) / (a.size + b.size)


def test_bundle_round_trip(tmp_path: Path, model):
    pytest.importorskip("fire", reason="python -m monai.bundle needs `fire` (pip install fire)")
    bundle = export_bundle(model, tmp_path / "bundle")
    shape = (40, 80, 96)
    affine = _oblique(shape, (5.0, 3.6, 3.6))
    image, _ = make_phantom(shape=shape, affine=affine, seed=4242)
    (tmp_path / "in").mkdir()
    write_volume(image, tmp_path / "in" / "case.nii.gz")
    image = read_volume(tmp_path / "in" / "case.nii.gz")
    out = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
         "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
         "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = read_volume(tmp_path / "out" / "case_seg.nii.gz")
    assert theirs.same_grid(image, atol=1e-3)
    ours = segment(image, model=model)
    labels = theirs.array.astype(np.uint8)
    # overall agreement of the label maps and per-structure Dice
    assert np.mean(labels == ours.array) > 0.999
    for idx in range(1, 5):
        a, b = labels == idx, ours.array == idx
        assert 2 * np.sum(a & b) / (a.sum() + b.sum()) >= 0.999, idx
    # and medseg runs the exported bundle itself
    again = segment(image, model=load_model(bundle, device="cpu"))
    np.testing.assert_array_equal(again.array, ours.array)


def _foreign_bundle(root: Path, model, **overrides) -> Path:
    """A bundle as MONAI's model zoo writes them (no medseg_config)."""
    bundle = export_bundle(model, root)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta.pop("medseg_config")
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    cfg.update(overrides)
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    (bundle / "models" / "model.safetensors").unlink()
    return bundle


def test_foreign_bundle_is_read_as_data(tmp_path: Path, model):
    bundle = _foreign_bundle(tmp_path / "b", model)
    cfg, state = import_bundle(bundle)
    assert cfg.network == model.config.network
    assert cfg.labels == model.config.labels
    assert cfg.preprocessing.target_spacing == model.config.preprocessing.target_spacing
    assert cfg.preprocessing.intensity.window == model.config.preprocessing.intensity.window
    assert cfg.inference.patch_size == model.config.inference.patch_size
    assert set(state) == set(model.network.state_dict())


def test_bundle_code_is_refused_without_opt_in(tmp_path: Path, model):
    marker = tmp_path / "ran"
    bundle = _foreign_bundle(tmp_path / "b", model)
    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    cfg["network_def"]["channels"] = f"$open({str(marker)!r}, 'w').write('x') or [8, 16, 32, 64]"
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="never evaluates bundle code"):
        load_model(bundle)
    assert not marker.exists()
    cfg["network_def"] = {"_target_": "$__import__('os').system", "command": "true"}
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="not in medseg's whitelist"):
        import_bundle(bundle)


def test_not_a_bundle(tmp_path: Path):
    (tmp_path / "configs").mkdir()
    with pytest.raises(ModelError, match="not a MONAI bundle"):
        import_bundle(tmp_path)
    (tmp_path / "configs" / "inference.json").write_text(json.dumps({"network_def": {"_target_": "UNet"}}))
    with pytest.raises(ModelError, match="no models/model.safetensors"):
        import_bundle(tmp_path)


@pytest.mark.parametrize("value", [10**20, 0, -2, 2.5, "3", None])
def test_bundle_with_an_impossible_channel_count_is_a_named_error(tmp_path: Path, model, value):
    """A corrupt or hostile network_def (out_channels 10**20 overflowed while building the label
    table, found by the fuzzer) is refused by name before anything is built."""
    bundle = _foreign_bundle(tmp_path / "b", model)
    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    cfg["network_def"]["out_channels"] = value
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="out_channels must be a whole number from 1 to 1024"):
        import_bundle(bundle)
