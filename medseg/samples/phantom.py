"""Synthetic abdominal CT phantoms with known labels.

The anatomy is defined in patient (LPS) millimetres, independent of the grid, so any grid —
axial, flipped or oblique — samples the same body. Used for the bundled sample study, for
training the bundled models and in tests. Values are Hounsfield units with partial-volume
edges (each voxel mixes tissues by the fraction of it inside each organ) and Gaussian noise.

Structures (label index: name, typical HU): 1 liver (60), 2 spleen (50), 3 right kidney
(160, enhanced), 4 left kidney (160), 5 aorta (180, contrast), 6 liver tumour (15,
hypodense, inside the liver). Unlabelled: air (-1000), subcutaneous fat (-100), muscle and
soft tissue (40), spine (400).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from medseg.core.geometry import make_affine
from medseg.core.labels import ANATOMY, MORPHOLOGY, Code, Label, LabelTable
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

__all__ = ["PHANTOM_LABELS", "make_phantom", "default_phantom_affine"]

PHANTOM_LABELS = LabelTable((
    Label(1, "liver", (220, 110, 70), Code("10200004", "SCT", "Liver"), ANATOMY),
    Label(2, "spleen", (150, 80, 200), Code("78961009", "SCT", "Spleen"), ANATOMY),
    Label(3, "kidney_right", (240, 200, 40), Code("9846003", "SCT", "Right kidney"), ANATOMY),
    Label(4, "kidney_left", (120, 200, 90), Code("18639004", "SCT", "Left kidney"), ANATOMY),
    Label(5, "aorta", (230, 40, 40), Code("15825003", "SCT", "Aorta"), ANATOMY),
    Label(6, "liver_tumor", (60, 200, 230), Code("108369006", "SCT", "Neoplasm"), MORPHOLOGY),
))


@dataclass(frozen=True)
class _Ellipsoid:
    centre: np.ndarray  # LPS mm
    radii: np.ndarray  # mm along LPS x, y, z
    hu: float

    def distance(self, pts: np.ndarray) -> np.ndarray:
        """Approximate signed distance in mm (negative inside)."""
        q = (pts - self.centre) / self.radii
        r = np.sqrt(np.sum(q * q, axis=-1))
        return (r - 1.0) * float(self.radii.min())


@dataclass(frozen=True)
class _Cylinder:  # along LPS z
    centre_xy: np.ndarray
    radii_xy: np.ndarray
    z_range: tuple[float, float]
    hu: float

    def distance(self, pts: np.ndarray) -> np.ndarray:
        q = (pts[..., :2] - self.centre_xy) / self.radii_xy
        radial = (np.sqrt(np.sum(q * q, axis=-1)) - 1.0) * float(self.radii_xy.min())
        axial = np.maximum(self.z_range[0] - pts[..., 2], pts[..., 2] - self.z_range[1])
        return np.maximum(radial, axial)


def default_phantom_affine(
    shape: Sequence[int] = (40, 128, 128), spacing: Sequence[float] = (5.0, 2.7, 2.7)
) -> np.ndarray:
    """Axial LPS affine centring a grid of ``shape`` (z, y, x) on the phantom's body."""
    sp = np.asarray(spacing, dtype=float)
    extent = (np.asarray(shape) - 1) * sp  # z, y, x
    origin = (-extent[2] / 2, -extent[1] / 2, -extent[0] / 2)  # LPS x, y, z
    return make_affine(sp, origin)


