"""Axial, flipped and oblique test grids (shared by the inference tests)."""

from __future__ import annotations

import numpy as np

from medseg.core.geometry import make_affine

AXIAL = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])


def rotation(axis, degrees):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.deg2rad(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def grid(kind: str, shape, spacing, centre=(0.0, 5.0, 0.0), degrees=17.0):
    """(shape, affine) of an ``axial``, ``flipped`` (x and z reversed) or ``oblique`` grid."""
    d = AXIAL.copy()
    if kind == "flipped":
        d = d * np.array([-1.0, 1.0, -1.0])[None, :]
    elif kind == "oblique":
        d = rotation([1.0, 0.5, 0.2], degrees) @ d
    spacing = np.asarray(spacing, float)
    origin = np.asarray(centre) - d @ (spacing * (np.asarray(shape) - 1) / 2)
    return tuple(shape), make_affine(spacing, origin, d)


KINDS = ["axial", "flipped", "oblique"]
