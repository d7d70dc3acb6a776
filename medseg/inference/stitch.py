"""MONAI sliding-window inference stitched slab by slab, for class maps of large volumes.

:func:`monai.inferers.sliding_window_inference` keeps the weighted sum of every window's
output and the sum of weights for the *whole* volume (``C + 1`` float32 values per voxel)
before it divides. When only the class map is wanted, :func:`sliding_window_slabs` runs the
same windows (MONAI's :func:`~monai.data.utils.dense_patch_slices` with MONAI's scan
interval), weights them with the same importance map
(:func:`~monai.data.utils.compute_importance_map`) and pads small volumes the same way, but
visits the windows one row at a time along one axis and hands out each slab as soon as no
later window touches it. The accumulators then span one window (``roi[axis]`` voxels) along
that axis instead of the whole volume.

Along axis 0 (the outermost axis of MONAI's window order) and with one window per network call,
every voxel receives the same window outputs in the same order as in MONAI, so the result is
bit for bit MONAI's; otherwise it differs by float rounding.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch.nn import functional as F

from medseg.errors import InputError

__all__ = ["sliding_window_slabs", "scan_interval", "slab_axis", "argmax_channels"]


def scan_interval(image_size: Sequence[int], roi: Sequence[int], overlap: float) -> tuple[int, ...]:
    """MONAI's window step per axis: ``int(roi * (1 - overlap))`` (at least 1; ``roi`` when it fills the axis)."""
    return tuple(r if r == s else max(1, int(r * (1 - overlap))) for s, r in zip(image_size, roi))


