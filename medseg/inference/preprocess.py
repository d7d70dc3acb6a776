"""Model preprocessing (orientation, spacing, intensity) and its exact inverse.

The forward path uses MONAI transforms on a MetaTensor (the same ones a MONAI bundle runs);
the inverse maps every voxel of the *input* grid through the two affines into the model grid
and interpolates there (trilinear for probabilities, nearest for labels), slab by slab, so
outputs always land on the input grid with bounded memory.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
import torch
from monai.data import MetaTensor
from torch.nn import functional as F

from medseg import geometry
from medseg.errors import InputError
from medseg.inference.convert import ras_affine, volume_to_metatensor
from medseg.models.config import IntensityConfig, PreprocessingConfig
from medseg.volume import Volume

__all__ = ["is_permutation", "spatial_transforms", "intensity_transform", "preprocess_volume", "preprocess_labels",
           "model_axes", "map_to_input_grid", "input_slabs"]


def monai_pixdim(config: PreprocessingConfig) -> tuple[float, float, float]:
    """Target spacing in MONAI's ``(i, j, k)`` order, for the axes *after* reorientation.

    ``target_spacing`` is ``(z, y, x)``: S/I gets z, A/P gets y, R/L gets x.
    """
    sz, sy, sx = config.target_spacing
    by = {"R": sx, "L": sx, "A": sy, "P": sy, "S": sz, "I": sz}
    return tuple(float(by[c]) for c in config.orientation.upper())  # type: ignore[return-value]


def model_axes(config: PreprocessingConfig) -> tuple[int, int, int]:
    """For each model-grid tensor axis, the medseg array axis (0=z, 1=y, 2=x) it corresponds to."""
    by = {"R": 2, "L": 2, "A": 1, "P": 1, "S": 0, "I": 0}
    return tuple(by[c] for c in config.orientation.upper())  # type: ignore[return-value]


def spatial_transforms(config: PreprocessingConfig, *, labels: bool = False) -> list:
    """MONAI ``Orientation`` + ``Spacing`` (bilinear for images, nearest for labels)."""
    from monai.transforms import Orientation, Spacing

    return [Orientation(axcodes=config.orientation.upper(), labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacing(pixdim=monai_pixdim(config), mode="nearest" if labels else "bilinear",
                    padding_mode="border", dtype=np.float32, diagonal=config.axis_aligned)]


def intensity_transform(config: IntensityConfig) -> Optional[Callable]:
    """The MONAI intensity transform for ``config`` (None for ``kind: none``)."""
    from monai.transforms import NormalizeIntensity, ScaleIntensityRange, ScaleIntensityRangePercentiles

    if config.kind == "ct_window":
        return ScaleIntensityRange(a_min=config.window[0], a_max=config.window[1], b_min=0.0, b_max=1.0, clip=True)
    if config.kind == "mr_percentile":
        return ScaleIntensityRangePercentiles(lower=config.percentiles[0], upper=config.percentiles[1],
                                              b_min=0.0, b_max=1.0, clip=True, channel_wise=True)
    if config.kind == "mr_zscore":
        return NormalizeIntensity(nonzero=True, channel_wise=True)
    return None


def preprocess_volume(volume: Volume, config: PreprocessingConfig) -> MetaTensor:
    """Input volume → ``(C, I, J, K)`` float32 MetaTensor on the model grid, normalised."""
    x = volume_to_metatensor(volume)
    for t in spatial_transforms(config):
        x = t(x)
    it = intensity_transform(config.intensity)
    if it is not None:
        x = it(x)
    return x.to(torch.float32)


def preprocess_labels(label_map: Volume, config: PreprocessingConfig) -> MetaTensor:
    """Label map → ``(1, I, J, K)`` MetaTensor on the model grid (nearest neighbour only)."""
    x = volume_to_metatensor(label_map, dtype=torch.float32)
    for t in spatial_transforms(config, labels=True):
        x = t(x)
    return x


def input_slabs(shape: tuple[int, int, int], channels: int, *, max_elements: int = 2**25) -> Iterator[slice]:
    """z-slabs of the input grid holding at most ``max_elements`` values for ``channels``."""
    per_slice = max(1, shape[1] * shape[2] * channels)
    step = max(1, max_elements // per_slice)
    for z0 in range(0, shape[0], step):
        yield slice(z0, min(shape[0], z0 + step))


def map_to_input_grid(
    model_tensor: torch.Tensor,
    model_affine: np.ndarray,
    volume: Volume,
    zslice: slice,
    *,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Sample a model-grid tensor at the voxels of one z-slab of the input grid.

    Parameters
    ----------
    model_tensor : (C, I, J, K) tensor
        Values on the model grid (MONAI index order).
    model_affine : (4, 4) ndarray
        Model grid ``(i, j, k)`` → RAS mm.
    volume : Volume
        The input grid (its affine ``(k, j, i)`` → LPS mm and shape).
    zslice : slice
        Input slab along z.
    mode : {"bilinear", "nearest"}
        Trilinear for probabilities, nearest for labels.

    Returns
    -------
    (C, nz, Y, X) tensor
        On the device of ``model_tensor``, in medseg array order.
    """
    if mode not in ("bilinear", "nearest"):
        raise InputError(f"mode must be 'bilinear' or 'nearest' (labels are never interpolated), got {mode!r}")
    dev = model_tensor.device
    # input (k, j, i) → RAS → model (i', j', k')
    m = np.linalg.inv(np.asarray(model_affine, float)) @ geometry.LPS_TO_RAS @ volume.affine
    fast = _permutation_slab(model_tensor, m, volume.shape, zslice)
    if fast is not None:
        return fast
    nz = zslice.stop - zslice.start
    _, ny, nx = volume.shape
    k = torch.arange(zslice.start, zslice.stop, dtype=torch.float32, device=dev)
    j = torch.arange(ny, dtype=torch.float32, device=dev)
    i = torch.arange(nx, dtype=torch.float32, device=dev)
    mt = torch.as_tensor(m, dtype=torch.float32, device=dev)
    sizes = model_tensor.shape[1:]
    grid = torch.empty((nz, ny, nx, 3), dtype=torch.float32, device=dev)
    # grid_sample's last axis is (W, H, D) = model (k', j', i'), normalised with align_corners=True
    for out_axis, model_axis in enumerate((2, 1, 0)):
        row = mt[model_axis]
        coord = (row[0] * k[:, None, None] + row[1] * j[None, :, None] + row[2] * i[None, None, :] + row[3])
        n = sizes[model_axis]
        grid[..., out_axis] = coord * (2.0 / (n - 1)) - 1.0 if n > 1 else coord * 0.0
    out = F.grid_sample(model_tensor[None].float(), grid[None], mode=mode, padding_mode="border",
                        align_corners=True)
    return out[0]


