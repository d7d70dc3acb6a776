"""Input grid ⇄ model grid: the forward mapping (orientation, spacing, intensity) and its exact inverse.

Forward: MONAI transforms on a MetaTensor (the same ones a MONAI bundle runs),
:func:`preprocess_volume`; or, when the model grid is the input grid up to axis order and
flips, :class:`PermutedInput`, which preprocesses window by window (no float32 copy of the
volume). :func:`model_grid` gives the model grid without computing it.

Inverse: the finished regions of :class:`~medseg.inference.merger.RegionMerger` go onto the
input grid as they come: labels straight into the input-grid map when the grids differ only
by axis order and flips (:class:`InputGridLabels`, exact); otherwise probabilities, gathered
into slabs along one model axis, sampled trilinearly at the input voxels and reduced to labels
(:class:`SlabArgmax`). :func:`map_to_input_grid` samples a whole model-grid tensor slab by
slab of the input grid (probabilities).
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
import torch
from monai.data import MetaTensor
from torch.nn import functional as F

from medseg.core import geometry
from medseg.core.errors import InputError
from medseg.inference.convert import ras_affine, volume_to_metatensor
from medseg.inference.merger import argmax_channels
from medseg.models.config import IntensityConfig, PreprocessingConfig, monai_pixdim
from medseg.core.volume import Volume

__all__ = ["is_permutation", "spatial_transforms", "intensity_transform", "preprocess_volume", "preprocess_labels",
           "model_grid", "map_to_input_grid", "input_slabs", "check_orientable", "GridPermutation",
           "PermutedInput", "InputGridLabels", "SlabArgmax"]


# -- forward: input grid -> model grid ----------------------------------------------------
def check_orientable(volume: Volume) -> None:
    """Refuse an affine whose axes cannot be matched one-to-one to patient axes (nearly parallel or
    wildly scaled columns, from a corrupt header): MONAI's reorientation would fail inside.

    Raises
    ------
    GeometryError
    """
    import nibabel as nib

    from medseg.core.errors import GeometryError

    aff = ras_affine(volume.affine)
    try:
        ornt = nib.orientations.io_orientation(aff)
    except Exception as exc:  # nibabel raises on singular / non-finite input
        raise GeometryError(f"the volume's affine cannot be oriented ({exc}); check the header's spacing and "
                            f"direction: {np.round(volume.affine, 4).tolist()}") from exc
    axes = ornt[:, 0]
    if np.isnan(axes).any() or sorted(axes.astype(int).tolist()) != [0, 1, 2]:
        raise GeometryError(f"the volume's axes do not map one-to-one to patient axes (degenerate or nearly "
                            f"parallel columns in the affine {np.round(volume.affine, 4).tolist()}); the header's "
                            f"spacing/direction is corrupt")


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
    """Input volume → ``(C, I, J, K)`` float32 MetaTensor on the model grid, normalised.

    Memory: small integer images stay in their dtype until ``Spacing`` casts them to float32
    (the same values as casting first), and a CT window is applied in place, slab by slab; so
    besides the input, one float32 copy on the model grid is held at the end.
    """
    arr = volume.array
    keep = arr.dtype in (np.int8, np.uint8, np.int16, np.float32)
    check_orientable(volume)
    x = volume_to_metatensor(volume, dtype=None if keep else torch.float32)
    for t in spatial_transforms(config):
        x = t(x)
    x = x.to(torch.float32)
    if x.device.type == "cpu" and np.may_share_memory(arr, x.as_tensor().numpy()):
        x = x.clone()  # identity transforms: never normalise the caller's array in place
    it = intensity_transform(config.intensity)
    if it is not None:
        if config.intensity.kind == "ct_window":
            _apply_pointwise(it, x)
        else:
            x = it(x)
    return x.to(torch.float32)


def _apply_pointwise(transform: Callable, x: torch.Tensor, *, max_elements: int = 2**22) -> None:
    """Apply a voxel-wise intensity transform to ``x`` in place, slab by slab along axis 1."""
    plain = x.as_tensor() if isinstance(x, MetaTensor) else x
    per = max(1, plain[:, :1].numel())
    step = max(1, max_elements // per)
    for a in range(0, plain.shape[1], step):
        part = plain[:, a:a + step]
        part.copy_(torch.as_tensor(transform(part)))


def preprocess_labels(label_map: Volume, config: PreprocessingConfig) -> MetaTensor:
    """Label map → ``(1, I, J, K)`` MetaTensor on the model grid (nearest neighbour only)."""
    x = volume_to_metatensor(label_map, dtype=torch.float32)
    for t in spatial_transforms(config, labels=True):
        x = t(x)
    return x


def model_grid(volume: Volume, config: PreprocessingConfig) -> tuple[np.ndarray, tuple[int, ...]]:
    """The model grid of ``volume``: ``(RAS affine, (I, J, K) shape)``, as :func:`preprocess_volume` makes it.

    MONAI's own ``Orientation`` and ``Spacing`` run lazily (they only compose the affine and
    the shape), so nothing is copied or resampled.
    """
    check_orientable(volume)
    spatial = volume.array.shape[-3:]
    channels = volume.array.shape[0] if volume.array.ndim == 4 else 1
    # a zero-strided stand-in of the input's shape: the lazy transforms never read it
    stub = torch.zeros((), dtype=torch.float32).expand((channels,) + tuple(spatial[::-1]))
    x = MetaTensor(stub, affine=torch.as_tensor(ras_affine(volume.affine), dtype=torch.float64),
                   meta={"space": "RAS", "original_channel_dim": 0})
    for t in spatial_transforms(config):
        t.lazy = True
        x = t(x)
    return (np.asarray(x.peek_pending_affine(), dtype=float),
            tuple(int(s) for s in x.peek_pending_shape()))


def _input_to_model(model_affine: np.ndarray, volume: Volume) -> np.ndarray:
    """(4, 4): input voxel ``(k, j, i)`` → LPS → RAS → model voxel ``(i', j', k')``."""
    return np.linalg.inv(np.asarray(model_affine, float)) @ geometry.LPS_TO_RAS @ volume.affine


def _is_index_permutation(m: np.ndarray) -> bool:
    """True when the voxel map ``m`` only permutes and flips axes and shifts by whole voxels."""
    r = np.round(m[:3, :3])
    return bool(np.allclose(m[:3, :3], r, atol=1e-6) and np.allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-4)
                and np.all(np.abs(r).sum(0) == 1) and np.all(np.abs(r).sum(1) == 1))


