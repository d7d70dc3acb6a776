"""The one sliding-window path: MONAI's :class:`~monai.inferers.PatchInferer` with a window splitter
and a merger that hands out each region as soon as it is finished.

:func:`monai.inferers.sliding_window_inference` keeps the weighted sum of every window's output
and the sum of weights for the *whole* volume (``C + 1`` float32 values per voxel) before it
divides. Here the same windows (:class:`WindowSplitter`: MONAI's
:func:`~monai.data.utils.dense_patch_slices` with MONAI's scan interval, small axes padded as
MONAI pads them) run through :class:`~monai.inferers.PatchInferer`, and :class:`RegionMerger`
(a :class:`monai.inferers.Merger`) weights them with MONAI's importance map
(:func:`~monai.data.utils.compute_importance_map`). The merger cuts the output at every window
start and stop into tiles, accumulates each tile on its own and, when its last window is in,
divides, reduces it to labels (argmax) or probabilities (softmax) and hands it to a *sink*
(for instance a writer onto the input grid, :mod:`medseg.inference.mapping`). Only the tiles
that wait for later windows are held: with the windows visited in the axis order that holds
the fewest voxels (:func:`tile_order`), a band of the overlap's depth across the outermost
axis. For the bundled model's 80 x 64 x 48 windows that is 21 MB on a 256 x 256 x 128 grid and
109 MB on 512 x 512 x 300 (7 classes, float32), instead of 1.9 GB for the whole volume.

In MONAI's window order ``(0, 1, 2)`` with one window per network call every voxel receives
the same sums in the same order as :func:`~monai.inferers.sliding_window_inference`, so the
result is MONAI's bit for bit; in another order it differs by float rounding.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterator, Literal, Optional, Protocol, Sequence

import torch
from monai.inferers import Merger, PatchInferer, Splitter
from torch.nn import functional as F

from medseg.core.errors import InputError

__all__ = ["sliding_window", "WindowSplitter", "RegionMerger", "RegionSink", "tile_order", "scan_interval",
           "argmax_channels", "softmax_"]

Output = Literal["labels", "probabilities", "logits"]


class RegionSink(Protocol):
    """Receives the finished regions of a :class:`RegionMerger`."""

    def add(self, box: tuple[slice, ...], region: torch.Tensor) -> None:
        """``region``: ``(C, *box)`` values, or ``box``-shaped labels; ``box`` in output coordinates."""

    def result(self) -> Any:
        """What :meth:`RegionMerger.finalize` returns once every region is in."""


def scan_interval(image_size: Sequence[int], roi: Sequence[int], overlap: float) -> tuple[int, ...]:
    """MONAI's window step per axis: ``int(roi * (1 - overlap))`` (at least 1; ``roi`` when it fills the axis)."""
    return tuple(r if r == s else max(1, int(r * (1 - overlap))) for s, r in zip(image_size, roi))


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


def softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 in place: no second C x grid buffer on large volumes."""
    x -= x.max(dim=0, keepdim=True).values
    x.exp_()
    x /= x.sum(dim=0, keepdim=True)
    return x


# -- visiting order ------------------------------------------------------------------------
def _cuts(size: Sequence[int], roi: Sequence[int], starts: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per axis, the tile boundaries: every window start and stop, clipped to ``[0, size)``."""
    return [sorted({0, int(n)} | {min(max(s, 0), n) for s in st} | {min(max(s + r, 0), n) for s in st})
            for n, r, st in zip(size, roi, starts)]


def _tiles_of(location: Sequence[int], roi: Sequence[int], cuts: Sequence[list[int]]) -> list[range]:
    """Per axis, the tile indices a window covers (its clipped start and stop are cuts)."""
    return [range(c.index(min(max(lo, 0), c[-1])), c.index(min(max(lo + r, 0), c[-1])))
            for lo, r, c in zip(location, roi, cuts)]