def slab_axis(image_size: Sequence[int], roi: Sequence[int]) -> int:
    """The axis to stitch along: 0 (bit-identical to MONAI) unless another needs under half the memory.

    The accumulators hold ``min(roi[a], size[a])`` slices of the cross-section along axis ``a``.
    """
    size = [max(s, r) for s, r in zip(image_size, roi)]
    total = math.prod(size)
    need = [min(roi[a], size[a]) * total // size[a] for a in range(len(size))]
    best = min(range(len(size)), key=lambda a: need[a])
    return best if need[best] * 2 < need[0] else 0


def sliding_window_slabs(
    inputs: torch.Tensor,
    roi: Sequence[int],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    *,
    overlap: float,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    padding_mode: str = "replicate",
    sw_device: "torch.device | str | None" = None,
    device: "torch.device | str | None" = None,
    axis: Optional[int] = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Sliding-window inference of a ``(1, C_in, *spatial)`` tensor, yielded in finished slabs.

    Parameters
    ----------
    inputs : (1, C_in, *spatial) tensor
        One image, MONAI index order.
    roi : sequence of int
        Window size per spatial axis.
    predictor : callable
        ``(B, C_in, *roi)`` → ``(B, C, *roi)``; it is called once per batch of windows.
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).
    mode : {"gaussian", "constant"}
        Blending of overlapping windows (MONAI's importance map).
    sw_batch_size : int
        Windows per predictor call (taken from one row).
    padding_mode : str
        How an axis shorter than the window is padded (MONAI's pad, then cropped back).
    sw_device, device : torch.device or str, optional
        Where windows run and where the accumulators live (default: the input's device).
    axis : int, optional
        Spatial axis to stitch along; default :func:`slab_axis`.

    Yields
    ------
    slab : slice
        Range along ``axis`` (input coordinates), consecutive and covering the axis once.
    output : (C, ...) float32 tensor
        The blended outputs on that slab (full extent along the other axes), on ``device``.

    Notes
    -----
    Memory: ``(C + 1) × 4`` bytes per voxel of ``roi[axis]`` slices (a ring allocated once),
    instead of the whole volume. The number of network calls equals MONAI's. A yielded
    tensor is a view into the ring: use it (in place if you like) before the next one.
    """
    from monai.data.utils import compute_importance_map, dense_patch_slices

    if inputs.ndim < 3 or inputs.shape[0] != 1:
        raise InputError(f"inputs must be one image (1, C, *spatial), got shape {tuple(inputs.shape)}; "
                         "run the images of a batch one by one")
    nd = inputs.ndim - 2
    roi = [int(r) for r in roi]
    sw_device = torch.device(sw_device) if sw_device is not None else inputs.device
    device = torch.device(device) if device is not None else inputs.device
    size0 = list(inputs.shape[2:])
    # MONAI pads axes shorter than the window: half before, the rest after
    before = [max(r - s, 0) // 2 for s, r in zip(size0, roi)]
    pad: list[int] = []
    for d in reversed(range(nd)):
        diff = max(roi[d] - size0[d], 0)
        pad += [diff // 2, diff - diff // 2]
    if any(pad):
        inputs = F.pad(inputs, pad=pad, mode=padding_mode)
    size = list(inputs.shape[2:])
    axis = slab_axis(size, roi) if axis is None else int(axis)
    windows = dense_patch_slices(size, roi, scan_interval(size, roi, overlap))
    weight = compute_importance_map(tuple(roi), mode=mode, device=sw_device, dtype=inputs.dtype)[None, None]
    weight_out = weight[0].to(device)

    # rows of windows along the axis, in MONAI's order within each row
    starts = sorted({w[axis].start for w in windows})
    rows = {s: [w for w in windows if w[axis].start == s] for s in starts}
    # accumulators: a ring of one window's depth along the axis, allocated once; global slice g
    # lives at g % depth (the slices in use, [row start, row start + roi), never collide)
    depth = roi[axis]
    acc: Optional[torch.Tensor] = None  # (C, ...) weighted sums
    count: Optional[torch.Tensor] = None  # (1, ...) sums of weights
    final = 0     # slices before this one (padded coordinates) are finished
    emitted = 0   # the same, in input coordinates

    def ring(lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
        """Global range [lo, hi) as (global start, global stop, ring start) pieces."""
        while lo < hi:
            r0 = lo % depth
            n = min(hi - lo, depth - r0)
            yield lo, lo + n, r0
            lo += n

    def along(sl: slice, other: Optional[Sequence[slice]] = None) -> tuple[slice, ...]:
        index = [slice(None)] + [slice(None) if other is None else other[d] for d in range(nd)]
        index[1 + axis] = sl
        return tuple(index)

    for r, s in enumerate(starts):
        row = rows[s]
        for b0 in range(0, len(row), sw_batch_size):
            batch = row[b0:b0 + sw_batch_size]
            win = torch.cat([inputs[(slice(None), slice(None)) + tuple(w)] for w in batch]).to(sw_device)
            out = predictor(win)
            for p, w in zip(out, batch):
                p = (p[None].to(inputs.dtype) * weight)[0].to(device)
                if acc is None:
                    shape = list(size)
                    shape[axis] = depth
                    acc = torch.zeros([p.shape[0]] + shape, dtype=inputs.dtype, device=device)
                    count = torch.zeros([1] + shape, dtype=inputs.dtype, device=device)
                for g0, g1, r0 in ring(w[axis].start, w[axis].stop):
                    dst = along(slice(r0, r0 + g1 - g0), w)
                    src = along(slice(g0 - w[axis].start, g1 - w[axis].start))
                    acc[dst] += p[src]
                    count[dst] += weight_out[src]
        done_to = starts[r + 1] if r + 1 < len(starts) else size[axis]
        for g0, g1, r0 in ring(final, done_to):
            index = along(slice(r0, r0 + g1 - g0))
            part = acc[index]
            part /= count[index]
            # crop MONAI's padding
            lo, hi = max(g0, before[axis]), min(g1, before[axis] + size0[axis])
            if hi > lo:
                crop = [slice(b, b + n) for b, n in zip(before, size0)]
                crop[axis] = slice(lo - g0, hi - g0)
                emitted = hi - before[axis]
                yield slice(lo - before[axis], emitted), part[(slice(None),) + tuple(crop)]
            del part
            acc[index] = 0
            count[index] = 0
        final = done_to
    if emitted != size0[axis]:  # pragma: no cover - guards the block bookkeeping
        raise RuntimeError(f"stitching covered {emitted} of {size0[axis]} slices along axis {axis}")


def argmax_channels(x: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Index of the largest channel of a (C, ...) tensor (first on ties), as ``dtype``.

    A running maximum over channels: C passes over the grid, no int64 temporaries.
    """
    best = x[0].clone()
    out = torch.zeros(x.shape[1:], dtype=dtype, device=x.device)
    for c in range(1, x.shape[0]):
        better = x[c] > best
        out.masked_fill_(better, c)
        torch.maximum(best, x[c], out=best)
    return out
