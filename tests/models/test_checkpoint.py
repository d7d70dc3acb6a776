"""Checkpoints: safetensors and weights-only torch files load; pickle payloads are refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from medseg.core.errors import CheckpointError, ConfigError, ModelError
from medseg.models import NetworkConfig, load_model
from medseg.models.checkpoint import apply_weights, load_state_file, load_weights, save_weights
from medseg.models.loader import config_from_checkpoint, resolve_device
from medseg.models.registry import build_network


def _net():
    return build_network(NetworkConfig("unet", 3, (4, 8), (2,)), in_channels=1, out_channels=3)


def test_safetensors_round_trip(tmp_path: Path):
    net = _net()
    p = save_weights(net, tmp_path / "w.safetensors")
    state = load_weights(p)
    other = apply_weights(_net(), state)
    for k, v in net.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


def test_plain_torch_state_dict_loads(tmp_path: Path):
    net = _net()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    assert set(load_weights(tmp_path / "w.pt")) == set(net.state_dict())
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w2.pt")
    assert set(load_weights(tmp_path / "w2.pt")) == set(net.state_dict())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_payload_is_refused(tmp_path: Path, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Evil()}, p)
    with pytest.raises(CheckpointError, match="refused to load: the file carries a pickle payload"):
        load_weights(p)
    assert "pwned" not in capsys.readouterr().out


def test_raw_pickle_file_is_refused(tmp_path: Path):
    p = tmp_path / "raw.pth"
    p.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_state_file(p)


def test_non_state_dict_is_refused(tmp_path: Path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_weights(tmp_path / "list.pt")


def test_missing_and_corrupt_checkpoints(tmp_path: Path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_weights(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_state_file(tmp_path / "nope.pt")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_weights(bad)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        config_from_checkpoint(bad)


def test_weights_of_another_network_are_refused(tmp_path: Path):
    other = build_network(NetworkConfig("unet", 3, (4, 16), (2,)), in_channels=1, out_channels=3)
    with pytest.raises(CheckpointError, match="weights do not match the network"):
        apply_weights(_net(), other.state_dict())


def test_checkpoint_without_config(tmp_path: Path):
    p = save_weights(_net(), tmp_path / "w.safetensors")
    with pytest.raises(ConfigError, match="carries no medseg config"):
        load_model(p)


def test_model_lookup_errors(tmp_path: Path):
    with pytest.raises(ModelError, match="neither a file/folder nor a bundled model"):
        load_model("no_such_model")
    with pytest.raises(ModelError, match="has no weights"):
        load_model("unet2d_axial")
    (tmp_path / "x").mkdir()
    with pytest.raises(ModelError, match="must be a MONAI bundle"):
        load_model(tmp_path / "x")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ModelError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda")
