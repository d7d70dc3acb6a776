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

:func:`sliding_window_tiles` goes further: the volume is cut at every window start and stop
into tiles, each accumulated on its own and handed out when its last window has run, and the
windows are visited in the axis order that holds the fewest voxels at once
(:func:`tile_order`). Only a band of the overlap's depth across the outermost axis stays held:
for the bundled model's 80 x 64 x 48 windows, 21 MB instead of an 80 MB slab on a
256 x 256 x 128 grid, 109 MB instead of 375 MB on 512 x 512 x 300 (7 classes, float32).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch.nn import functional as F

from medseg.errors import InputError

__all__ = ["sliding_window_slabs", "sliding_window_tiles", "tile_order", "scan_interval", "slab_axis", "argmax_channels"]


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


def _tile_grid(size: Sequence[int], roi: Sequence[int], windows) -> tuple[list[list[int]], list[list[int]]]:
    """Per axis: the cuts (every window start and stop) and how many windows cover each interval between cuts."""
    cuts, cover = [], []
    for a in range(len(size)):
        starts = sorted({w[a].start for w in windows})
        c = sorted({0, int(size[a])} | set(starts) | {s + roi[a] for s in starts})
        cuts.append(c)
        cover.append([sum(1 for s in starts if s <= lo and hi <= s + roi[a]) for lo, hi in zip(c[:-1], c[1:])])
    return cuts, cover


def _tiles_of(window, cuts) -> list[range]:
    """Per axis, the tile indices a window covers (its start and stop are cuts)."""
    return [range(c.index(w.start), c.index(w.stop)) for w, c in zip(window, cuts)]


def _live_peak(windows, cuts, cover, order: Sequence[int]) -> int:
    """Most voxels held at once by :func:`sliding_window_tiles` visiting ``windows`` in ``order``."""
    import itertools

    windows = sorted(windows, key=lambda w: tuple(w[a].start for a in order))
    widths = [[hi - lo for lo, hi in zip(c[:-1], c[1:])] for c in cuts]
    left: dict = {}
    live = peak = 0
    for w in windows:
        tiles = list(itertools.product(*_tiles_of(w, cuts)))
        for t in tiles:
            if t not in left:
                left[t] = math.prod(cover[a][k] for a, k in enumerate(t))
                live += math.prod(widths[a][k] for a, k in enumerate(t))
        peak = max(peak, live)
        for t in tiles:
            left[t] -= 1
            if left[t] == 0:
                live -= math.prod(widths[a][k] for a, k in enumerate(t))
    return peak


def tile_order(image_size: Sequence[int], roi: Sequence[int], overlap: float) -> tuple[int, ...]:
    """The window visiting order (outermost axis first) that holds the fewest voxels at once.

    MONAI's order ``(0, 1, ..., n - 1)`` (bit for bit MONAI's sums) unless another holds fewer:
    the tiles that wait for later windows form a band of the overlap's depth across the
    outermost axis, so the best outermost axis is the one with the smallest cross-section
    times overlap, which depends on how the last (shifted) window of each axis falls.
    """
    import itertools

    from monai.data.utils import dense_patch_slices

    size = [max(int(s), int(r)) for s, r in zip(image_size, roi)]
    windows = dense_patch_slices(size, roi, scan_interval(size, roi, overlap))
    cuts, cover = _tile_grid(size, roi, windows)
    orders = list(itertools.permutations(range(len(size))))
    peaks = {o: _live_peak(windows, cuts, cover, o) for o in orders}
    return min(orders, key=lambda o: (peaks[o], o != orders[0]))


