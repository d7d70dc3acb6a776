"""Interactive prompts: points, boxes and scribbles in voxel index space ``(k, j, i)``.

Prompts are always voxel indices in array order ``(k, j, i)`` = ``(z, y, x)`` of the image
the session holds, never LPS millimetres. Converting a world click (napari, a viewer) into an
index is the caller's job (``Volume.world_to_index`` then rounding). Validation catches the two
usual mistakes with clear :class:`~medseg.core.errors.PromptError` messages:

* a point outside the volume (negative or past the last voxel);
* a point in the wrong space: a non-integral float (a world coordinate or a continuous index
  passed where a voxel index is expected), a wrong number of coordinates, NaN/inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from medseg.core.errors import PromptError

__all__ = ["Point", "Box", "Scribble", "Prompt", "ObjectPrompts", "to_index", "PROMPT_TYPES"]

#: Names of the prompt kinds, as listed in an engine's ``prompt_types``.
PROMPT_TYPES = ("point", "box", "scribble")


def to_index(value: Sequence[float], shape: Sequence[int], *, what: str = "point") -> tuple[int, int, int]:
    """Validate one voxel index ``(k, j, i)`` against a grid ``shape`` ``(Z, Y, X)``.

    Integral floats (``12.0``) are accepted; anything else that is not an integer raises.

    Raises
    ------
    PromptError
        Wrong length, non-finite or non-integral values, or an index outside the volume.
    """
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{what} must be a voxel index (k, j, i) of 3 integers, got {value!r}") from exc
    if arr.shape != (3,):
        raise PromptError(
            f"{what} must be a voxel index (k, j, i) of 3 integers in array order (z, y, x), "
            f"got {np.asarray(value).ravel().tolist()!r} (shape {arr.shape}); for a 2D click add the slice index k"
        )
    if not np.all(np.isfinite(arr)):
        raise PromptError(f"{what} {arr.tolist()} has a non-finite coordinate")
    if not np.allclose(arr, np.round(arr), atol=1e-6):
        raise PromptError(
            f"{what} {arr.tolist()} is not an integer voxel index: it looks like a world coordinate (mm) "
            f"or a continuous index; convert with Volume.world_to_index(...) and round to int"
        )
    idx = tuple(int(round(v)) for v in arr)
    if any(v < 0 or v >= int(s) for v, s in zip(idx, shape)):
        raise PromptError(
            f"{what} {idx} is outside the volume of shape {tuple(int(s) for s in shape)} (Z, Y, X); "
            f"valid indices are 0..{int(shape[0]) - 1}, 0..{int(shape[1]) - 1}, 0..{int(shape[2]) - 1} "
            f"in array order (k, j, i)"
        )
    return idx  # type: ignore[return-value]


@dataclass(frozen=True)
class Point:
    """One click at voxel ``index`` ``(k, j, i)``; ``positive`` False marks background."""

    index: tuple[int, int, int]
    positive: bool = True

    def validated(self, shape: Sequence[int]) -> "Point":
        return Point(to_index(self.index, shape, what="point"), bool(self.positive))


@dataclass(frozen=True)
class Box:
    """An axis-aligned box between two opposite corner voxels ``(k, j, i)`` (both inclusive)."""

    corner_a: tuple[int, int, int]
    corner_b: tuple[int, int, int]

    def validated(self, shape: Sequence[int]) -> "Box":
        a = to_index(self.corner_a, shape, what="box corner_a")
        b = to_index(self.corner_b, shape, what="box corner_b")
        return Box(tuple(min(x, y) for x, y in zip(a, b)), tuple(max(x, y) for x, y in zip(a, b)))  # type: ignore[arg-type]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Array slices covering the box (after :meth:`validated`)."""
        return tuple(slice(a, b + 1) for a, b in zip(self.corner_a, self.corner_b))  # type: ignore[return-value]


@dataclass(frozen=True)
class Scribble:
    """A polyline of voxels ``(k, j, i)``; consecutive points are joined by straight lines."""

    points: tuple[tuple[int, int, int], ...]
    positive: bool = True

    def validated(self, shape: Sequence[int]) -> "Scribble":
        pts = list(self.points) if not isinstance(self.points, np.ndarray) else list(self.points)
        if len(pts) == 0:
            raise PromptError("scribble needs at least one point (k, j, i); got none")
        return Scribble(tuple(to_index(p, shape, what=f"scribble point {n}") for n, p in enumerate(pts)),
                        bool(self.positive))

    def voxels(self) -> np.ndarray:
        """(N, 3) int voxel indices along the polyline (after :meth:`validated`)."""
        pts = np.asarray(self.points, dtype=float)
        out = [pts[:1]]
        for a, b in zip(pts[:-1], pts[1:]):
            n = int(np.max(np.abs(b - a))) + 1
            t = np.linspace(0.0, 1.0, n + 1)[1:, None]
            out.append(a + t * (b - a))
        return np.unique(np.round(np.concatenate(out)).astype(int), axis=0)


Prompt = Union[Point, Box, Scribble]


@dataclass
class ObjectPrompts:
    """All prompts of one object, gathered for an engine (voxel indices ``(k, j, i)``).

    Attributes
    ----------
    positive, negative : (N, 3) int ndarray
        Voxels of the positive and negative points and scribbles.
    box : ((k, j, i), (k, j, i)), optional
        Opposite corners (inclusive) of the object's box prompt.
    last : (M, 3) int ndarray, optional
        Voxels of the newest prompt when it is a correction (not the object's first prompt).
    last_positive : bool
        Whether that newest prompt is positive.
    """

    positive: np.ndarray
    negative: np.ndarray
    box: Optional[tuple[tuple[int, int, int], tuple[int, int, int]]] = None
    last: Optional[np.ndarray] = None
    last_positive: bool = True
