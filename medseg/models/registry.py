"""Whitelist of networks: a :class:`NetworkConfig` name → a MONAI (or medseg) module.

Nothing here imports by a path taken from a config file; only the classes named in
:data:`NETWORK_TARGETS` can be built. :func:`network_spec` is the one place that turns a config
into constructor arguments: :func:`build_network` builds from it and a MONAI bundle's
``network_def`` is written from it (:mod:`medseg.models.bundle`), so both build the same module.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from torch import nn

from medseg.core.errors import ModelError
from medseg.models.config import NetworkConfig

__all__ = ["build_network", "network_spec", "network_config_from_spec", "NETWORK_BUILDERS", "NETWORK_TARGETS"]

#: Network name → fully qualified class (the ``_target_`` of an exported bundle's ``network_def``).
NETWORK_TARGETS: dict[str, str] = {
    "unet": "monai.networks.nets.UNet",
    "dynunet": "monai.networks.nets.DynUNet",
    "segresnet": "monai.networks.nets.SegResNet",
    "swinunetr": "monai.networks.nets.SwinUNETR",
    "deeplab": "medseg.models.networks.DilatedASPPNet",
    "fcn": "medseg.models.networks.FCN",
}


def network_spec(config: NetworkConfig, *, in_channels: int, out_channels: int) -> tuple[str, dict[str, Any]]:
    """Class and constructor keyword arguments of the network ``config`` names.

    Returns
    -------
    target : str
        Fully qualified class name, one of :data:`NETWORK_TARGETS`.
    kwargs : dict
        Plain data (ints, floats, bools, lists, None), JSON-serialisable as they are.

    Raises
    ------
    ModelError
        If the name is not in the whitelist.
    """
    c = config
    common = {"spatial_dims": int(c.spatial_dims), "in_channels": int(in_channels), "out_channels": int(out_channels)}
    if c.name == "unet":
        kwargs = {**common, "channels": list(c.channels), "strides": list(c.strides),
                  "num_res_units": int(c.num_res_units), "dropout": float(c.dropout), "norm": "INSTANCE"}
    elif c.name == "dynunet":
        n = len(c.channels)
        kwargs = {**common, "kernel_size": [3] * n, "strides": [1, *c.strides], "upsample_kernel_size": list(c.strides),
                  "filters": list(c.channels), "dropout": float(c.dropout) or None, "res_block": c.num_res_units > 0}
    elif c.name == "segresnet":
        kwargs = {**common, "init_filters": int(c.channels[0]), "dropout_prob": float(c.dropout) or None}
    elif c.name == "swinunetr":
        kwargs = {**common, "feature_size": int(c.feature_size), "drop_rate": float(c.dropout)}
    elif c.name == "deeplab":
        kwargs = {**common, "channels": list(c.channels), "dilations": list(c.dilations), "dropout": float(c.dropout)}
    elif c.name == "fcn":
        kwargs = {**common, "channels": list(c.channels), "strides": list(c.strides), "dropout": float(c.dropout)}
    else:
        raise ModelError(f"network {c.name!r} is not in the whitelist {sorted(NETWORK_TARGETS)}")
    return NETWORK_TARGETS[c.name], kwargs


def network_config_from_spec(target: str, kwargs: Mapping[str, Any]) -> NetworkConfig:
    """The :class:`NetworkConfig` whose :func:`network_spec` is ``(target, kwargs)`` (inverse mapping).

    ``target`` is a fully qualified name from :data:`NETWORK_TARGETS` (or its last part for MONAI
    classes). Arguments missing from ``kwargs`` take the constructor's defaults; an argument
    medseg would pass differently, or one it does not know, is refused.

    Raises
    ------
    ModelError
        If the target is not whitelisted or the arguments are not ones medseg builds.
    """
    by_target = {t: n for n, t in NETWORK_TARGETS.items()}
    by_target.update({t.rsplit(".", 1)[-1]: n for n, t in NETWORK_TARGETS.items() if t.startswith("monai.")})
    name = by_target.get(target)
    if name is None:
        raise ModelError(f"network target {target!r} is not in medseg's whitelist {sorted(by_target)}")
    k = dict(kwargs)
    dims = int(k.get("spatial_dims", 3))
    drop = float(k.get("dropout") or k.get("dropout_prob") or k.get("drop_rate") or 0.0)
    try:
        if name == "unet":
            cfg = NetworkConfig("unet", dims, tuple(k["channels"]), tuple(k["strides"]), int(k.get("num_res_units", 0)),
                                drop)
        elif name == "dynunet":
            strides = list(k["strides"])
            cfg = NetworkConfig("dynunet", dims, tuple(k["filters"]), tuple(strides[1:]),
                                1 if k.get("res_block") else 0, drop)
        elif name == "segresnet":
            cfg = NetworkConfig("segresnet", dims, (int(k.get("init_filters", 8)),), (), 1, drop)
        elif name == "swinunetr":
            cfg = NetworkConfig("swinunetr", dims, (1,), (), 1, drop, int(k.get("feature_size", 24)))
        elif name == "deeplab":
            cfg = NetworkConfig("deeplab", dims, tuple(k.get("channels", (16, 32, 64))), (), 1, drop,
                                dilations=tuple(k.get("dilations", (1, 2, 4, 6))))
        else:
            cfg = NetworkConfig("fcn", dims, tuple(k.get("channels", (16, 32, 64))), tuple(k.get("strides", (2, 2))),
                                1, drop)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"cannot map {target} arguments {k} to a medseg network: {exc!r}") from exc
    _, ours = network_spec(cfg, in_channels=int(k.get("in_channels", 1)), out_channels=int(k.get("out_channels", 2)))
    differ = sorted(a for a in k if a not in ours or _plain(k[a]) != _plain(ours[a]))
    if differ:
        raise ModelError(f"{target} arguments {differ} ({ {a: k[a] for a in differ} }) differ from what medseg builds "
                         f"for network {name!r} ({ {a: ours.get(a) for a in differ} }); medseg cannot run this network")
    return cfg


def _plain(v: Any) -> Any:
    """Compare lists and tuples alike, numbers by value, enum-like strings without case."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, str):
        return v.upper()
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    return v


