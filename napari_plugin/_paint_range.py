"""Painting limited to an intensity range: napari's brush paints only where the image is in range.

After each stroke (a labels layer's public ``events.paint``, one per undo step), the stroke is
taken back with the layer's public ``undo`` and only its voxels whose image value lies in
``[low, high]`` (HU on CT) are written again with ``data_setitem``: one undo step, as if the
brush had skipped the other voxels. Erasing (new value 0) is never limited, nor are edits made
while the layer is not in paint or fill mode (the plugin's accepts and corrections). The image must be
on the labels layer's grid (same shape), as the plugin's layers are.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["IntensityLimit", "in_range_edit"]


def in_range_edit(before: np.ndarray, after: np.ndarray, image: np.ndarray, low: float,
                  high: float) -> tuple[tuple[np.ndarray, ...], np.ndarray, int]:
    """The part of a stroke (``before`` -> ``after``) to keep: erased voxels and painted voxels in range.

    Parameters
    ----------
    before, after : (Z, Y, X) integer ndarray
        The label map before and after the stroke.
    image : (Z, Y, X) ndarray
        The image on the same grid (HU for CT).
    low, high : float
        The intensity range painted voxels must lie in (inclusive).

    Returns
    -------
    indices : tuple of 3 int ndarrays
        Voxels to write (``Labels.data_setitem`` form).
    values : ndarray
        Their new values.
    dropped : int
        Painted voxels left out (outside the range).
    """
    changed = before != after
    painted = changed & (after != 0)
    value = image
    out = painted & ~((value >= low) & (value <= high))
    keep = np.nonzero(changed & ~out)
    return keep, after[keep], int(out.sum())


class IntensityLimit:
    """Keep a labels layer's brush strokes to voxels whose image value is in ``[low, high]``.

    Parameters
    ----------
    on_change : callable, optional
        Called with a message after each limited stroke (e.g. a status label's ``setText``).
    """

    def __init__(self, on_change: Optional[Any] = None) -> None:
        self.layer: Any = None
        self.image: Any = None
        self.low, self.high = -100.0, 300.0
        self.enabled = False
        self._busy = False
        self._on_change = on_change

    def attach(self, layer: Any, image: Any) -> None:
        """Watch ``layer``'s strokes against ``image`` (either may be ``None``)."""
        if self.layer is not None and self.layer is not layer:
            self.layer.events.paint.disconnect(self._on_paint)
        if layer is not None and layer is not self.layer:
            layer.events.paint.connect(self._on_paint)
        self.layer, self.image = layer, image

    def _on_paint(self, event: Any = None) -> None:
        if not self.enabled or self._busy or self.layer is None or self.image is None:
            return
        if str(self.layer.mode) not in ("paint", "fill"):  # the plugin's own edits (accept, corrections)
            return
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self.limit_last_stroke)  # after napari has finished the stroke

    def limit_last_stroke(self) -> int:
        """Redo the layer's last stroke within the range; returns the voxels left out."""
        layer, image = self.layer, self.image
        if layer is None or image is None or self._busy:
            return 0
        img = np.asarray(image.data)
        if img.shape != tuple(layer.data.shape):
            if self._on_change:
                self._on_change(f"intensity limit off: {image.name!r} {img.shape} is not on the grid of "
                                f"{layer.name!r} {tuple(layer.data.shape)}")
            return 0
        self._busy = True
        try:
            after = np.array(layer.data, copy=True)
            layer.undo()
            before = np.asarray(layer.data)
            keep, values, dropped = in_range_edit(before, after, img, self.low, self.high)
            if len(values):
                layer.data_setitem(keep, values)
            else:
                layer.refresh()
        finally:
            self._busy = False
        if self._on_change:
            self._on_change(f"painted only where {self.low:g} <= intensity <= {self.high:g}: "
                            f"{dropped} voxel(s) left out")
        return dropped
