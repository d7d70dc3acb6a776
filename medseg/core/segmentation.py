"""``Segmentation``: an integer label map on an image grid plus its label table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from medseg.core.errors import InputError
from medseg.core.labels import LabelTable
from medseg.core.volume import Volume

__all__ = ["Segmentation", "smallest_label_dtype"]


def smallest_label_dtype(max_index: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds ``max_index``."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_index <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise InputError(f"label index {max_index} does not fit in uint32")


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A label map, its label table, and optional per-class probabilities.

    Parameters
    ----------
    label_map : Volume
        (Z, Y, X) integer array; 0 is background, other values are indices of ``labels``.
    labels : LabelTable
        What each index means.
    probabilities : Volume, optional
        (C, Z, Y, X) float probabilities on the same grid, channel 0 = background and
        channel c = the c-th entry of ``labels`` (in index order).
    """

    label_map: Volume
    labels: LabelTable
    probabilities: Optional[Volume] = None

    def __post_init__(self) -> None:
        arr = self.label_map.array
        if arr.ndim != 3:
            raise InputError(f"label_map must be (Z, Y, X), got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0) and arr.min() >= 0:
                arr = arr.astype(smallest_label_dtype(int(arr.max())))
            else:
                raise InputError(f"label_map must hold integers, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise InputError(f"label_map has negative values (min {arr.min()}); labels are 0..65535")
        dt = smallest_label_dtype(max(int(arr.max()) if arr.size else 0, self.labels.max_index))
        if arr.dtype != dt:
            arr = arr.astype(dt)
        object.__setattr__(self, "label_map", Volume(arr, self.label_map.affine, self.label_map.meta))
        if self.probabilities is not None:
            self.label_map.require_same_grid(self.probabilities, what="probabilities")

    @property
    def array(self) -> np.ndarray:
        """The (Z, Y, X) integer label map."""
        return self.label_map.array

    @property
    def affine(self) -> np.ndarray:
        return self.label_map.affine

    def present_indices(self) -> list[int]:
        """Label indices (non-zero) that occur in the map."""
        return [int(v) for v in np.unique(self.array) if v != 0]

    def unknown_indices(self) -> list[int]:
        """Indices in the map that the label table does not name."""
        return [v for v in self.present_indices() if v not in self.labels]

    def mask(self, index: int) -> np.ndarray:
        """Boolean (Z, Y, X) mask of one label."""
        return self.array == index

    def volumes_ml(self) -> dict[int, float]:
        """Volume in mL of each label in the table (0.0 when absent)."""
        counts = np.bincount(self.array.ravel(), minlength=self.labels.max_index + 1)
        v = self.label_map.voxel_volume_ml
        return {l.index: float(counts[l.index]) * v for l in self.labels}