def _import(target: str) -> type:
    module, _, cls = target.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def _build(config: NetworkConfig, in_channels: int, out_channels: int) -> nn.Module:
    target, kwargs = network_spec(config, in_channels=in_channels, out_channels=out_channels)
    return _import(target)(**kwargs)


#: Network name → builder ``(config, in_channels, out_channels) → module`` (all via :func:`network_spec`).
NETWORK_BUILDERS: dict[str, Callable[[NetworkConfig, int, int], nn.Module]] = {
    name: _build for name in NETWORK_TARGETS
}


def build_network(config: NetworkConfig, *, in_channels: int, out_channels: int) -> nn.Module:
    """Build the whitelisted network named by ``config.name`` (weights randomly initialised).

    Raises
    ------
    ModelError
        If the name is not in the whitelist or MONAI rejects the arguments.
    """
    try:
        builder = NETWORK_BUILDERS[config.name]
    except KeyError:
        raise ModelError(f"network {config.name!r} is not in the whitelist {sorted(NETWORK_BUILDERS)}") from None
    try:
        _check_parameter_memory(config, lambda: builder(config, in_channels, out_channels))
        return builder(config, in_channels, out_channels)
    except (ValueError, TypeError, AssertionError, RuntimeError, OverflowError) as exc:
        raise ModelError(f"cannot build network {config.name!r} from {config}: {exc}") from exc


def _check_parameter_memory(config: NetworkConfig, build: Callable[[], nn.Module]) -> int:
    """Build the network on PyTorch's ``meta`` device (no memory allocated) and refuse it when its
    parameters would need more bytes than medseg's memory limit (the one volumes obey:
    ``MEDSEG_MAX_VOLUME_BYTES``, by default half the available memory). A corrupt or hostile
    model config (channels of 10**6) is then a named error, not an allocation that eats the
    machine. Returns the parameter bytes (-1 when the constructor cannot run on ``meta``)."""
    import torch

    from medseg.io.limits import human_bytes, max_volume_bytes

    try:
        with torch.device("meta"):
            net = build()
    except (RuntimeError, NotImplementedError):
        # a constructor that reads tensor values while building (MONAI's SwinUNETR calls .item())
        # cannot run on the meta device: that network is built without this check
        return -1
    need = sum(p.numel() * p.element_size() for p in net.parameters())
    limit, source = max_volume_bytes()
    if need > limit:
        raise ModelError(f"network {config.name!r} would need {human_bytes(need)} of parameters, more than the "
                         f"memory limit of {human_bytes(limit)} ({source}); check its channels/features in the model "
                         f"config, or raise the limit with MEDSEG_MAX_VOLUME_BYTES")
    return need