def _fraction_inside(distance: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel inside a surface at signed ``distance``."""
    return np.clip(0.5 - distance / voxel_mm, 0.0, 1.0)


def make_phantom(
    *,
    shape: Sequence[int] = (40, 128, 128),
    affine: Optional[np.ndarray] = None,
    seed: int = 0,
    noise_hu: float = 12.0,
    variation: float = 1.0,
) -> tuple[Volume, Segmentation]:
    """Generate one abdominal CT phantom and its label map.

    Parameters
    ----------
    shape : (3,) ints
        Grid shape ``(Z, Y, X)``.
    affine : (4, 4) ndarray, optional
        Voxel → LPS affine; default :func:`default_phantom_affine` for ``shape``.
    seed : int
        Seeds organ sizes, positions, the tumour and the noise. The same seed gives the same
        phantom bit for bit.
    noise_hu : float
        Standard deviation of the Gaussian noise in HU.
    variation : float
        Scale of the random anatomical variation (0 = the mean anatomy).

    Returns
    -------
    image : Volume
        (Z, Y, X) int16 HU, ``meta["Modality"] == "CT"``.
    segmentation : Segmentation
        uint8 label map with :data:`PHANTOM_LABELS`.
    """
    rng = np.random.default_rng(seed)
    if affine is None:
        affine = default_phantom_affine(shape)
    shape = tuple(int(s) for s in shape)
    body, fat_inner, organs = _anatomy(rng, variation)  # draws from rng first: same seed, same anatomy
    pts = _world_points(shape, affine)
    voxel_mm = float(np.cbrt(abs(np.linalg.det(affine[:3, :3]))))

    f_body = _fraction_inside(body.distance(pts), voxel_mm)
    f_inner = _fraction_inside(fat_inner.distance(pts), voxel_mm)
    # air -> fat ring -> soft tissue
    hu = -1000.0 * (1 - f_body) + f_body * (-100.0 * (1 - f_inner) + 40.0 * f_inner)
    label = np.zeros(shape, dtype=np.uint8)
    best = np.zeros(shape, dtype=np.float32)
    for organ, index in organs:
        f = _fraction_inside(organ.distance(pts), voxel_mm) * f_inner
        hu = hu * (1 - f) + organ.hu * f
        if index:
            take = (f >= 0.5) & (f >= best * 0.999)
            label[take] = index
            best = np.where(take, f, best)
    # texture: organs are not flat; low-frequency variation plus white noise
    from scipy.ndimage import gaussian_filter

    texture = gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=2.0) * 15.0
    hu = hu + texture * f_body + rng.normal(scale=noise_hu, size=shape) * f_body
    hu += rng.normal(scale=noise_hu * 0.3, size=shape)
    image = Volume(np.clip(np.round(hu), -1024, 3071).astype(np.int16), affine,
                   {"Modality": "CT", "source": f"phantom(seed={seed})"})
    seg = Segmentation(Volume(label, affine, {"source": f"phantom(seed={seed})"}), PHANTOM_LABELS)
    return image, seg


def _anatomy(rng: np.random.Generator, variation: float) -> tuple:
    """The body, its fat ring's inner boundary and the organs ``(shape, label index)`` in paint order,
    sizes and positions (mm, LPS) drawn from ``rng``."""

    def jit(scale: float, n: int = 3) -> np.ndarray:
        return rng.uniform(-scale, scale, n) * variation

    def rad(base: Sequence[float]) -> np.ndarray:
        return np.asarray(base, float) * (1.0 + jit(0.12))

    body = _Cylinder(np.array([0.0, 5.0]) + jit(5, 2), np.array([160.0, 115.0]) * (1 + jit(0.06, 2)), (-1e4, 1e4), 40.0)
    fat_inner = _Cylinder(body.centre_xy, body.radii_xy - 14.0, (-1e4, 1e4), 40.0)
    liver = _Ellipsoid(np.array([-62.0, -5.0, 25.0]) + jit(8), rad([72, 62, 58]), 60.0)
    spleen = _Ellipsoid(np.array([78.0, 38.0, 35.0]) + jit(8), rad([32, 42, 46]), 48.0)
    kid_r = _Ellipsoid(np.array([-68.0, 58.0, -30.0]) + jit(6), rad([26, 30, 46]), 160.0)
    kid_l = _Ellipsoid(np.array([68.0, 60.0, -25.0]) + jit(6), rad([26, 30, 46]), 160.0)
    aorta = _Cylinder(np.array([18.0, 38.0]) + jit(4, 2), np.full(2, 12.0 * (1 + jit(0.1, 1)[0])), (-1e4, 1e4), 180.0)
    spine = _Cylinder(np.array([0.0, 78.0]), np.array([22.0, 20.0]), (-1e4, 1e4), 400.0)
    # tumour inside the liver: centre within the inner half of the liver ellipsoid
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    t_centre = liver.centre + direction * liver.radii * rng.uniform(0.0, 0.45)
    tumour = _Ellipsoid(t_centre, np.full(3, rng.uniform(10.0, 17.0)), 15.0)
    organs = [(spine, 0), (liver, 1), (spleen, 2), (kid_r, 3), (kid_l, 4), (aorta, 5), (tumour, 6)]
    return body, fat_inner, organs


def _world_points(shape: tuple, affine: np.ndarray) -> np.ndarray:
    """(Z, Y, X, 3) float32 LPS millimetres of every voxel centre."""
    kk, jj, ii = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    idx = np.stack([kk, jj, ii], axis=-1).reshape(-1, 3)
    return (idx @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)).reshape(shape + (3,))
