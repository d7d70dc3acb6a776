"""CLI: `medseg models`, `medseg segment`, `medseg train` (argument errors, --interactive wiring)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.io import read_segmentation, read_volume, write_volume
from medseg.samples.phantom import default_phantom_affine, make_phantom


def test_models_lists_bundled_configs(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "phantom_ct_unet [default]: unet 3D" in out and "unet2d_axial: unet 2D" in out


def test_segment_cli_with_default_model(tmp_path: Path):
    shape = (24, 64, 64)
    image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (8.0, 5.0, 5.0)), seed=5)
    write_volume(image, tmp_path / "ct.nii.gz")
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), str(tmp_path / "seg.nii.gz"), "--device", "cpu",
               "--probabilities"])
    assert rc == 0
    seg = read_segmentation(tmp_path / "seg.nii.gz")
    assert seg.label_map.same_grid(image) and seg.labels.names[0] == "liver"
    probs = read_volume(tmp_path / "seg.probabilities.nii.gz")
    assert probs.array.shape == (7,) + shape
    np.testing.assert_allclose(probs.array.sum(0), 1.0, atol=1e-3)


def test_segment_cli_errors(tmp_path: Path):
    assert main(["segment", str(tmp_path / "missing.nii.gz"), str(tmp_path / "o.nii.gz")]) == 1
    with pytest.raises(SystemExit):
        main(["segment", "a", "b", "--device", "tpu"])


def test_train_cli_argument_errors(tmp_path: Path, caplog):
    assert main(["train"]) == 1
    assert "needs DATA and OUTPUT" in caplog.text
    assert main(["train", str(tmp_path), str(tmp_path / "out")]) == 1
    assert "no dataset.json and no imagesTr" in caplog.text


def test_train_cli_interactive_calls_the_learned_engine(tmp_path: Path, caplog):
    assert main(["train", str(tmp_path), str(tmp_path / "out"), "--interactive"]) == 1
    assert "--interactive needs" in caplog.text
    pytest.importorskip("medseg.interactive.learned")
    rc = main(["train", str(tmp_path / "ph"), str(tmp_path / "out"), "--interactive", "--phantoms", "1",
               "--iterations", "2"])
    assert rc == 0
    assert (tmp_path / "out" / "interactive_model.safetensors").is_file()