def _live_peak(locations: Sequence[Sequence[int]], roi: Sequence[int], cuts: Sequence[list[int]]) -> int:
    """Most voxels :class:`RegionMerger` holds at once when the windows arrive in this order."""
    tiles = [list(itertools.product(*_tiles_of(w, roi, cuts))) for w in locations]
    left: dict = {}
    for ts in tiles:
        for t in ts:
            left[t] = left.get(t, 0) + 1
    widths = [[hi - lo for lo, hi in zip(c[:-1], c[1:])] for c in cuts]
    seen: set = set()
    live = peak = 0
    for ts in tiles:
        for t in ts:
            if t not in seen:
                seen.add(t)
                live += math.prod(widths[a][k] for a, k in enumerate(t))
        peak = max(peak, live)
        for t in ts:
            left[t] -= 1
            if left[t] == 0:
                live -= math.prod(widths[a][k] for a, k in enumerate(t))
    return peak


def _monai_windows(size: Sequence[int], roi: Sequence[int], overlap: float, order: Sequence[int]) -> list[tuple]:
    """Window starts of MONAI's ``sliding_window_inference`` on a (padded) ``size``, sorted by ``order``."""
    from monai.data.utils import dense_patch_slices

    windows = dense_patch_slices(list(size), list(roi), scan_interval(size, roi, overlap))
    # stable sort: MONAI's own order for (0, 1, ...)
    return sorted((tuple(s.start for s in w) for w in windows), key=lambda w: tuple(w[a] for a in order))


def tile_order(image_size: Sequence[int], roi: Sequence[int], overlap: float) -> tuple[int, ...]:
    """The window visiting order (outermost axis first) that holds the fewest voxels at once.

    MONAI's order ``(0, 1, ..., n - 1)`` (bit for bit MONAI's sums) unless another holds fewer:
    the tiles that wait for later windows form a band of the overlap's depth across the
    outermost axis, so the best outermost axis is the one with the smallest cross-section
    times overlap, which depends on how the last (shifted) window of each axis falls.
    """
    size = [max(int(s), int(r)) for s, r in zip(image_size, roi)]
    orders = list(itertools.permutations(range(len(size))))
    first = _monai_windows(size, roi, overlap, orders[0])
    cuts = _cuts(size, roi, [sorted({w[a] for w in first}) for a in range(len(size))])
    peaks = {o: _live_peak(_monai_windows(size, roi, overlap, o), roi, cuts) for o in orders}
    return min(orders, key=lambda o: (peaks[o], o != orders[0]))


