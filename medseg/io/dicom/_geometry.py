"""Slice geometry of a DICOM series: order, spacing, gantry tilt, gaps → one affine.

Documented behaviour (also in :func:`medseg.io.dicom.read_dicom`):

* Images are ordered by ``ImagePositionPatient`` projected on the slice normal
  ``n = row × column`` (the cross product of the two ``ImageOrientationPatient`` vectors),
  ascending. File names and InstanceNumber are never used for the order.
* Array axes: ``x`` (index ``i``) runs along the row vector, ``y`` (``j``) along the column
  vector, ``z`` (``k``) along the stacking direction, so the affine's columns are
  ``(step, column * PixelSpacing[0], row * PixelSpacing[1])`` with origin the first slice's
  ``ImagePositionPatient``.
* Gantry tilt (the slice centres step along a line that is not parallel to ``n``): the
  voxels are kept untouched and the affine's ``k`` column is the true step vector, so the
  affine is sheared and every voxel sits at its exact acquired position. Such an affine is
  valid in medseg and NIfTI (and DICOM SEG, which stores one position per frame) but not in
  ITK formats; a warning says so.
* Regular spacing: every slice lies within ``max(0.01 mm, 1 %)`` of a regular grid from the
  first to the last slice. Otherwise the spacing is irregular: missing slices (a gap that is
  a whole multiple of the median step) and uneven spacing are reported as warnings and, unless
  ``strict``, the stack is resampled along the stacking line onto a regular grid at the median
  step: acquired slices that fall on the grid are copied exactly, the others are linearly
  interpolated between their two neighbours (their ``files`` entries are ``None``). More
  missing slices than ``max(2, 10 %)`` of the acquired ones is an error (too sparse to fill).
* Repeated positions (two images at the same place: echoes, phases, two series sharing a UID)
  are an error naming the tag that differs, unless they are copies of one SOP instance, which
  are dropped with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from medseg.io.dicom._headers import ImageRecord

__all__ = ["StackPlan", "plan_stack", "affine_from_dicom"]

_IOP_TOL = 1e-3  # max abs difference between orientation cosines within one series
_DUP_TOL = 1e-3  # mm: two images closer than this are at the same position
_LINE_TOL = 0.5  # mm: max distance of a slice centre from the stacking line
_TILT_TOL_DEG = 0.01


@dataclass
class StackPlan:
    """How the images of one series become a ``(Z, Y, X)`` array and its affine.

    ``problem`` is set (and the rest may be empty) when the series cannot be loaded.
    ``sources[z]`` lists ``(image index, weight)`` pairs whose weighted sum is output slice z.
    """

    problem: Optional[str] = None
    fix: str = ""
    images: list[ImageRecord] = field(default_factory=list)
    sources: list[list[tuple[int, float]]] = field(default_factory=list)
    affine: Optional[np.ndarray] = None
    shape: tuple[int, int, int] = (0, 0, 0)
    warnings: list[str] = field(default_factory=list)
    tilt_deg: float = 0.0
    interpolated: list[int] = field(default_factory=list)
    irregular: bool = False


def _fail(problem: str, fix: str) -> StackPlan:
    return StackPlan(problem=problem, fix=fix)


def _dedupe(images: Sequence[ImageRecord], warnings: list[str]) -> list[ImageRecord]:
    seen: set[tuple[str, Optional[int]]] = set()
    out: list[ImageRecord] = []
    copies = 0
    for im in images:
        key = (im.sop_uid, im.frame)
        if im.sop_uid and key in seen:
            copies += 1
            continue
        seen.add(key)
        out.append(im)
    if copies:
        warnings.append(f"{copies} duplicate file(s) of the same SOP instance ignored")
    return out


def _differing_tag(a: ImageRecord, b: ImageRecord) -> str:
    keys = sorted(set(a.distinguish) | set(b.distinguish))
    diff = [k for k in keys if a.distinguish.get(k) != b.distinguish.get(k)]
    return ", ".join(diff) if diff else "no distinguishing tag"


def _positive_pair(value: Optional[Sequence[float]]) -> Optional[tuple[float, float]]:
    if value is None or len(value) != 2 or not all(np.isfinite(v) and v > 0 for v in value):
        return None
    return float(value[0]), float(value[1])


def _single_2d(im: ImageRecord, warnings: list[str]) -> StackPlan:
    """One 2D image without patient geometry (a radiograph, a secondary capture): one slice on an
    assumed grid, stated in a warning. Rows run along +x (L), columns along +y (P), origin 0."""
    spacing, source = _positive_pair(im.pixel_spacing), "PixelSpacing"
    if spacing is None:
        spacing, source = _positive_pair(im.imager_pixel_spacing), "ImagerPixelSpacing (at the detector)"
    if spacing is None:
        spacing, source = (1.0, 1.0), "none in the header: 1 mm assumed"
    thick = im.slice_thickness if im.slice_thickness and np.isfinite(im.slice_thickness) and im.slice_thickness > 0 \
        else 1.0
    # rows along +x (i), columns along +y (j), slices along +z
    a = affine_from_dicom((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), spacing, (0.0, 0.0, 0.0), (0.0, 0.0, thick))
    warnings.append(
        f"a 2D image without patient geometry (no ImagePositionPatient/ImageOrientationPatient), loaded as "
        f"one slice on an assumed grid: pixel rows along +x (patient left), columns along +y (posterior), "
        f"origin (0, 0, 0) mm, pixel spacing {spacing[0]:g} x {spacing[1]:g} mm ({source}), slice thickness "
        f"{thick:g} mm. Positions are not patient coordinates; do not register or fuse it with 3D scans")
    return StackPlan(images=[im], sources=[[(0, 1.0)]], affine=a, shape=(1, im.file.rows, im.file.columns),
                     warnings=warnings)


def affine_from_dicom(
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    position: Sequence[float],
    step: Sequence[float],
) -> np.ndarray:
    """The one voxel ``(k, j, i)`` → LPS affine built from DICOM attributes.

    Parameters
    ----------
    orientation : (6,) floats
        ``ImageOrientationPatient``: row cosines (direction of increasing column index ``i``)
        then column cosines (increasing row index ``j``); normalised here.
    pixel_spacing : (2,) floats
        ``PixelSpacing`` in mm: ``(between rows = y, between columns = x)``.
    position : (3,) floats
        ``ImagePositionPatient`` of array slice 0, LPS mm.
    step : (3,) floats
        LPS mm from the centre of slice ``k`` to that of slice ``k + 1`` (the slice normal
        times the spacing; a gantry-tilted stack steps off the normal).

    Returns
    -------
    (4, 4) ndarray
        Columns ``(step, column * PixelSpacing[0], row * PixelSpacing[1], position)``.
    """
    iop = np.asarray(orientation, dtype=float)
    row = iop[:3] / np.linalg.norm(iop[:3])
    col = iop[3:] / np.linalg.norm(iop[3:])
    a = np.eye(4)
    a[:3, 0] = np.asarray(step, dtype=float)
    a[:3, 1] = col * float(pixel_spacing[0])
    a[:3, 2] = row * float(pixel_spacing[1])
    a[:3, 3] = np.asarray(position, dtype=float)
    return a


def plan_stack(images: Sequence[ImageRecord], *, strict: bool = False, tilt_tag: Optional[float] = None) -> StackPlan:
    """Order a series' images and derive its grid; see the module docstring for the rules.

    Steps: drop duplicate copies, check that the images form one stack (:func:`_check_layout`),
    order them along the slice normal, refuse shared positions, then place them on a line
    (:func:`_stack_line`) and either accept the regular spacing or fill the gaps
    (:func:`_regularize`).
    """
    warnings: list[str] = []
    images = _dedupe(images, warnings)
    if not images:
        return _fail("the series holds no images", "choose another series")
    if len(images) == 1 and images[0].frame is None and (images[0].position is None
                                                           or images[0].orientation is None):
        return _single_2d(images[0], warnings)
    failed = _check_layout(images)
    if failed is not None:
        return failed
    iop = np.asarray(images[0].orientation, dtype=float)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    pos = np.array([im.position for im in images], dtype=float)
    order = np.lexsort((np.arange(len(images)), pos @ normal))
    images, pos = [images[i] for i in order], pos[order]
    failed = _check_distinct_positions(images, pos)
    if failed is not None:
        return failed
    rows, cols = images[0].file.rows, images[0].file.columns
    if len(images) == 1:
        step = _single_slice_step(images[0], warnings)
        return StackPlan(images=images, sources=[[(0, 1.0)]], shape=(1, rows, cols), warnings=warnings,
                         affine=affine_from_dicom(iop, images[0].pixel_spacing, pos[0], normal * step))
    line = _stack_line(pos, normal, tilt_tag, warnings)
    if isinstance(line, StackPlan):
        return line
    t, step_dir, tilt_deg = line
    plan = StackPlan(images=images, warnings=warnings, tilt_deg=tilt_deg)
    n = len(images)
    length = float(np.linalg.norm(pos[-1] - pos[0]))
    mean_step = length / (n - 1)
    if np.abs(t - np.arange(n) * mean_step).max() <= _grid_tol(mean_step):
        plan.sources = [[(i, 1.0)] for i in range(n)]
        plan.affine = affine_from_dicom(iop, images[0].pixel_spacing, pos[0], step_dir * mean_step)
        plan.shape = (n, rows, cols)
        return plan
    return _regularize(plan, t, step_dir, length, strict=strict)


def _grid_tol(step: float) -> float:
    """mm: how far a slice may lie from a regular grid and still count as on it."""
    return max(0.01, 0.01 * step)


def _check_layout(images: Sequence[ImageRecord]) -> Optional[StackPlan]:
    """A failed plan unless every image has patient geometry, one size, one orientation and
    one PixelSpacing, with orthogonal row and column cosines; None when they form one stack."""
    if any(im.position is None or im.orientation is None for im in images):
        multi = images[0].file.frames > 1
        what = ("a multi-frame file without per-frame positions (PlanePositionSequence)" if multi
                else "images without ImagePositionPatient/ImageOrientationPatient")
        return _fail(f"no patient geometry: {what}; this is a 2D projection, secondary capture or "
                     "stripped object, not a volume in patient space",
                     "medseg segments 3D volumes; export the series from the scanner/PACS with its geometry")
    if any(im.pixel_spacing is None for im in images):
        return _fail("no PixelSpacing (in-plane voxel size unknown)",
                     "export the series with PixelSpacing; medseg never guesses a voxel size")
    sizes = {(im.file.rows, im.file.columns) for im in images}
    if len(sizes) > 1:
        return _fail(f"images of different sizes (Rows, Columns) in one series: {sorted(sizes)}",
                     "split the series by size, e.g. into separate folders, and load each")
    iop = np.array([im.orientation for im in images], dtype=float)
    if np.max(np.abs(iop - iop[0])) > _IOP_TOL:
        n_orient = len({tuple(np.round(r, 3)) for r in iop})
        return _fail(f"{n_orient} different ImageOrientationPatient values in one series (e.g. a multi-plane "
                     "localizer)", "load a series with one orientation; pass another series_uid")
    ps = np.array([im.pixel_spacing for im in images], dtype=float)
    if np.max(np.abs(ps - ps[0])) > 1e-4 * max(float(ps[0].max()), 1.0):
        return _fail(f"PixelSpacing varies within the series ({np.unique(ps, axis=0).tolist()})",
                     "split the series by PixelSpacing and load each")
    row = iop[0, :3] / np.linalg.norm(iop[0, :3])
    col = iop[0, 3:] / np.linalg.norm(iop[0, 3:])
    if abs(float(row @ col)) > 1e-3:
        return _fail(f"ImageOrientationPatient row and column vectors are not orthogonal ({iop[0].tolist()})",
                     "the header is corrupt; re-export the series")
    return None


def _check_distinct_positions(images: Sequence[ImageRecord], pos: np.ndarray) -> Optional[StackPlan]:
    """A failed plan naming the differing tag when two ordered images share a position."""
    n = len(images)
    if n < 2:
        return None
    gaps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    same = np.nonzero(gaps < _DUP_TOL)[0]
    if not same.size:
        return None
    i = int(same[0])
    return _fail(
        f"{n} images at only {n - same.size} distinct positions: several images share a position "
        f"(first at {np.round(pos[i], 3).tolist()} mm; they differ in {_differing_tag(images[i], images[i + 1])}). "
        "Two acquisitions (echoes, phases, interleaved series) share one SeriesInstanceUID",
        "separate the images by the tag named above (e.g. into sub-folders) and load each")


def _single_slice_step(im: ImageRecord, warnings: list[str]) -> float:
    """Slice spacing of a one-slice series: SpacingBetweenSlices, else SliceThickness, else 1 mm."""
    step = im.spacing_between_slices or im.slice_thickness
    if not step or step <= 0:
        warnings.append("single slice without SliceThickness/SpacingBetweenSlices: z spacing set to 1 mm")
        return 1.0
    return float(step)


def _stack_line(pos: np.ndarray, normal: np.ndarray, tilt_tag: Optional[float],
                warnings: list[str]) -> StackPlan | tuple[np.ndarray, np.ndarray, float]:
    """Place ordered slice centres on the line from the first to the last.

    Returns
    -------
    StackPlan or (t, direction, tilt_deg)
        A failed plan when the centres stray more than 0.5 mm from one line; else ``t``
        (``(N,)`` mm of each slice along the line from the first), the unit step direction
        (exactly the slice normal unless the gantry is tilted) and the tilt in degrees.
    """
    span = pos[-1] - pos[0]
    u = span / float(np.linalg.norm(span))
    off_line = np.linalg.norm(np.cross(pos - pos[0], u), axis=1)
    if off_line.max() > _LINE_TOL:
        return _fail(f"slice positions do not lie on one line (up to {off_line.max():.2f} mm off)",
                     "the series mixes stacks; split it (e.g. by AcquisitionNumber) and load each")
    t = (pos - pos[0]) @ u
    tilt_deg = float(np.degrees(np.arccos(np.clip(abs(u @ normal), 0.0, 1.0))))
    if tilt_deg <= _TILT_TOL_DEG:
        return t, normal * float(u @ normal), 0.0  # remove rounding shear: exactly orthogonal
    tag = f", GantryDetectorTilt {tilt_tag:g}°" if tilt_tag else ""
    warnings.append(
        f"gantry tilt: slices step {tilt_deg:.2f}° off the slice normal{tag}; voxels kept as acquired with a "
        "sheared affine (exact positions). NIfTI stores it; NRRD/MHA (ITK) cannot: use "
        "medseg.io.dicom.orthogonalize(volume) first for those")
    return t, u, tilt_deg


def _regularize(plan: StackPlan, t: np.ndarray, step_dir: np.ndarray, length: float, *, strict: bool) -> StackPlan:
    """Irregular spacing: report missing slices and uneven steps, then (unless ``strict`` or too
    sparse) resample onto a regular grid at the median step (see the module docstring)."""
    plan.irregular = True
    images, warnings, n = plan.images, plan.warnings, len(plan.images)
    steps = np.diff(t)
    h = float(np.median(steps))
    ratio = steps / h
    missing = [(i, int(round(r)) - 1) for i, r in enumerate(ratio) if r > 1.5 and abs(r - round(r)) < 0.1]
    uneven = [i for i, r in enumerate(ratio) if abs(r - 1) > 0.01 and all(i != m for m, _ in missing)]
    if missing:
        n_miss = sum(k for _, k in missing)
        where = "; ".join(f"{k} after z={t[i]:.2f} mm ({images[i].file.path})" for i, k in missing[:3])
        warnings.append(f"{n_miss} missing slice(s) (gap of a whole number of {h:.3f} mm steps): {where}")
    if uneven:
        warnings.append(f"uneven slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm "
                        f"(median {h:.3f} mm)")
    n_missing = sum(k for _, k in missing)
    if n_missing > max(2, n // 10):
        plan.problem = (f"{n_missing} slices missing between {n} acquired ones: too sparse to fill by interpolation "
                        f"(the limit is max(2, 10 %) of the acquired slices)")
        plan.fix = "find the missing files, or load a complete series"
        return plan
    if strict:
        plan.problem = "irregular slice spacing (" + "; ".join(warnings[-2:]) + ") and strict=True"
        plan.fix = "load without strict to resample onto a regular grid, or find the missing files"
        return plan
    m = int(round(length / h)) + 1
    grid_step = length / (m - 1)
    plan.sources, plan.interpolated = _grid_sources(t, np.arange(m) * grid_step, _grid_tol(length / (n - 1)))
    warnings.append(f"resampled to a regular grid of {m} slices at {grid_step:.3f} mm: "
                    f"{len(plan.interpolated)} slice(s) interpolated, {m - len(plan.interpolated)} copied as acquired")
    im0 = images[0]
    plan.affine = affine_from_dicom(im0.orientation, im0.pixel_spacing, im0.position, step_dir * grid_step)
    plan.shape = (m, im0.file.rows, im0.file.columns)
    return plan


def _grid_sources(t: np.ndarray, grid: np.ndarray, tol: float) -> tuple[list[list[tuple[int, float]]], list[int]]:
    """For each grid position, the acquired slice on it (within ``tol`` mm) or the two around it
    with linear weights; also the indices of the interpolated grid slices."""
    n = len(t)
    sources: list[list[tuple[int, float]]] = []
    interpolated: list[int] = []
    for g, tg in enumerate(grid):
        hi = int(np.searchsorted(t, tg))
        if hi < n and abs(t[hi] - tg) <= tol:
            sources.append([(hi, 1.0)])
            continue
        if hi > 0 and abs(t[hi - 1] - tg) <= tol:
            sources.append([(hi - 1, 1.0)])
            continue
        lo, hi = max(hi - 1, 0), min(hi, n - 1)
        w = 0.0 if hi == lo else float((tg - t[lo]) / (t[hi] - t[lo]))
        sources.append([(lo, 1.0 - w), (hi, w)])
        interpolated.append(g)
    return sources, interpolated
