"""Safe checkpoints: safetensors preferred, ``torch.load(weights_only=True)`` otherwise.

A ``.pt``/``.pth`` file whose pickle stream needs anything beyond tensors and plain containers
(classes, functions: the way malicious checkpoints run code) is refused with
:class:`~medseg.core.errors.CheckpointError`; nothing in it is executed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from medseg.core.errors import CheckpointError
from medseg.io.atomic import atomic_path

__all__ = ["save_weights", "load_weights", "load_state_file", "save_state_file", "apply_weights"]

log = logging.getLogger(__name__)


def save_weights(network: nn.Module | Mapping[str, torch.Tensor], path: str | Path, *,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a state dict as ``.safetensors`` (atomic). ``metadata`` values are JSON-encoded."""
    from safetensors.torch import save_file

    state = network.state_dict() if isinstance(network, nn.Module) else dict(network)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # safetensors refuses tensors that share memory (DynUNet registers its blocks twice): copy repeats
    seen: set[tuple[int, int]] = set()
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        if v.numel() and key in seen:
            state[k] = v.clone()
        seen.add(key)
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    p = Path(path)
    with atomic_path(p) as tmp:
        save_file(state, str(tmp), metadata=meta)
    p.chmod(0o644)
    return p


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or (safely) from a torch ``.pt``/``.pth`` file.

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable, holds a pickle payload beyond plain tensors, or is
        not a mapping of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{p}: not a valid safetensors file ({exc})") from exc
    obj = load_state_file(p)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: expected a state dict (name → tensor), got {type(obj).__name__}; "
                              "save network.state_dict() or use medseg's .safetensors checkpoints")
    return dict(obj)


def load_state_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)``; a pickle payload is refused."""
    p = Path(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{p}: checkpoint not found") from None
    except Exception as exc:  # UnpicklingError, RuntimeError for non-zip files, ...
        raise CheckpointError(
            f"{p}: refused to load: the file carries a pickle payload beyond plain tensors "
            f"(or is not a torch checkpoint): {str(exc).splitlines()[0][:300]}. medseg never unpickles code; "
            "convert it where you trust it with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
        ) from exc


def save_state_file(obj: Any, path: str | Path) -> Path:
    """``torch.save`` (atomic) of tensors and plain containers, re-loadable with weights_only."""
    p = Path(path)
    with atomic_path(p) as tmp:
        torch.save(obj, tmp)
    return p


def apply_weights(network: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> nn.Module:
    """Load ``state`` into ``network`` strictly; a mismatch raises :class:`CheckpointError`."""
    try:
        network.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source}: weights do not match the network of the config: {str(exc).splitlines()[0][:400]}... "
            "check network.name/channels/strides against the model that produced the weights"
        ) from exc
    return network