# -- splitter ------------------------------------------------------------------------------
class WindowSplitter(Splitter):
    """The windows of MONAI's ``sliding_window_inference``, as a :class:`monai.inferers.Splitter`.

    Parameters
    ----------
    patch_size : sequence of int
        Window size per spatial axis.
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).
    order : sequence of int, optional
        Visiting order, outermost axis first; default :func:`tile_order`.
    pad_mode : str
        How an axis shorter than the window is padded: half before, the rest after, as MONAI.
    device : torch.device or str, optional
        Where the windows go (the network's device).

    Notes
    -----
    The input is ``(1, C, *spatial)``: a tensor, or any object with ``shape`` and
    ``__getitem__`` returning a window as a tensor (a lazily preprocessed volume,
    :class:`medseg.inference.mapping.PermutedInput`); it is materialised only when it must be
    padded. Locations are in input coordinates (negative inside the padding before).
    """

    def __init__(self, patch_size: Sequence[int], *, overlap: float, order: Optional[Sequence[int]] = None,
                 pad_mode: str = "replicate", device: "torch.device | str | None" = None) -> None:
        super().__init__(patch_size=tuple(int(p) for p in patch_size), device=device)
        self.overlap = float(overlap)
        self.order = None if order is None else tuple(int(a) for a in order)
        self.pad_mode = pad_mode

    def get_input_shape(self, inputs: Any) -> tuple:
        shape = tuple(int(s) for s in inputs.shape)
        if len(shape) < 3 or shape[0] != 1:
            raise InputError(f"inputs must be one image (1, C, *spatial), got shape {shape}; "
                             "run the images of a batch one by one")
        return shape[2:]

    def get_padded_shape(self, inputs: Any) -> tuple:
        return tuple(max(s, r) for s, r in zip(self.get_input_shape(inputs), self.patch_size))

    def visit_order(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The window order for an input of spatial ``shape``: :attr:`order` or :func:`tile_order`."""
        padded = [max(int(s), r) for s, r in zip(shape, self.patch_size)]
        order = tile_order(padded, self.patch_size, self.overlap) if self.order is None else self.order
        if sorted(order) != list(range(len(padded))):
            raise InputError(f"order must be a permutation of the {len(padded)} spatial axes, got {order}")
        return order

    def locations(self, shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Every window's start, in visiting order and input coordinates."""
        before = [max(r - int(s), 0) // 2 for s, r in zip(shape, self.patch_size)]
        padded = [max(int(s), r) for s, r in zip(shape, self.patch_size)]
        windows = _monai_windows(padded, self.patch_size, self.overlap, self.visit_order(shape))
        return [tuple(w - b for w, b in zip(win, before)) for win in windows]

    def __call__(self, inputs: Any) -> Iterator[tuple[torch.Tensor, tuple[int, ...]]]:
        shape = self.get_input_shape(inputs)
        before = [max(r - s, 0) // 2 for s, r in zip(shape, self.patch_size)]
        pad: list[int] = []
        for s, r in zip(reversed(shape), reversed(self.patch_size)):
            pad += [max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2]
        if any(pad):
            whole = inputs if isinstance(inputs, torch.Tensor) else inputs[(slice(None),) * (2 + len(shape))]
            inputs = F.pad(whole, pad=pad, mode=self.pad_mode)
        for loc in self.locations(shape):
            index = (slice(None), slice(None)) + tuple(slice(l + b, l + b + r)
                                                       for l, b, r in zip(loc, before, self.patch_size))
            window = inputs[index]
            yield (window if self.device is None else window.to(self.device)), loc


# -- merger --------------------------------------------------------------------------------
class _DenseSink:
    """The default sink: the whole output, ``(1, C, *spatial)`` values or ``(1, 1, *spatial)`` labels."""

    def __init__(self, shape: Sequence[int], dtype: torch.dtype, device: "torch.device | str") -> None:
        self.out = torch.zeros(tuple(shape), dtype=dtype, device=device)

    def add(self, box: tuple[slice, ...], region: torch.Tensor) -> None:
        if region.ndim == len(box):
            region = region[None]
        self.out[(0, slice(None)) + box] = region.to(self.out.dtype)

    def result(self) -> torch.Tensor:
        return self.out


class RegionMerger(Merger):
    """A :class:`monai.inferers.Merger` that blends windows with MONAI's importance map and hands
    each region to a sink as soon as its last window is in, reduced to labels or probabilities.

    Parameters
    ----------
    merged_shape, cropped_shape : sequence of int
        ``(1, C, *spatial)`` as :class:`~monai.inferers.PatchInferer` passes them; the output
        covers ``cropped_shape``'s spatial extent, from 0 (values outside it, in a padding, are
        dropped: they never reach a voxel of the output).
    device : torch.device or str
        Where the accumulators and the regions live.
    patch_size : sequence of int
        Window size.
    locations : sequence of tuple of int
        Every window start that will arrive (order does not matter; any grid of windows).
    mode : {"gaussian", "constant"}
        Blending (MONAI's importance map); ``"constant"`` is a plain average, as
        :class:`~monai.inferers.AvgMerger`.
    output : {"labels", "probabilities", "logits"}
        What a finished region becomes: the argmax (``label_dtype``, first channel on ties), the
        softmax over channels, or the blended values themselves.
    sink : RegionSink, optional
        Receives ``(box, region)``; default: the whole output in one tensor.
    accumulate_dtype : torch.dtype
        dtype of the tile sums. ``torch.float16`` halves them; a window whose weighted outputs
        exceed half of float16's range divided by the most windows any voxel sums (the sums
        could overflow), or that holds a NaN, switches the held tiles and all later ones back
        to float32.
    label_dtype : torch.dtype
        dtype of the labels.
    """

    def __init__(self, merged_shape: Sequence[int], cropped_shape: Optional[Sequence[int]] = None,
                 device: "torch.device | str" = "cpu", *, patch_size: Sequence[int],
                 locations: Sequence[Sequence[int]], mode: str = "gaussian", output: Output = "probabilities",
                 sink: Optional[RegionSink] = None, accumulate_dtype: torch.dtype = torch.float32,
                 label_dtype: torch.dtype = torch.uint8) -> None:
        super().__init__(merged_shape, cropped_shape, device if device is not None else "cpu")
        if output not in ("labels", "probabilities", "logits"):
            raise InputError(f"output must be 'labels', 'probabilities' or 'logits', got {output!r}")
        self.size = tuple(int(s) for s in self.cropped_shape[2:])
        self.roi = tuple(int(r) for r in patch_size)
        self.mode, self.output, self.label_dtype = mode, output, label_dtype
        starts = [sorted({int(w[a]) for w in locations}) for a in range(len(self.roi))]
        self.cuts = _cuts(self.size, self.roi, starts)
        self._left: dict = {}  # tile -> windows still to come
        for w in locations:
            for t in itertools.product(*_tiles_of(w, self.roi, self.cuts)):
                self._left[t] = self._left.get(t, 0) + 1
        self.dtype = torch.float32
        self.acc_dtype = accumulate_dtype
        self.f16_safe = 0.5 * torch.finfo(torch.float16).max / max(self._left.values(), default=1)
        self._acc: dict = {}   # tile -> weighted sums (C, *tile)
        self._seen: dict = {}  # tile -> the window pieces added to it so far, in order
        self._weight: Optional[torch.Tensor] = None
        if sink is None:
            channels = 1 if output == "labels" else int(self.cropped_shape[1])
            sink = _DenseSink((1, channels) + self.size, label_dtype if output == "labels" else torch.float32,
                              self.device)
        self.sink = sink

    def _weights(self, device: torch.device) -> torch.Tensor:
        if self._weight is None:
            from monai.data.utils import compute_importance_map

            self._weight = compute_importance_map(self.roi, mode=self.mode, device=device, dtype=self.dtype)[None]
            self._weight_out = self._weight.to(self.device)
        return self._weight

    def _weighted(self, values: torch.Tensor) -> torch.Tensor:
        """One window's outputs ``(C, *roi)`` times the importance map, in place (no second window of outputs)."""
        out = values[0].to(self.dtype)
        weight = self._weights(out.device)
        out = out * weight if out.requires_grad else out.mul_(weight)
        if self.acc_dtype == torch.float16 and not bool(out.abs().amax() <= self.f16_safe):  # also catches NaN
            self.acc_dtype = self.dtype
            self._acc = {t: a.to(self.dtype) for t, a in self._acc.items()}
        return out.to(self.device)

    def aggregate(self, values: torch.Tensor, location: Sequence[int]) -> None:
        """Add one window's outputs ``(1, C, *patch_size)`` at ``location``; finish the tiles it completes.

        ``values`` is weighted in place (as :class:`~monai.inferers.PatchInferer` hands over the
        network's own output, no second window of outputs is allocated): pass a tensor you no
        longer need.
        """
        if self.is_finalized:
            raise InputError("this RegionMerger is finalized; make a new one for another image")
        out = self._weighted(values)
        for t in itertools.product(*_tiles_of(location, self.roi, self.cuts)):
            lo = [self.cuts[a][k] for a, k in enumerate(t)]
            hi = [self.cuts[a][k + 1] for a, k in enumerate(t)]
            if t not in self._acc:
                shape = [out.shape[0]] + [h - l for l, h in zip(lo, hi)]
                self._acc[t] = torch.zeros(shape, dtype=self.acc_dtype, device=self.device)
                self._seen[t] = []
            src = tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, location))
            total = self._acc[t]
            total += out[(slice(None),) + src]
            self._seen[t].append(src)
            self._left[t] -= 1
            if self._left[t] == 0:
                del self._acc[t]
                self._finish(total, self._seen.pop(t), tuple(slice(l, h) for l, h in zip(lo, hi)))
                del total

    def _finish(self, total: torch.Tensor, pieces: list, box: tuple[slice, ...]) -> None:
        """Divide a tile by its sum of weights (added in the same order as its outputs), reduce it, hand it out."""
        count = torch.zeros((1,) + tuple(total.shape[1:]), dtype=total.dtype, device=self.device)
        for piece in pieces:
            count += self._weight_out[(slice(None),) + piece]
        total /= count
        del count
        if self.output == "labels":
            self.sink.add(box, argmax_channels(total, self.label_dtype))
        else:
            self.sink.add(box, softmax_(total) if self.output == "probabilities" else total)

    def finalize(self) -> Any:
        """The sink's result (by default the whole output) once every window is in."""
        if not self.is_finalized:
            if self._acc or any(n > 0 for n in self._left.values()):
                raise InputError(f"{sum(1 for n in self._left.values() if n > 0)} regions still wait for windows "
                                 "that never arrived: pass every window's location to the merger")
            self.is_finalized = True
        return self.sink.result()


def sliding_window(
    inputs: Any,
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
    output: Output = "probabilities",
    sink: Optional[RegionSink] = None,
    accumulate_dtype: torch.dtype = torch.float32,
    label_dtype: torch.dtype = torch.uint8,
) -> Any:
    """Sliding-window inference of one image through :class:`~monai.inferers.PatchInferer`.

    Parameters
    ----------
    inputs : (1, C_in, *spatial) tensor, or a lazy image (see :class:`WindowSplitter`)
        One image, MONAI index order.
    roi : sequence of int
        Window size per spatial axis.
    predictor : callable
        ``(B, C_in, *roi)`` → ``(B, C, *roi)``, called once per batch of windows.
    overlap, mode, sw_batch_size, padding_mode
        As :func:`monai.inferers.sliding_window_inference`.
    sw_device, device : torch.device or str, optional
        Where windows run and where the accumulators live (default: the CPU, or the input's).
    order : sequence of int, optional
        Window visiting order, outermost axis first; default :func:`tile_order`.
    output, sink, accumulate_dtype, label_dtype
        See :class:`RegionMerger`.

    Returns
    -------
    The sink's result; by default ``(1, C, *spatial)`` float32 values (``"probabilities"``,
    ``"logits"``) or ``(1, 1, *spatial)`` labels, on ``device``.
    """
    home = torch.device(getattr(inputs, "device", "cpu"))
    splitter = WindowSplitter(roi, overlap=overlap, order=order, pad_mode=padding_mode,
                              device=sw_device if sw_device is not None else home)
    shape = splitter.get_input_shape(inputs)
    splitter.order = splitter.visit_order(shape)  # tile_order weighs every window order: once per run
    locations = splitter.locations(shape)
    inferer = PatchInferer(splitter, merger_cls=RegionMerger, batch_size=sw_batch_size,
                           device=device if device is not None else home, patch_size=splitter.patch_size,
                           locations=locations, mode=mode, output=output, sink=sink,
                           accumulate_dtype=accumulate_dtype, label_dtype=label_dtype)
    return inferer(inputs, predictor)
