"""Working-grid resampling of the training-free engine: block means, nearest and linear upsampling.

The engine works on an ROI mean-pooled by integer factors ``f`` (per axis) and writes its
result back at native resolution; these functions move arrays between the two grids.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["pool_mean", "pool_any", "pool_fraction", "paste_overlap", "upsample_nearest", "zoom_linear"]


def pool_mean(arr: np.ndarray, f: np.ndarray, wshape: Sequence[int]) -> np.ndarray:
    """Block means by integer factors ``f``, float32 ``wshape``; ragged edge blocks: strided samples.

    The full blocks are reduced one axis at a time: the first pass sums ``f[0]`` consecutive
    whole planes (contiguous, vectorised), and the later passes run on data already ``f[0]``
    (then ``f[0] * f[1]``) times smaller. About 4x faster than one reduction over the three
    block axes of a 6-D view (300x512x512 int16: 50 against 200 ms), same values.
    """
    full = tuple(n // int(k) for n, k in zip(arr.shape, f))
    out = np.empty(tuple(wshape), np.float32)
    core = arr[: full[0] * f[0], : full[1] * f[1], : full[2] * f[2]]
    for ax in range(3):
        k = int(f[ax])
        if k > 1:
            core = np.add.reduce(core.reshape(core.shape[:ax] + (full[ax], k) + core.shape[ax + 1:]),
                                 axis=ax + 1, dtype=np.float32)
    out[: full[0], : full[1], : full[2]] = core
    out[: full[0], : full[1], : full[2]] /= float(np.prod(f))
    if tuple(full) != tuple(wshape):  # ragged edge blocks: plain strided samples
        sub = arr[:: f[0], :: f[1], :: f[2]]
        for ax in range(3):
            if full[ax] < wshape[ax]:
                idx = [slice(None)] * 3
                idx[ax] = slice(full[ax], None)
                out[tuple(idx)] = sub[tuple(idx)]
    return out


def upsample_nearest(mask: np.ndarray, f: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour upsampling by integer factors ``f``, cropped to ``shape`` (contiguous).

    The in-plane axes are repeated on the few working planes first; the last step copies whole
    native planes (about 5x faster than a broadcast 6-D view made contiguous: 20 against 100 ms
    to 300x512x512).
    """
    plane = np.repeat(mask, int(f[2]), axis=2)[:, :, : shape[2]]
    plane = np.repeat(plane, int(f[1]), axis=1)[:, : shape[1]]
    return plane[np.arange(shape[0]) // int(f[0])]


def zoom_linear(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear interpolation of float32 ``x`` to ``shape``, axis by axis; block centres align.

    The values of ``scipy.ndimage.zoom(x, shape / x.shape, order=1, grid_mode=True,
    mode="nearest")`` (output voxel ``o`` samples input coordinate ``(o + 0.5) * n_in / n_out
    - 0.5``, clamped at the edges), computed as two gathers and a blend per axis: about 4x
    faster than the generic spline code (33x39x39 to 65x117x117: 10 against 45 ms).
    """
    out = x
    for ax, n_out in enumerate(shape):
        n_in = out.shape[ax]
        if n_in == n_out:
            continue
        c = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        lo = np.floor(c)
        w = (c - lo).astype(np.float32)
        lo = lo.astype(int)
        a = out.take(np.clip(lo, 0, n_in - 1), axis=ax)
        b = out.take(np.clip(lo + 1, 0, n_in - 1), axis=ax)
        bshape = [1, 1, 1]
        bshape[ax] = n_out
        w = w.reshape(bshape)
        b -= a
        b *= w
        a += b
        out = a
    return out


def pool_any(mask: np.ndarray, f: np.ndarray, wshape: Sequence[int]) -> np.ndarray:
    """Whether any voxel of each working voxel's block is set (a copy when not pooled)."""
    if not np.any(f > 1):
        return mask.copy()
    padded = np.pad(mask, [(0, w * k - n) for w, k, n in zip(wshape, f, mask.shape)])
    return padded.reshape(wshape[0], f[0], wshape[1], f[1], wshape[2], f[2]).any(axis=(1, 3, 5))


def pool_fraction(native: np.ndarray, f: np.ndarray, wshape: Sequence[int]) -> np.ndarray:
    """Fraction of each working voxel's block that is set (zero-padded ragged edge blocks)."""
    padded = np.pad(native, [(0, w * k - n) for w, k, n in zip(wshape, f, native.shape)])
    return padded.reshape(wshape[0], f[0], wshape[1], f[1], wshape[2], f[2]).mean(axis=(1, 3, 5))


def paste_overlap(src_slices: Sequence[slice], src: np.ndarray, dst_slices: Sequence[slice],
                  dtype: type = np.float32) -> Optional[np.ndarray]:
    """``src`` (a patch at ``src_slices``) copied into a zero array covering ``dst_slices``.

    Returns None when the two boxes do not overlap.
    """
    out = np.zeros(tuple(s.stop - s.start for s in dst_slices), dtype)
    lo = [max(a.start, b.start) for a, b in zip(src_slices, dst_slices)]
    hi = [min(a.stop, b.stop) for a, b in zip(src_slices, dst_slices)]
    if any(h <= l for l, h in zip(lo, hi)):
        return None
    out[tuple(slice(l - b.start, h - b.start) for l, h, b in zip(lo, hi, dst_slices))] = \
        src[tuple(slice(l - a.start, h - a.start) for l, h, a in zip(lo, hi, src_slices))]
    return out
