"""Geometry conversion point 2: :class:`~medseg.core.volume.Volume` ⇄ MONAI ``MetaTensor``.

medseg: array ``(Z, Y, X)`` (or ``(C, Z, Y, X)``), affine maps the index ``(k, j, i)`` to LPS mm.
MONAI: tensor ``(C, I, J, K)`` in index order (fastest axis first, as nibabel/ITK), affine maps
``(i, j, k)`` to RAS mm. The conversion transposes the spatial axes and changes the affine by
:func:`medseg.core.geometry.reverse_axes` and :func:`medseg.core.geometry.lps_to_ras`; nothing is
resampled, so it is exact and its own inverse.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
from monai.data import MetaTensor

from medseg.core import geometry
from medseg.core.errors import GeometryError
from medseg.core.volume import Volume

__all__ = ["volume_to_metatensor", "metatensor_to_volume", "ras_affine", "lps_affine"]


def ras_affine(affine: np.ndarray) -> np.ndarray:
    """medseg voxel ``(k, j, i)`` → LPS affine to MONAI ``(i, j, k)`` → RAS affine."""
    return geometry.lps_to_ras(geometry.reverse_axes(affine))


def lps_affine(affine: np.ndarray) -> np.ndarray:
    """MONAI ``(i, j, k)`` → RAS affine to medseg ``(k, j, i)`` → LPS affine."""
    return geometry.reverse_axes(geometry.ras_to_lps(affine))


def volume_to_metatensor(volume: Volume, *, dtype: Optional[torch.dtype] = torch.float32) -> MetaTensor:
    """A channel-first MONAI ``MetaTensor`` ``(C, I, J, K)`` with a RAS affine.

    Parameters
    ----------
    volume : Volume
        ``(Z, Y, X)`` (one channel) or ``(C, Z, Y, X)``.
    dtype : torch.dtype or None
        Tensor dtype (None keeps the array's).
    """
    arr = volume.array
    arr = arr[None] if arr.ndim == 3 else arr
    data = torch.as_tensor(np.ascontiguousarray(arr.transpose(0, 3, 2, 1)))
    if dtype is not None:
        data = data.to(dtype)
    meta = {"space": "RAS", "original_channel_dim": 0}
    return MetaTensor(data, affine=torch.as_tensor(ras_affine(volume.affine), dtype=torch.float64), meta=meta)


def metatensor_to_volume(tensor: torch.Tensor, *, meta: Optional[Mapping[str, Any]] = None,
                         squeeze: bool = True) -> Volume:
    """Inverse of :func:`volume_to_metatensor`.

    Parameters
    ----------
    tensor : MetaTensor
        ``(C, I, J, K)`` with a RAS affine (``tensor.meta["space"]`` must be RAS when present).
    meta : mapping, optional
        Provenance for the Volume.
    squeeze : bool
        Return ``(Z, Y, X)`` for a single channel.
    """
    if not isinstance(tensor, MetaTensor):
        raise GeometryError("expected a MONAI MetaTensor carrying an affine; a plain tensor has no geometry")
    space = str(tensor.meta.get("space", "RAS"))
    if space.upper() not in ("RAS", "SPACEKEYS.RAS"):
        raise GeometryError(f"MetaTensor space must be RAS, got {space!r}; convert it with monai's SpaceKeys")
    if tensor.ndim != 4:
        raise GeometryError(f"expected a channel-first (C, I, J, K) MetaTensor, got shape {tuple(tensor.shape)}")
    arr = tensor.detach().cpu().numpy().transpose(0, 3, 2, 1)
    if squeeze and arr.shape[0] == 1:
        arr = arr[0]
    return Volume(np.ascontiguousarray(arr), lps_affine(np.asarray(tensor.affine, dtype=float)), meta or {})
