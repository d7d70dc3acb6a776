"""Two small networks MONAI does not ship: a dilated/ASPP (DeepLab-style) net and a plain FCN.

Both follow MONAI's constructor words (``spatial_dims``, ``in_channels``, ``out_channels``,
``channels``, ``dropout``) and work in 2D and 3D. Output has the input's spatial size.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution, SimpleASPP
from torch import nn
from torch.nn import functional as F

__all__ = ["DilatedASPPNet", "FCN"]


def _conv(dims: int, cin: int, cout: int, *, strides: int = 1, dilation: int = 1) -> nn.Module:
    return Convolution(dims, cin, cout, strides=strides, kernel_size=3, dilation=dilation,
                       act="PRELU", norm="INSTANCE", padding=dilation)


class DilatedASPPNet(nn.Module):
    """Encoder downsampling 4x, dilated convolutions, an ASPP head, upsampled logits.

    Parameters
    ----------
    spatial_dims : {2, 3}
    in_channels, out_channels : int
    channels : sequence of int
        Features of the stem, the 2x and 4x stages and the dilated stage (>= 3 entries used).
    dilations : sequence of int
        ASPP dilation rates.
    dropout : float
        Dropout before the classifier.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *,
                 channels: Sequence[int] = (16, 32, 64), dilations: Sequence[int] = (1, 2, 4, 6),
                 dropout: float = 0.0) -> None:
        super().__init__()
        c = list(channels) + [channels[-1]] * max(0, 3 - len(channels))
        d = spatial_dims
        self.encoder = nn.Sequential(
            _conv(d, in_channels, c[0]),
            _conv(d, c[0], c[1], strides=2),
            _conv(d, c[1], c[2], strides=2),
            _conv(d, c[2], c[2], dilation=2),
        )
        k = len(dilations)
        self.aspp = SimpleASPP(d, c[2], max(1, c[2] // k), kernel_sizes=[1] + [3] * (k - 1),
                               dilations=list(dilations), norm_type="INSTANCE", acti_type="LEAKYRELU")
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        aspp_out = max(1, c[2] // k) * k
        self.skip = _conv(d, c[0], c[0])
        self.head = nn.Sequential(_conv(d, aspp_out + c[0], c[0]),
                                  Convolution(d, c[0], out_channels, kernel_size=1, conv_only=True))
        self.mode = "trilinear" if d == 3 else "bilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.encoder[0](x)
        y = self.encoder[1:](stem)
        y = self.drop(self.aspp(y))
        y = F.interpolate(y, size=x.shape[2:], mode=self.mode, align_corners=False)
        return self.head(torch.cat([y, self.skip(stem)], dim=1))


class FCN(nn.Module):
    """Fully convolutional encoder/decoder without skip connections.

    Parameters
    ----------
    spatial_dims : {2, 3}
    in_channels, out_channels : int
    channels : sequence of int
        Features per level; ``strides`` between levels (``len(channels) - 1`` entries).
    dropout : float
        Dropout at the bottleneck.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *,
                 channels: Sequence[int] = (16, 32, 64), strides: Sequence[int] = (2, 2),
                 dropout: float = 0.0) -> None:
        super().__init__()
        d = spatial_dims
        layers: list[nn.Module] = [_conv(d, in_channels, channels[0])]
        for cin, cout, s in zip(channels[:-1], channels[1:], strides):
            layers.append(_conv(d, cin, cout, strides=s))
        self.encoder = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = Convolution(d, channels[-1], out_channels, kernel_size=1, conv_only=True)
        self.refine = Convolution(d, out_channels + in_channels, out_channels, kernel_size=3, conv_only=True)
        self.mode = "trilinear" if d == 3 else "bilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(self.drop(self.encoder(x)))
        y = F.interpolate(y, size=x.shape[2:], mode=self.mode, align_corners=False)
        return y + self.refine(torch.cat([y, x], dim=1))