def is_permutation(model_affine: np.ndarray, volume: Volume) -> bool:
    """True when the model grid is the input grid up to axis permutation/flips (no resampling)."""
    return _is_index_permutation(_input_to_model(model_affine, volume))


class GridPermutation:
    """Index mapping between the input grid and a model grid that is the input grid up to axis permutation and flips.

    Model axis ``a`` runs along input array axis ``axes[a]``: ``model = signs[a] * input + offsets[a]``.

    Parameters
    ----------
    model_affine : (4, 4) ndarray
        Model grid ``(i, j, k)`` → RAS mm.
    volume : Volume
        The input grid.
    """

    def __init__(self, model_affine: np.ndarray, volume: Volume) -> None:
        if not is_permutation(model_affine, volume):
            raise InputError("the model grid is not the input grid up to axis permutation and flips")
        m = _input_to_model(model_affine, volume)
        r = np.round(m[:3, :3]).astype(int)
        self.axes = tuple(int(np.nonzero(r[a])[0][0]) for a in range(3))
        self.signs = tuple(int(r[a, self.axes[a]]) for a in range(3))
        self.offsets = tuple(int(round(m[a, 3])) for a in range(3))
        self.input_shape = tuple(int(s) for s in volume.shape)
        self.model_shape = tuple(self.input_shape[b] for b in self.axes)

    def input_box(self, box: tuple[slice, ...]) -> tuple[slice, ...]:
        """The input-array box (array axis order) of a model-grid box."""
        out: list[slice] = [slice(None)] * 3
        for a, s in enumerate(box):
            lo, hi, _ = s.indices(self.model_shape[a])
            if self.signs[a] > 0:
                out[self.axes[a]] = slice(lo - self.offsets[a], hi - self.offsets[a])
            else:
                out[self.axes[a]] = slice(self.offsets[a] - hi + 1, self.offsets[a] - lo + 1)
        return tuple(out)

    def to_model(self, arr):
        """An input-order block ``(..., z, y, x)`` as model-order ``(..., i, j, k)`` (a view)."""
        lead = arr.ndim - 3
        out = arr.transpose(tuple(range(lead)) + tuple(lead + b for b in self.axes))
        flips = tuple(lead + a for a in range(3) if self.signs[a] < 0)
        if not flips:
            return out
        return out.flip(flips) if isinstance(out, torch.Tensor) else np.flip(out, flips)

    def to_input(self, arr):
        """A model-order block ``(..., i, j, k)`` as input-order ``(..., z, y, x)`` (inverse of :meth:`to_model`)."""
        lead = arr.ndim - 3
        flips = tuple(lead + a for a in range(3) if self.signs[a] < 0)
        if flips:
            arr = arr.flip(flips) if isinstance(arr, torch.Tensor) else np.flip(arr, flips)
        inverse = [self.axes.index(b) for b in range(3)]
        perm = tuple(range(lead)) + tuple(lead + a for a in inverse)
        return arr.permute(perm) if isinstance(arr, torch.Tensor) else arr.transpose(perm)


