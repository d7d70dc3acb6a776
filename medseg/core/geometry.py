"""Affine helpers for medseg's one geometry convention.

The convention (see ``ARCHITECTURE.md``): an array of shape ``(Z, Y, X)`` and a 4x4 ``affine``
mapping the voxel index ``(k, j, i)`` *in array order* to LPS millimetres ``(x, y, z)``.
Per-axis tuples (``spacing``, shapes) follow array order ``(z, y, x)``; world points are LPS
``(x, y, z)``.

This module holds the pure functions that build, check and decompose such affines and the
two conversions every reader needs: LPS ⇄ RAS and array order ⇄ ITK/NIfTI index order
(``(i, j, k)``, fastest axis first).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medseg.core.errors import GeometryError

__all__ = [
    "LPS_TO_RAS",
    "make_affine",
    "check_affine",
    "spacing_of",
    "origin_of",
    "direction_of",
    "lps_to_ras",
    "ras_to_lps",
    "reverse_axes",
    "apply_affine",
    "orientation_code",
    "same_grid",
]

#: Flips x and y: LPS ⇄ RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Array-order <-> index-order permutation: (k, j, i) <-> (i, j, k), its own inverse.
_REVERSE = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
)


def make_affine(
    spacing: Sequence[float],
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
) -> np.ndarray:
    """Build a voxel-to-LPS affine.

    Parameters
    ----------
    spacing : (3,) floats
        Voxel size in mm, array order ``(z, y, x)``.
    origin : (3,) floats
        LPS position ``(x, y, z)`` in mm of the centre of voxel ``(0, 0, 0)``.
    direction : (3, 3) ndarray, optional
        Unit column vectors in LPS, one per array axis ``(z, y, x)``. The default is the
        axial DICOM layout: array x runs to patient Left, y to Posterior, z to Superior,
        i.e. columns ``(0,0,1), (0,1,0), (1,0,0)``.

    Returns
    -------
    (4, 4) ndarray
    """
    spacing = np.asarray(spacing, dtype=float)
    if spacing.shape != (3,) or np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise GeometryError(f"spacing must be 3 positive numbers (z, y, x) in mm, got {spacing!r}")
    if direction is None:
        direction = _REVERSE[:3, :3].copy()
    direction = np.asarray(direction, dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = np.asarray(origin, dtype=float)
    check_affine(affine)
    return affine


def check_affine(affine: np.ndarray, *, name: str = "affine") -> np.ndarray:
    """Validate a voxel-to-LPS affine and return it as a float (4, 4) copy.

    Raises
    ------
    GeometryError
        If it is not 4x4, not finite, has a bad last row or a singular 3x3 part.
    """
    a = np.array(affine, dtype=float)
    if a.shape != (4, 4):
        raise GeometryError(f"{name} must be a 4x4 matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise GeometryError(f"{name} contains NaN or infinite values: {a.tolist()}")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise GeometryError(f"{name} last row must be (0, 0, 0, 1), got {a[3].tolist()}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise GeometryError(f"{name} is singular (zero spacing or parallel axes): {a[:3, :3].tolist()}")
    return a


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm, array order ``(z, y, x)``."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def origin_of(affine: np.ndarray) -> tuple[float, float, float]:
    """LPS position ``(x, y, z)`` of voxel ``(0, 0, 0)`` in mm."""
    return tuple(float(v) for v in np.asarray(affine)[:3, 3])  # type: ignore[return-value]


def direction_of(affine: np.ndarray) -> np.ndarray:
    """(3, 3) unit columns in LPS, one per array axis ``(z, y, x)``."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    return a / np.linalg.norm(a, axis=0, keepdims=True)


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Same voxels, world frame changed from LPS to RAS (x and y negated)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """Same voxels, world frame changed from RAS to LPS (x and y negated)."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


def reverse_axes(affine: np.ndarray) -> np.ndarray:
    """Convert between array-order ``(k, j, i)`` and index-order ``(i, j, k)`` affines.

    An array read by nibabel/ITK index order is transposed to array order with
    ``array.transpose(2, 1, 0)``; its affine changes by this function (its own inverse).
    """
    return np.asarray(affine, dtype=float) @ _REVERSE


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 3)`` points through a 4x4 affine (voxel → world or inverse)."""
    p = np.asarray(points, dtype=float)
    a = np.asarray(affine, dtype=float)
    return p @ a[:3, :3].T + a[:3, 3]


def orientation_code(affine: np.ndarray) -> str:
    """Three letters saying where each array axis ``(z, y, x)`` points, e.g. ``'SPL'``.

    Each letter is the LPS direction towards which the index increases: L/R, P/A, S/I.
    """
    d = direction_of(affine)
    letters = (("L", "R"), ("P", "A"), ("S", "I"))
    out = []
    for col in d.T:
        ax = int(np.argmax(np.abs(col)))
        out.append(letters[ax][0] if col[ax] > 0 else letters[ax][1])
    return "".join(out)


def same_grid(
    shape_a: Sequence[int],
    affine_a: np.ndarray,
    shape_b: Sequence[int],
    affine_b: np.ndarray,
    *,
    atol: float = 1e-3,
) -> bool:
    """True when two grids have the same shape and the same affine within ``atol`` mm."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(np.asarray(affine_a), np.asarray(affine_b), atol=atol)
    )
