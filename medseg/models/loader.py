"""Find, load and describe models: bundled configs, YAML files, checkpoints, MONAI bundles."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from medseg.core.errors import CheckpointError, ConfigError, MedsegError, ModelError
from medseg.core.labels import LabelTable
from medseg.models.config import ModelConfig, config_from_mapping, load_config

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelInfo", "load_model", "list_models", "resolve_device",
           "models_dir", "find_config"]

log = logging.getLogger(__name__)

#: Name of the bundled default model (``configs/models/<name>.yaml``).
DEFAULT_MODEL = "phantom_ct_unet"


def models_dir() -> Path:
    """Folder of the bundled model configs (checkout or installed wheel)."""
    return Path(str(files("medseg.configs"))) / "models"


@dataclass(frozen=True)
class ModelInfo:
    """What ``medseg models`` lists: a bundled config and whether it has weights."""

    name: str
    path: Path
    network: str
    spatial_dims: int
    labels: tuple[str, ...]
    trained: bool
    description: str


def list_models() -> list[ModelInfo]:
    """The bundled model configs, sorted by name (no torch import)."""
    out = []
    for p in _model_yamls():
        cfg = load_config(p)
        trained = cfg.weights is not None and (p.parent / cfg.weights).is_file()
        out.append(ModelInfo(cfg.name, p, cfg.network.name, cfg.network.spatial_dims,
                             tuple(cfg.labels[i] for i in sorted(cfg.labels)), trained, cfg.description))
    return out


def _model_yamls() -> list[Path]:
    """Bundled segmentation configs (``interactive_*.yaml`` belong to medseg.interactive)."""
    return [p for p in sorted(models_dir().glob("*.yaml")) if not p.name.startswith("interactive_")]


#: Suffixes of pickled checkpoints, refused by name before any byte is read.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")


def _exists(path: Path) -> bool:
    """``path.exists()``, False for a name the OS refuses (too long, NUL byte)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def find_config(name_or_path: str | Path | None) -> Path:
    """Path of a model config from a bundled name or a file/folder path."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    p = Path(name_or_path)
    if _exists(p):
        return p
    cand = models_dir() / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    names = [m.stem for m in _model_yamls()]
    raise ModelError(f"model {str(name_or_path)!r} is neither a file/folder nor a bundled model; "
                     f"bundled models: {names} (see `medseg models`)")


@dataclass(eq=False)
class LoadedModel:
    """A network with its config, loaded once and reusable (e.g. by batch workers).

    Attributes
    ----------
    config : ModelConfig
    network : torch.nn.Module
        In eval mode, on ``device``.
    device : torch.device
        Where the network runs.
    source : str
        Where it came from (config path, checkpoint or bundle).

    Notes
    -----
    Run it with :func:`medseg.inference.segment` or, for probabilities on the input grid
    (TTA, MC dropout), :func:`medseg.inference.predict_probabilities`.
    """

    config: ModelConfig
    network: "nn.Module"
    device: "torch.device"
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> LabelTable:
        return self.config.label_table

    @property
    def name(self) -> str:
        return self.config.name

    def to(self, device: str) -> "LoadedModel":
        """The same model on another device (``"cpu"``, ``"cuda"``, ``"auto"``)."""
        dev = resolve_device(device)
        return replace(self, network=self.network.to(dev), device=dev)


def resolve_device(device: str | "torch.device" = "auto") -> "torch.device":
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device(device)


def load_model(
    name_or_path: "str | Path | LoadedModel | None" = None,
    *,
    device: str = "auto",
    allow_untrained: bool = False,
    allow_code: bool = False,
) -> LoadedModel:
    """Load a model once for many calls.

    Parameters
    ----------
    name_or_path : str, Path, LoadedModel or None
        ``None`` = the bundled default model; a bundled name (``medseg models``); a model
        ``.yaml``; a ``.safetensors`` checkpoint written by ``medseg train`` (config embedded);
        a training output folder (``model.yaml``); or a MONAI bundle folder.
    device : {"auto", "cpu", "cuda"}
    allow_untrained : bool
        Build a config without weights with random weights (tests, shape checks).
    allow_code : bool
        For MONAI bundles only: allow ``$`` expressions and non-whitelisted ``_target_`` in the
        bundle config. Off by default: such a bundle is refused.

    Raises
    ------
    ModelError, ConfigError, CheckpointError
    """
    if isinstance(name_or_path, LoadedModel):
        return name_or_path if device == "auto" else name_or_path.to(device)
    from medseg.models.checkpoint import apply_weights, load_weights
    from medseg.models.registry import build_network

    path = find_config(name_or_path)
    state = None
    if path.is_dir():
        if (path / "configs").is_dir():
            from medseg.models.bundle import import_bundle

            config, state = import_bundle(path, allow_code=allow_code)
            weights_src = str(path)
        elif (path / "model.yaml").is_file():
            path = path / "model.yaml"
        else:
            raise ModelError(f"{path}: a folder must be a MONAI bundle (configs/) or a training output (model.yaml)")
    if state is None:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise CheckpointError(f"{path}: a pickled PyTorch checkpoint ({path.suffix}); medseg never unpickles "
                                  f"(loading a pickle can run any code). Convert it to .safetensors with the tool "
                                  f"that made it, or pass a model .yaml, a training folder or a MONAI bundle")
        if path.suffix == ".safetensors":
            config = config_from_checkpoint(path)
            weights = path
        else:
            config = load_config(path)
            weights = (path.parent / config.weights) if config.weights else None
        if weights is None or not _exists(weights) or not weights.is_file():
            if not allow_untrained:
                raise ModelError(f"{path}: model {config.name!r} has no weights "
                                 f"({'none configured' if weights is None else f'{weights} missing'}); train it "
                                 f"with `medseg train --config {path} ...` or pass a trained model")
            state = None
        else:
            state = load_weights(weights)
        weights_src = str(weights) if weights is not None else "untrained"
    try:
        network = build_network(config.network, in_channels=config.in_channels, out_channels=config.out_channels)
    except MedsegError:
        raise
    except (ValueError, TypeError, ZeroDivisionError, ArithmeticError, IndexError, KeyError, RuntimeError) as exc:
        # MONAI's constructors check little: a stride of 0 fails deep inside (found by fuzzing)
        raise ModelError(f"{path}: cannot build network {config.network.name!r} from its settings "
                         f"({type(exc).__name__}: {str(exc)[:200]}); check channels, strides and sizes") from exc
    if state is not None:
        apply_weights(network, state, source=weights_src)
    dev = resolve_device(device)
    network = network.to(dev).eval()
    log.info("loaded model %s from %s on %s", config.name, weights_src, dev)
    return LoadedModel(config, network, dev, source=str(path))


def config_from_checkpoint(path: str | Path) -> ModelConfig:
    """The model config that ``medseg train`` embeds in a ``.safetensors`` checkpoint."""
    from safetensors import safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{p}: not a valid safetensors file ({exc})") from exc
    if "medseg_config" not in meta:
        raise ConfigError(f"{p}: checkpoint carries no medseg config; pass the model .yaml instead "
                          "(its `weights:` key pointing to this file)")
    return config_from_mapping(json.loads(meta["medseg_config"]), source=f"{p} (embedded config)")