class PermutedInput:
    """The preprocessed ``(1, C, I, J, K)`` model input, read window by window from the volume.

    For a model grid that is the input grid up to axis permutation and flips and a voxel-wise
    intensity transform (CT window or none), :func:`preprocess_volume` amounts to a transpose,
    flips, a cast to float32 and the intensity transform: here they are applied to each
    requested window only, so no float32 copy of the whole volume is held. Indexing with
    ``(slice(None), slice(None), si, sj, sk)`` returns the same values as indexing the output
    of :func:`preprocess_volume`.

    Use :meth:`create`, which returns None when the volume and config do not qualify.
    """

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, volume: Volume, config: PreprocessingConfig, affine: np.ndarray) -> None:
        self.volume = volume
        self.affine = affine
        self.grid = GridPermutation(affine, volume)
        arr = volume.array
        self._array = arr[None] if arr.ndim == 3 else arr
        self._transform = intensity_transform(config.intensity)
        self.shape = (1, self._array.shape[0]) + self.grid.model_shape

    @classmethod
    def create(cls, volume: Volume, config: PreprocessingConfig) -> Optional["PermutedInput"]:
        """A lazy model input, or None when preprocessing resamples or normalises with volume statistics."""
        if config.intensity.kind not in ("ct_window", "none"):
            return None
        if volume.array.dtype not in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64):
            return None
        affine, shape = model_grid(volume, config)
        if not is_permutation(affine, volume):
            return None
        lazy = cls(volume, config, affine)
        return lazy if lazy.grid.model_shape == tuple(shape) else None

    def __getitem__(self, index) -> torch.Tensor:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) != 5 or any(s != slice(None) for s in index[:2]):
            raise InputError(f"index a PermutedInput as [:, :, si, sj, sk], got {index}")
        block = self._array[(slice(None),) + self.grid.input_box(index[2:])]
        x = torch.from_numpy(np.ascontiguousarray(self.grid.to_model(block))).to(torch.float32)
        if self._transform is not None:
            x = self._transform(x)
            # MONAI's transform hands back a MetaTensor: a plain tensor keeps the network and the
            # stitching off MetaTensor's per-op metadata handling (about 1 s of 7 on 256 x 256 x 128)
            x = (x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)).to(torch.float32)
        return x[None]


# -- inverse: model grid -> input grid ----------------------------------------------------
class InputGridLabels:
    """Labels of finished model-grid regions, written straight into the input-grid label map.

    A :class:`~medseg.inference.merger.RegionSink` for a model grid that is the input grid up to
    axis order and flips: each region is an exact copy (no interpolation).

    Parameters
    ----------
    grid : GridPermutation
    dtype : numpy dtype
        Label dtype.
    """

    def __init__(self, grid: GridPermutation, dtype) -> None:
        self.grid = grid
        self.label_map = np.zeros(grid.input_shape, dtype=dtype)

    def add(self, box: tuple[slice, ...], region: torch.Tensor) -> None:
        """``region``: the labels of the model-grid ``box``."""
        labels = region.cpu().numpy()
        self.label_map[self.grid.input_box(box)] = self.grid.to_input(labels)

    def result(self) -> np.ndarray:
        """The ``(Z, Y, X)`` label map on the input grid."""
        return self.label_map