def sliding_window_tiles(
    inputs,
    roi: Sequence[int],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    *,
    overlap: float,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    padding_mode: str = "replicate",
    sw_device: "torch.device | str | None" = None,
    device: "torch.device | str | None" = None,
    order: Optional[Sequence[int]] = None,
    accumulate_dtype: Optional[torch.dtype] = None,
) -> Iterator[tuple[tuple[slice, ...], torch.Tensor]]:
    """Sliding-window inference of one image, yielded in finished tiles (boxes of any shape).

    The same windows, importance map and padding as :func:`sliding_window_slabs` (MONAI's),
    but the volume is cut into tiles at every window start and stop, and each tile is
    accumulated on its own and handed out as soon as the last window covering it has run. Only
    tiles touched by some windows and waiting for others are held: a band of the overlap's
    depth across the outermost axis of ``order`` instead of a slab of a whole window's depth.

    Parameters
    ----------
    inputs : (1, C_in, *spatial) tensor, or an object with ``shape``, ``dtype`` and ``__getitem__``
        One image, MONAI index order. Indexing with ``(slice(None), slice(None), *window)`` must
        return that window as a tensor, so the image may be read lazily (see
        :class:`medseg.inference.preprocess.PermutedInput`); it is materialised only when an
        axis is shorter than the window and must be padded.
    roi, predictor, overlap, mode, sw_batch_size, padding_mode, sw_device, device
        As :func:`sliding_window_slabs`; the predictor's output is weighted in place when it
        already has the input's dtype (it should be a fresh tensor, as a network's output is).
    order : sequence of int, optional
        Window visiting order, outermost axis first; default :func:`tile_order`. In MONAI's
        order ``(0, 1, ...)`` with one window per call every voxel is MONAI's bit for bit,
        otherwise it differs by float rounding (the sums are added in another order).
    accumulate_dtype : torch.dtype, optional
        dtype of the tile accumulators (default: the input's, float32). ``torch.float16``
        halves them; each window is weighted in the input's dtype and rounded once per
        addition. A window whose weighted outputs exceed half of float16's range divided by the
        most windows any voxel sums (where the sums could overflow), or that holds a NaN,
        switches the held tiles and all later ones to float32, so large logits never turn
        into infinities.

    Notes
    -----
    Memory: ``C`` values per held voxel (the sums of weights of a tile are added up when it is
    finished, in the same order as its outputs) plus the network's outputs of one batch.

    Yields
    ------
    box : tuple of slice
        The tile, in input coordinates; the tiles partition the image.
    output : (C, *box) tensor
        The blended outputs on that tile (dtype of the accumulators), on ``device``; the
        generator keeps no reference to it.
    """
    import itertools

    from monai.data.utils import compute_importance_map, dense_patch_slices

    shape = tuple(inputs.shape)
    if len(shape) < 3 or shape[0] != 1:
        raise InputError(f"inputs must be one image (1, C, *spatial), got shape {shape}; "
                         "run the images of a batch one by one")
    nd = len(shape) - 2
    roi = [int(r) for r in roi]
    dtype = inputs.dtype
    sw_device = torch.device(sw_device) if sw_device is not None else torch.device(getattr(inputs, "device", "cpu"))
    device = torch.device(device) if device is not None else torch.device(getattr(inputs, "device", "cpu"))
    size0 = list(shape[2:])
    before = [max(r - s, 0) // 2 for s, r in zip(size0, roi)]
    pad: list[int] = []
    for d in reversed(range(nd)):
        diff = max(roi[d] - size0[d], 0)
        pad += [diff // 2, diff - diff // 2]
    if any(pad):
        whole = inputs if isinstance(inputs, torch.Tensor) else inputs[(slice(None),) * len(shape)]
        inputs = F.pad(whole, pad=pad, mode=padding_mode)
    size = list(inputs.shape[2:])
    order = tile_order(size, roi, overlap) if order is None else tuple(int(a) for a in order)
    if sorted(order) != list(range(nd)):
        raise InputError(f"order must be a permutation of the {nd} spatial axes, got {order}")
    windows = dense_patch_slices(size, roi, scan_interval(size, roi, overlap))
    windows = sorted(windows, key=lambda w: tuple(w[a].start for a in order))  # stable: MONAI's for (0, 1, ...)
    cuts, cover = _tile_grid(size, roi, windows)
    weight = compute_importance_map(tuple(roi), mode=mode, device=sw_device, dtype=dtype)[None, None]
    weight_out = weight[0].to(device)
    acc_dtype = dtype if accumulate_dtype is None else accumulate_dtype
    f16_safe = 0.5 * torch.finfo(torch.float16).max / math.prod(max(c) for c in cover)
    acc: dict = {}  # tile -> weighted sums (C, ...)
    seen: dict = {}  # tile -> the windows added to it so far, in order
    crop0 = [slice(b, b + n) for b, n in zip(before, size0)]

    for b0 in range(0, len(windows), sw_batch_size):
        batch = windows[b0:b0 + sw_batch_size]
        win = torch.cat([inputs[(slice(None), slice(None)) + tuple(w)] for w in batch]).to(sw_device)
        out = predictor(win)
        del win
        out = out.to(dtype)
        if out.device == weight.device and not out.requires_grad:
            out.mul_(weight)  # the network's own buffer: no second window of outputs
        else:
            out = out * weight
        if acc_dtype == torch.float16 and not bool(out.abs().amax() <= f16_safe):  # also catches NaN
            acc_dtype = dtype
            acc = {t: a.to(dtype) for t, a in acc.items()}
        for p, w in zip(out, batch):
            p = p.to(device)
            for t in itertools.product(*_tiles_of(w, cuts)):
                lo = [cuts[a][k] for a, k in enumerate(t)]
                hi = [cuts[a][k + 1] for a, k in enumerate(t)]
                if t not in acc:
                    acc[t] = torch.zeros([p.shape[0]] + [h - l for l, h in zip(lo, hi)], dtype=acc_dtype, device=device)
                    seen[t] = []
                src = (slice(None),) + tuple(slice(l - s.start, h - s.start) for l, h, s in zip(lo, hi, w))
                total = acc[t]
                total += p[src]
                seen[t].append(src)
                if len(seen[t]) < math.prod(cover[a][k] for a, k in enumerate(t)):
                    continue
                # the sums of weights, added in the same order as the outputs: not held meanwhile
                count = torch.zeros((1,) + tuple(total.shape[1:]), dtype=acc_dtype, device=device)
                for piece in seen.pop(t):
                    count += weight_out[piece]
                del acc[t]
                total /= count
                del count
                # crop MONAI's padding
                box = [slice(max(l, c.start), min(h, c.stop)) for l, h, c in zip(lo, hi, crop0)]
                if all(s.stop > s.start for s in box):
                    part = total[(slice(None),) + tuple(slice(s.start - l, s.stop - l) for s, l in zip(box, lo))]
                    del total
                    yield tuple(slice(s.start - b, s.stop - b) for s, b in zip(box, before)), part
                    del part
            del p
        del out
    if acc:  # pragma: no cover - guards the bookkeeping
        raise RuntimeError(f"{len(acc)} tiles were never finished")
