"""Intensity normalisation shared by the interactive engines.

One rule picks the clip window: CT in Hounsfield units gets a fixed window, any other image
the percentiles of its own values (MR and PET have no absolute scale). The training-free
engine then divides by a robust noise estimate (:func:`noise_scale`) so that its priors and
edge weights are unit-free; the learned engine maps the window to [0, 1]
(:func:`to_unit_range`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["CT_RANGE_HU", "clip_intensity", "to_unit_range", "noise_scale"]

#: The full range of CT values in HU that the training-free engine keeps (air to dense bone).
CT_RANGE_HU = (-1024.0, 3071.0)


def clip_intensity(x: np.ndarray, window: Optional[Sequence[float]] = None,
                   percentiles: Sequence[float] = (0.5, 99.5)) -> tuple[np.ndarray, float, float]:
    """A float32 copy of ``x`` clipped to ``window``, or to its own ``percentiles`` without one.

    Parameters
    ----------
    x : ndarray
        Intensities, any shape and numeric dtype (not changed).
    window : (lo, hi), optional
        Fixed bounds in the image's units (e.g. HU for CT).
    percentiles : (lo, hi)
        Percentiles of ``x`` used as bounds when ``window`` is None.

    Returns
    -------
    clipped : float32 ndarray
        Same shape as ``x``.
    lo, hi : float
        The bounds used.
    """
    out = np.asarray(x).astype(np.float32)
    if window is None:
        lo, hi = np.percentile(out, list(percentiles))
    else:
        lo, hi = window
    np.clip(out, lo, hi, out=out)
    return out, lo, hi


def to_unit_range(x: np.ndarray, window: Optional[Sequence[float]] = None,
                  percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """``x`` clipped as :func:`clip_intensity` does, then mapped linearly to [0, 1] (float32)."""
    out, lo, hi = clip_intensity(x, window, percentiles)
    out -= lo
    out /= max(hi - lo, 1e-6)
    return out


def noise_scale(x: np.ndarray) -> float:
    """Robust noise level of an image, in its own units (> 0).

    1.4826 x the median absolute difference to a 3x3x3 mean, but at least 1 % of the
    10-90 percentile spread (piecewise constant images have no measurable noise).
    """
    noise = np.median(np.abs(x - ndi.uniform_filter(x, 3)))
    spread = float(np.subtract(*np.percentile(x, [90, 10])))
    return max(noise * 1.4826, spread / 100.0, 1e-6)