class SlabArgmax:
    """Class map on the input grid from model-grid probabilities that arrive slab by slab.

    The slab-wise counterpart of ``argmax(map_to_input_grid(probabilities))``: each input voxel
    is sampled trilinearly (border clamped, as :func:`map_to_input_grid`) from the slab that
    holds its two neighbouring model slices along ``axis``, so the full model-grid
    probabilities are never held. Feed finished regions in any order with :meth:`add` (a
    :class:`~medseg.inference.merger.RegionSink`: they are gathered into complete slabs along
    ``axis``), or slabs in order with :meth:`add_slab`; :meth:`result` is the label map.

    Parameters
    ----------
    volume : Volume
        The input grid.
    model_affine : (4, 4) ndarray
        Model grid ``(i, j, k)`` → RAS mm.
    model_shape : (I, J, K) tuple of int
        The model grid.
    axis : int
        Model-grid axis (0, 1 or 2) along which the slabs are cut.
    dtype : numpy dtype
        Label dtype.
    max_points : int
        Input voxels handled per step (bounds the temporaries: about 60 bytes a point with
        7 classes, 16 MB at the default).
    min_slab : int
        Complete regions are joined into slabs of at least this many model slices along
        ``axis`` before they are labelled (fewer passes over the input grid).
    """

    def __init__(self, volume: Volume, model_affine: np.ndarray, model_shape: tuple[int, int, int], axis: int,
                 dtype, *, max_points: int = 2**18, min_slab: int = 16) -> None:
        self.m = _input_to_model(model_affine, volume)
        self.shape = tuple(int(s) for s in model_shape)
        self.axis = int(axis)
        self.label_map = np.zeros(volume.shape, dtype=dtype)
        self._tail: Optional[torch.Tensor] = None
        self._next = 0
        self._pending: dict = {}  # slab start -> [stop, probabilities, voxels filled]
        self._ready: list = []    # complete slabs from _next to _done, not yet labelled
        self._done = 0
        self.min_slab = int(min_slab)
        # cut the input along the input axis that moves fastest along the model axis, so that
        # each input chunk meets few slabs
        self._in_axis = int(np.argmax(np.abs(self.m[self.axis, :3])))
        per = max(1, int(np.prod(volume.shape)) // volume.shape[self._in_axis])
        self._step = max(1, max_points // per)

    def add(self, box: tuple[slice, ...], region: torch.Tensor) -> None:
        """A finished region ``(C, *box)`` of probabilities; each slab is labelled once complete, in order."""
        lo, hi = int(box[self.axis].start), int(box[self.axis].stop)
        if lo not in self._pending:
            shape = list(self.shape)
            shape[self.axis] = hi - lo
            self._pending[lo] = [hi, torch.empty([region.shape[0]] + shape, dtype=region.dtype,
                                                 device=region.device), 0]
        entry = self._pending[lo]
        local = list(box)
        local[self.axis] = slice(0, hi - lo)
        entry[1][(slice(None),) + tuple(local)] = region
        entry[2] += region[0].numel()
        while self._done in self._pending and self._pending[self._done][2] == self._pending[self._done][1][0].numel():
            stop, probabilities, _ = self._pending.pop(self._done)
            self._ready.append(probabilities)
            self._done = stop
            if self._done - self._next >= self.min_slab or self._done == self.shape[self.axis]:
                # thin slabs joined: fewer passes over the input grid
                ready, self._ready = self._ready, []
                self.add_slab(slice(self._next, self._done), torch.cat(ready, dim=1 + self.axis))

    def result(self) -> np.ndarray:
        """The ``(Z, Y, X)`` label map, once every slab is in."""
        if self._next != self.shape[self.axis]:
            raise InputError(f"the label map is missing model slices {self._next} to {self.shape[self.axis]} along "
                             f"axis {self.axis}: not every region arrived")
        return self.label_map

    def add_slab(self, slab: slice, probabilities: torch.Tensor) -> None:
        """Label the input voxels whose model coordinate along ``axis`` lies in ``(start - 1, stop - 1]``.

        Parameters
        ----------
        slab : slice
            Model-grid range along ``axis``; slabs must arrive in order and without gaps.
        probabilities : (C, ...) tensor
            Per-class probabilities of that slab (full extent along the other model axes).
        """
        a, b = int(slab.start), int(slab.stop)
        if a != self._next:
            raise InputError(f"slabs must arrive in order: expected one starting at {self._next}, got {a}")
        first = probabilities.narrow(1 + self.axis, 0, 1)
        if a > 0 and self._tail is not None:
            # between the previous slab's last slice and this one's first: c in (a - 1, a)
            self._label(torch.cat([self._tail, first], dim=1 + self.axis), a - 1, a - 1, a, closed=False)
        self._label(probabilities, a, a, b - 1, closed=True)  # c in [a, b - 1]
        self._tail = probabilities.narrow(1 + self.axis, probabilities.shape[1 + self.axis] - 1, 1).clone()
        self._next = b

    def _label(self, src: torch.Tensor, offset: int, lo: float, hi: float, *, closed: bool) -> None:
        """Sample ``src`` (model slices from ``offset``) at the voxels with ``lo <= c <= hi`` (``closed``) or ``lo < c < hi``."""
        dev = src.device
        n = self.shape[self.axis]
        shape = self.label_map.shape
        # after clamping to the grid (border padding) c lies in [0, n - 1]: open the outer ends
        lo_ = -np.inf if closed and lo <= 0 else lo
        hi_ = np.inf if closed and hi >= n - 1 else hi
        row = self.m[self.axis]
        mt = torch.as_tensor(self.m, dtype=torch.float32, device=dev)
        for c0 in range(0, shape[self._in_axis], self._step):
            c1 = min(shape[self._in_axis], c0 + self._step)
            box = [(0, s - 1) for s in shape]
            box[self._in_axis] = (c0, c1 - 1)
            # c is affine in the input index: its extremes lie at the corners of the chunk
            corners = np.array(np.meshgrid(*box, indexing="ij")).reshape(3, -1)
            cs = np.clip(row[:3] @ corners + row[3], 0, n - 1)
            if cs.max() < lo_ - 1e-3 or cs.min() > hi_ + 1e-3:
                continue
            inside = cs.min() > lo_ + 1e-3 and cs.max() < hi_ - 1e-3
            index = [slice(None)] * 3
            index[self._in_axis] = slice(c0, c1)
            k, j, i = (torch.arange(b[0], b[1] + 1, dtype=torch.float32, device=dev) for b in box)

            def model_coordinate(a: int) -> torch.Tensor:  # as map_to_input_grid computes it
                r = mt[a]
                return r[0] * k[:, None, None] + r[1] * j[None, :, None] + r[2] * i[None, None, :] + r[3]

            c = model_coordinate(self.axis).clamp_(0, n - 1)
            mask = None
            if not inside:
                mask = ((c >= lo_) & (c <= hi_)) if closed else ((c > lo_) & (c < hi_))
                if not bool(mask.any()):
                    continue
            # grid_sample's last axis is (W, H, D) = model (k', j', i'), normalised with align_corners=True
            grid = torch.empty(c.shape + (3,), dtype=torch.float32, device=dev)
            for a in range(3):
                size = src.shape[1 + a]
                coord = (c - offset) if a == self.axis else model_coordinate(a)
                grid[..., 2 - a] = coord * (2.0 / (size - 1)) - 1.0 if size > 1 else coord * 0.0
            del c
            pts = grid.reshape(-1, 3) if mask is None else grid[mask]
            del grid
            out = F.grid_sample(src[None].float(), pts[None, None, None], mode="bilinear", padding_mode="border",
                                align_corners=True)[0, :, 0, 0]
            del pts
            labels = argmax_channels(out, torch.int32).cpu().numpy().astype(self.label_map.dtype, copy=False)
            view = self.label_map[tuple(index)]
            if mask is None:
                view[...] = labels.reshape(view.shape)
            else:
                view[mask.cpu().numpy()] = labels


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
    m = _input_to_model(model_affine, volume)
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


def _permutation_slab(model_tensor: torch.Tensor, m: np.ndarray, shape: tuple[int, int, int],
                      zslice: slice) -> Optional[torch.Tensor]:
    """Exact copy when the grids differ only by axis permutation/flips (no interpolation)."""
    if not _is_index_permutation(m):
        return None
    r, t = np.round(m[:3, :3]), np.round(m[:3, 3])
    # model axis a = sign * input axis b + offset; build index tensors per input axis
    src = model_tensor
    idx = []
    for b, size in enumerate(shape):
        a = int(np.nonzero(r[:, b])[0][0])
        sign = r[a, b]
        rng = np.arange(zslice.start, zslice.stop) if b == 0 else np.arange(size)
        pos = (sign * rng + t[a]).astype(np.int64)
        if pos.min() < 0 or pos.max() >= src.shape[1 + a]:
            return None
        idx.append((a, pos))
    # gather: permute model axes into input order, then index each axis
    order = [0] + [1 + a for a, _ in idx]
    out = src.permute(order)
    for d, (_, pos) in enumerate(idx):
        out = out.index_select(1 + d, torch.as_tensor(pos, device=src.device))
    return out