def is_permutation(model_affine: np.ndarray, volume: Volume) -> bool:
    """True when the model grid is the input grid up to axis permutation/flips (no resampling)."""
    m = np.linalg.inv(np.asarray(model_affine, float)) @ geometry.LPS_TO_RAS @ volume.affine
    r = np.round(m[:3, :3])
    return bool(np.allclose(m[:3, :3], r, atol=1e-6) and np.allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-4)
                and np.all(np.abs(r).sum(0) == 1) and np.all(np.abs(r).sum(1) == 1))


def _permutation_slab(model_tensor: torch.Tensor, m: np.ndarray, shape: tuple[int, int, int],
                      zslice: slice) -> Optional[torch.Tensor]:
    """Exact copy when the grids differ only by axis permutation/flips (no interpolation)."""
    lin = m[:3, :3]
    r = np.round(lin)
    t = np.round(m[:3, 3])
    if not (np.allclose(lin, r, atol=1e-6) and np.allclose(m[:3, 3], t, atol=1e-4)
            and np.all(np.abs(r).sum(0) == 1) and np.all(np.abs(r).sum(1) == 1)):
        return None
    # model axis a = sign * input axis b + offset; build index tensors per input axis
    src = model_tensor
    idx = []
    out_axes = []
    for b, size in enumerate(shape):
        a = int(np.nonzero(r[:, b])[0][0])
        sign = r[a, b]
        rng = np.arange(zslice.start, zslice.stop) if b == 0 else np.arange(size)
        pos = (sign * rng + t[a]).astype(np.int64)
        if pos.min() < 0 or pos.max() >= src.shape[1 + a]:
            return None
        idx.append((a, pos))
        out_axes.append(a)
    # gather: permute model axes into input order, then index each axis
    order = [0] + [1 + a for a, _ in idx]
    out = src.permute(order)
    for d, (_, pos) in enumerate(idx):
        out = out.index_select(1 + d, torch.as_tensor(pos, device=src.device))
    return out
