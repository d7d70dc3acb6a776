"""Helpers for the DICOM tests: small synthetic series and world-space comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.core.geometry import make_affine
from medseg.core.volume import Volume


def ramp_volume(shape=(6, 12, 10), *, direction=None, spacing=(2.0, 0.8, 0.7), origin=(-10.0, 20.0, 5.0),
                seed=0, shear=None) -> Volume:
    """An int16 HU-like volume whose every voxel differs (so any flip or shift shows)."""
    rng = np.random.default_rng(seed)
    arr = (np.arange(np.prod(shape)).reshape(shape) % 3000 - 1000).astype(np.int16)
    arr = arr + rng.integers(0, 3, size=shape).astype(np.int16)
    affine = make_affine(spacing, origin, direction)
    if shear is not None:
        affine[:3, 0] += np.asarray(shear, dtype=float)
    return Volume(arr, affine, {})


def oblique_direction(angle_deg=25.0) -> np.ndarray:
    """Direction columns (z, y, x) of an axial grid rotated about two axes."""
    a, b = np.radians(angle_deg), np.radians(angle_deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    base = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)  # columns z->S, y->P, x->L
    return rz @ rx @ base


def flipped_direction() -> np.ndarray:
    """z towards feet, y anterior, x right: every axis reversed relative to axial DICOM."""
    return np.array([[0, 0, -1], [0, -1, 0], [-1, 0, 0]], dtype=float)


def align_to(reference: Volume, other: Volume, *, atol=1e-3) -> np.ndarray:
    """``other``'s array resampled-free onto ``reference``'s index grid.

    The two grids must coincide up to a permutation/flip of axes (checked): returns the array
    of ``other`` indexed like ``reference``.
    """
    m = np.linalg.inv(other.affine) @ reference.affine  # reference index -> other index
    r = np.round(m)
    assert np.allclose(m, r, atol=atol), f"grids are not index-aligned:\n{m}"
    perm = r[:3, :3]
    assert np.all(np.abs(perm).sum(axis=0) == 1) and np.all(np.abs(perm).sum(axis=1) == 1), perm
    shape = reference.shape
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    idx = np.stack([k.ravel(), j.ravel(), i.ravel()], axis=0).astype(float)
    src = (perm @ idx + r[:3, 3:4]).astype(int)
    for ax in range(3):
        assert src[ax].min() >= 0 and src[ax].max() < other.shape[ax], "grids do not overlap exactly"
    return other.array[src[0], src[1], src[2]].reshape(shape)


def write_series(volume: Volume, folder: Path, **kw) -> list[Path]:
    from medseg.io.dicom_write import write_dicom_series

    return write_dicom_series(volume, folder, **kw)
