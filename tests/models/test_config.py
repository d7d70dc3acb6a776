"""Model configs load strictly: one test per error, each naming the file/key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from medseg.core.errors import ConfigError
from medseg.models import config_from_mapping, config_to_mapping, load_config

BASE = {
    "name": "t",
    "network": {"name": "unet", "spatial_dims": 3, "channels": [4, 8, 16], "strides": [2, 2]},
    "labels": {1: "liver", 2: "spleen"},
    "inference": {"patch_size": [16, 16, 16]},
}


def _with(path: str, value):
    data = copy.deepcopy(BASE)
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return data


def test_bundled_configs_round_trip():
    from medseg.models.loader import _model_yamls

    for p in _model_yamls():
        cfg = load_config(p)
        assert config_from_mapping(config_to_mapping(cfg)) == cfg


def test_yaml_file_errors_name_the_file(tmp_path: Path):
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(_with("network.depth", 3)))
    with pytest.raises(ConfigError, match=r"m\.yaml: unknown key 'network\.depth'"):
        load_config(p)


@pytest.mark.parametrize("path,value,match", [
    ("colour", "red", r"unknown key 'colour'"),
    ("preprocessing.intensity.gamma", 1.0, r"unknown key 'preprocessing\.intensity\.gamma'"),
    ("network.name", "resnet_from_url", r"network\.name must be one of"),
    ("network.channels", "16,32", r"network\.channels must be a list"),
    ("network.dropout", 1.5, r"dropout must be in \[0, 1\)"),
    ("network.channels", [4, 0, 16], r"channels must be positive"),
    ("network.strides", [2], r"strides needs len\(channels\) - 1 = 2"),
    ("network", {"name": "swinunetr", "feature_size": 20}, r"multiple of 12"),
    ("preprocessing.intensity.window", [200.0, -100.0], r"low < high"),
    ("preprocessing.intensity.percentiles", [50.0, 10.0], r"0 <= low < high <= 100"),
    ("preprocessing.intensity.kind", "histogram", r"kind must be one of"),
    ("preprocessing.target_spacing", [-1.0, 1.0, 1.0], r"target_spacing must be >= 0"),
    ("preprocessing.target_spacing", [1.0, 1.0], r"must have 3 items"),
    ("preprocessing.orientation", "RAA", r"3-letter code"),
    ("inference.overlap", 1.0, r"overlap must be in \[0, 1\)"),
    ("inference.patch_size", [16, 0, 16], r"patch_size must be positive"),
    ("inference.sw_batch_size", 0, r"sw_batch_size must be >= 1"),
    ("inference.patch_size", [16, 10, 16], r"multiples of the network's downsampling factor 4"),
    ("inference.blending", "max", r"blending must be one of"),
    ("labels", {1: "liver", 3: "spleen"}, r"indexed 1\.\.N without gaps"),
    ("postprocessing", {"kidney": {"largest_component": True}}, r"unknown label 'kidney'"),
    ("postprocessing", {"liver": {"largest_component": "yes"}}, r"must be true or false"),
    ("in_channels", 0, r"in_channels must be >= 1"),
    ("modality", "PET", r"modality must be one of"),
])
def test_config_error(path, value, match):
    with pytest.raises(ConfigError, match=match):
        config_from_mapping(_with(path, value), source="test.yaml")


def test_missing_required_key():
    data = copy.deepcopy(BASE)
    del data["labels"]
    with pytest.raises(ConfigError, match=r"missing required key 'labels'"):
        config_from_mapping(data, source="test.yaml")


def test_config_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"test\.yaml: a model config must be a mapping"):
        config_from_mapping(["unet"], source="test.yaml")


def test_two_d_patch_ignores_the_slice_axis():
    data = _with("network.spatial_dims", 2)
    data["inference"] = {"patch_size": [1, 16, 16], "slice_axis": "axial"}
    assert config_from_mapping(data).network.spatial_dims == 2


@pytest.mark.parametrize("orientation, plane, expected", [
    ("RAS", "axial", 2), ("SPL", "axial", 0), ("RAS", "coronal", 1), ("PSL", "coronal", 0),
    ("RAS", "sagittal", 0), ("ILA", "sagittal", 1),
])
def test_slice_dim_is_the_model_grid_axis_normal_to_the_slices(orientation, plane, expected):
    """One answer for inference, training and bundle export: which model-grid axis a 2D model
    slides along (the axis whose orientation letter is S/I, A/P or R/L for axial, coronal,
    sagittal slices); None for a 3D model."""
    from dataclasses import replace

    from medseg.models.config import slice_dim

    cfg = config_from_mapping({"name": "m", "network": {"name": "unet", "spatial_dims": 2, "channels": [4, 8],
                                                        "strides": [2]}, "labels": {1: "a"}})
    cfg = replace(cfg, preprocessing=replace(cfg.preprocessing, orientation=orientation),
                  inference=replace(cfg.inference, slice_axis=plane))
    assert slice_dim(cfg) == expected
    assert orientation[expected] in {"axial": "SI", "coronal": "AP", "sagittal": "RL"}[plane]
    assert slice_dim(replace(cfg, network=replace(cfg.network, spatial_dims=3))) is None
