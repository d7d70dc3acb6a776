"""Segmentation models: YAML configs, a whitelist of networks, safe checkpoints, MONAI bundles.

Importing this package does not import torch; :func:`load_model` does.

>>> from medseg.models import load_model, list_models
>>> model = load_model()                 # the bundled default (phantom CT) model, loaded once
>>> [m.name for m in list_models()]      # bundled configs
"""

from __future__ import annotations

from medseg.models.config import (
    IntensityConfig,
    InferenceConfig,
    ModelConfig,
    NetworkConfig,
    PostprocessingConfig,
    PreprocessingConfig,
    config_from_mapping,
    config_to_mapping,
    load_config,
)
from medseg.models.loader import DEFAULT_MODEL, LoadedModel, ModelInfo, list_models, load_model, resolve_device

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelInfo",
    "ModelConfig",
    "NetworkConfig",
    "IntensityConfig",
    "PreprocessingConfig",
    "InferenceConfig",
    "PostprocessingConfig",
    "load_model",
    "list_models",
    "load_config",
    "config_from_mapping",
    "config_to_mapping",
    "resolve_device",
]
