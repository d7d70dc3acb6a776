"""Every whitelisted network builds from a config and maps (N, C, *patch) to (N, labels+1, *patch)."""

from __future__ import annotations

import pytest
import torch

from medseg.core.errors import ModelError
from medseg.models import NetworkConfig, list_models, load_config
from medseg.models.registry import build_network

CASES = [  # (network config, input spatial shape)
    (NetworkConfig("unet", 3, (4, 8, 16), (2, 2)), (16, 24, 32)),
    (NetworkConfig("unet", 2, (4, 8, 16), (2, 2), dropout=0.2), (32, 24)),
    (NetworkConfig("dynunet", 3, (4, 8, 16), (2, 2)), (16, 16, 24)),
    (NetworkConfig("dynunet", 2, (4, 8, 16), (2, 2)), (32, 40)),
    (NetworkConfig("segresnet", 3, (8,), ()), (16, 16, 24)),
    (NetworkConfig("segresnet", 2, (8,), ()), (32, 24)),
    (NetworkConfig("swinunetr", 3, (1,), (), feature_size=12), (64, 64, 64)),
    (NetworkConfig("deeplab", 3, (4, 8, 16), (), dilations=(1, 2, 3)), (16, 20, 24)),
    (NetworkConfig("deeplab", 2, (4, 8, 16), (), dropout=0.1), (36, 28)),
    (NetworkConfig("fcn", 2, (4, 8, 16), (2, 2)), (32, 24)),
    (NetworkConfig("fcn", 3, (4, 8), (2,)), (16, 16, 12)),
]


@pytest.mark.parametrize("cfg,shape", CASES, ids=[f"{c.name}{c.spatial_dims}d" for c, _ in CASES])
def test_network_shapes(cfg, shape):
    net = build_network(cfg, in_channels=1, out_channels=3).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *shape))
    assert tuple(out.shape) == (2, 3, *shape)


def test_dropout_reaches_the_network():
    net = build_network(NetworkConfig("unet", 3, (4, 8), (2,), dropout=0.3), in_channels=1, out_channels=2)
    rates = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates and all(r == 0.3 for r in rates)


@pytest.mark.parametrize("info", list_models(), ids=lambda m: m.name)
def test_every_bundled_config_builds_and_runs(info):
    cfg = load_config(info.path)
    net = build_network(cfg.network, in_channels=cfg.in_channels, out_channels=cfg.out_channels).eval()
    ds = cfg.network.downsampling
    shape = (ds * 2,) * 3 if cfg.network.spatial_dims == 3 else (ds * 2, ds * 2)
    if cfg.network.name == "swinunetr":
        shape = (64, 64, 64)
    with torch.no_grad():
        out = net(torch.zeros(1, cfg.in_channels, *shape))
    assert out.shape[1] == len(cfg.labels) + 1


def test_unknown_network_is_refused():
    cfg = NetworkConfig("unet", 3, (4, 8), (2,))
    object.__setattr__(cfg, "name", "os.system")
    with pytest.raises(ModelError, match="not in the whitelist"):
        build_network(cfg, in_channels=1, out_channels=2)


def test_bad_network_arguments_raise_model_error():
    cfg = NetworkConfig("segresnet", 3, (4,), ())  # GroupNorm needs multiples of 8
    with pytest.raises(ModelError, match="cannot build network"):
        build_network(cfg, in_channels=1, out_channels=2)
