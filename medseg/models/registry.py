"""Whitelist of networks: a :class:`NetworkConfig` name → a MONAI (or medseg) module.

Nothing here imports by a path taken from a config file; only the names below can be built.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from medseg.errors import ModelError
from medseg.models.config import NetworkConfig

__all__ = ["build_network", "NETWORK_BUILDERS"]


def _unet(cfg: NetworkConfig, cin: int, cout: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(cfg.spatial_dims, cin, cout, channels=cfg.channels, strides=cfg.strides,
                num_res_units=cfg.num_res_units, dropout=cfg.dropout, norm="INSTANCE")


def _dynunet(cfg: NetworkConfig, cin: int, cout: int) -> nn.Module:
    from monai.networks.nets import DynUNet

    n = len(cfg.channels)
    return DynUNet(cfg.spatial_dims, cin, cout, kernel_size=[3] * n, strides=[1, *cfg.strides],
                   upsample_kernel_size=list(cfg.strides), filters=list(cfg.channels),
                   dropout=cfg.dropout or None, res_block=cfg.num_res_units > 0)


def _segresnet(cfg: NetworkConfig, cin: int, cout: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(cfg.spatial_dims, init_filters=cfg.channels[0], in_channels=cin, out_channels=cout,
                     dropout_prob=cfg.dropout or None)


def _swinunetr(cfg: NetworkConfig, cin: int, cout: int) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=cin, out_channels=cout, feature_size=cfg.feature_size,
                     spatial_dims=cfg.spatial_dims, drop_rate=cfg.dropout)


def _deeplab(cfg: NetworkConfig, cin: int, cout: int) -> nn.Module:
    from medseg.models.networks import DilatedASPPNet

    return DilatedASPPNet(cfg.spatial_dims, cin, cout, channels=cfg.channels, dilations=cfg.dilations,
                          dropout=cfg.dropout)


def _fcn(cfg: NetworkConfig, cin: int, cout: int) -> nn.Module:
    from medseg.models.networks import FCN

    return FCN(cfg.spatial_dims, cin, cout, channels=cfg.channels, strides=cfg.strides, dropout=cfg.dropout)


NETWORK_BUILDERS: dict[str, Callable[[NetworkConfig, int, int], nn.Module]] = {
    "unet": _unet,
    "dynunet": _dynunet,
    "segresnet": _segresnet,
    "swinunetr": _swinunetr,
    "deeplab": _deeplab,
    "fcn": _fcn,
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
        return builder(config, in_channels, out_channels)
    except (ValueError, TypeError, AssertionError) as exc:
        raise ModelError(f"cannot build network {config.name!r} from {config}: {exc}") from exc
