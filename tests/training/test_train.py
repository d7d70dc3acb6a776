"""Training end to end on CPU: tiny model on generated phantoms, held-out Dice, grids, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.core.errors import CheckpointError, ConfigError, InputError
from medseg.inference import segment
from medseg.analysis.metrics import dice
from medseg.models import config_from_mapping, load_model
from medseg.models.checkpoint import load_weights
from medseg.samples.phantom import make_phantom
from medseg.training import TrainingConfig, train
from medseg.training.phantom_dataset import write_phantom_dataset

from inference.grids import KINDS, grid  # tests/inference/grids.py

LARGE = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left"}
TINY = {
    "name": "tiny_phantom",
    "network": {"name": "unet", "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    "labels": {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "aorta", 6: "liver_tumor"},
    "preprocessing": {"target_spacing": [6.0, 6.0, 6.0], "intensity": {"kind": "ct_window", "window": [-160.0, 240.0]}},
    "inference": {"patch_size": [32, 40, 48], "sw_batch_size": 1},
    "postprocessing": {n: {"largest_component": True} for n in LARGE.values()},
}
ITERATIONS = 400


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("train") / "data", 6, seed=50)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = tmp_path_factory.mktemp("run")
    tc = TrainingConfig(epochs=2, iterations_per_epoch=ITERATIONS // 2, batch_size=2, learning_rate=5e-3,
                        augment=False, val_every=1, class_weights="none")
    return train(data, out, config=config_from_mapping(TINY), training=tc)


def test_outputs_of_a_run(trained):
    out = trained.output
    for name in ("best.safetensors", "last.safetensors", "model.yaml", "state.pt", "history.json"):
        assert (out / name).is_file(), name
    hist = json.loads((out / "history.json").read_text())
    assert set(hist["val_cases"]).isdisjoint(hist["train_cases"]) and len(hist["history"]) == 2
    last = hist["history"][-1]
    if hist["val_cases"]:
        assert set(last["dice"]) == set(TINY["labels"].values()) and set(last["iou"]) == set(last["dice"])


@pytest.mark.parametrize("kind", KINDS)
def test_held_out_phantom_dice_on_any_grid(trained, kind):
    # oblique by 10 degrees: inside the training grids' range (up to 15 degrees)
    shape, affine = grid(kind, (36, 80, 96), (5.0, 3.8, 3.8), centre=(0.0, 5.0, 5.0), degrees=10.0)
    image, ref = make_phantom(shape=shape, affine=affine, seed=999)
    seg = segment(image, model=load_model(trained.output, device="cpu"))
    assert seg.label_map.same_grid(image, atol=1e-9)
    scores = {n: dice(seg.array == i, ref.array == i) for i, n in LARGE.items()}
    assert min(scores.values()) >= 0.8, scores


def test_resume_and_fine_tune(data, trained, tmp_path: Path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained.output, run)
    tc = TrainingConfig(epochs=3, iterations_per_epoch=2, batch_size=1, augment=True,
                        class_weights="auto")
    res = train(data, run, config=config_from_mapping(TINY), training=tc, resume=True)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    before = load_weights(trained.best)
    tuned = train(data, tmp_path / "ft", config=config_from_mapping(TINY), init=trained.best,
                  training=TrainingConfig(epochs=1, iterations_per_epoch=1, batch_size=1))
    after = load_weights(tuned.last)
    assert set(after) == set(before)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(data, tmp_path / "empty", config=config_from_mapping(TINY), training=tc, resume=True)


def test_training_errors(data, tmp_path: Path):
    wrong = dict(TINY, labels={1: "liver", 2: "spleen"}, postprocessing={})
    with pytest.raises(InputError, match="dataset.json labels .* differ"):
        train(data, tmp_path, config=config_from_mapping(wrong))
    with pytest.raises(ConfigError, match="class_weights needs 7 values"):
        train(data, tmp_path, config=config_from_mapping(TINY),
              training=TrainingConfig(epochs=1, iterations_per_epoch=1, class_weights=(1.0, 2.0)))
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        TrainingConfig(epochs=0)
    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        TrainingConfig(learning_rate=0.0)
