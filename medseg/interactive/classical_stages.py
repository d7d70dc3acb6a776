"""The stages of the training-free engine (:class:`~medseg.interactive.classical.ClassicalEngine`).

One prediction (one object, all its prompts) runs, on a region of interest (ROI) only:

1. **ROI** (:func:`roi_bounds`, :func:`pooling_factors`): a box around the prompts and the
   current mask plus a margin in mm, grown while the object touches an inner face; the ROI is
   mean-pooled by integer factors to at most ``max_voxels`` working voxels, as isotropic as
   the spacing allows (:class:`WorkGrid`).
2. **Intensity model** (:func:`working_image`, :func:`click_model`): CT clipped to its HU
   range, other images to their percentiles, scaled by a robust noise estimate; each click
   gets a Gaussian of the smoothed image (its value; spread from the local Otsu threshold).
3. **Priors** (:func:`click_term`, :func:`object_prior`, :func:`correction_prior`): each click's
   likelihood times a spatial Gaussian over its support (the largest ball in which most
   voxels match, stretched along tubes and long organs, damped in more textured tissue);
   after a correction, the previous mask outside the new click's zone of influence.
4. **Solve** (:func:`walker_seeds`, :func:`solve`, :func:`clean_mask`): random walker with the
   prior (:mod:`._walker`), clicks and locked labels as seeds; then the components holding
   positive clicks, thin leaks cut, holes filled.
5. **Refine** (:func:`native_mask`, :func:`refine_band`, :func:`honour_clicks`): back to native
   resolution (linear or nearest, only changed blocks for large ROIs); on coarse grids the
   boundary is placed by native intensities; clicked voxels are honoured exactly.

The measured effect of each choice is in the commit history and in the output of
``benchmarks/interactive.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from medseg.core.editing import bounding_slices
from medseg.core.intensity import CT_RANGE_HU, clip_intensity, noise_scale
from medseg.interactive._grid import pool_mean, upsample_nearest, zoom_linear
from medseg.interactive._walker import edge_weights, solve_walker
from medseg.interactive.engine import Slices

if TYPE_CHECKING:  # pragma: no cover
    from medseg.interactive.classical import ClassicalConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkGrid:
    """An ROI on its working grid.

    Attributes
    ----------
    slices : 3 slices
        The ROI in the full volume.
    factors : (3,) int ndarray
        Pooling factor per axis (native voxels per working voxel).
    shape : (3,) ints
        Working grid shape ``ceil(ROI shape / factors)``.
    spacing : (3,) floats
        Working voxel size, mm.
    work : float32 ndarray
        The normalised working image, ``shape``.
    scale : float
        Its normalisation: clipped raw intensities divided by ``scale``.
    """

    slices: Slices
    factors: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    work: np.ndarray
    scale: float

    @property
    def key(self) -> tuple:
        """What identifies the grid (caches keyed by it stay valid while it stays)."""
        return (self.slices, tuple(self.factors))

    @property
    def offset(self) -> np.ndarray:
        """The ROI's first voxel in the full volume, (3,) int."""
        return np.array([s.start for s in self.slices])

    def to_grid(self, points: np.ndarray) -> np.ndarray:
        """Full-volume voxels ``(N, 3)`` to working voxels, clipped into the grid."""
        return np.clip((np.asarray(points) - self.offset) // self.factors, 0, np.array(self.shape) - 1)

    def axes_mm(self) -> list[np.ndarray]:
        """Sparse open grids of working-voxel positions in mm (float32), one per axis."""
        return np.meshgrid(*[np.arange(n, dtype=np.float32) * s for n, s in zip(self.shape, self.spacing)],
                           indexing="ij", sparse=True)


# -- 1. ROI ------------------------------------------------------------------------------------
def roi_bounds(lo_pt: np.ndarray, hi_pt: np.ndarray, margin_mm: float, spacing: Sequence[float],
               shape: Sequence[int], prompts: np.ndarray,
               prev: Optional[Slices] = None) -> tuple[np.ndarray, np.ndarray]:
    """ROI ``[lo, hi)`` holding the points' box ``[lo_pt, hi_pt]`` plus ``margin_mm``.

    ``prev`` (the previous ROI of the object, first attempt only) is kept as it is when it
    still holds every prompt with half the margin to spare on each inner face (its caches
    stay valid); otherwise the new ROI also covers it.
    """
    pad = np.ceil(margin_mm / np.asarray(spacing)).astype(int)
    lo = np.maximum(lo_pt - pad, 0)
    hi = np.minimum(hi_pt + pad + 1, shape)
    if prev is None:
        return lo, hi
    plo = np.array([s.start for s in prev])
    phi = np.array([s.stop for s in prev])
    half = pad // 2
    ok_lo = (plo == 0) | np.all(prompts - half >= plo, axis=0)
    ok_hi = (phi == np.asarray(shape)) | np.all(prompts + half < phi, axis=0)
    if np.all(ok_lo) and np.all(ok_hi):
        return plo, phi
    return np.minimum(lo, plo), np.maximum(hi, phi)


def touches_inner_face(mask: np.ndarray, inner_lo: Sequence[bool], inner_hi: Sequence[bool]) -> bool:
    """Whether ``mask`` has a voxel on a face of its box flagged as inner (not the volume border)."""
    return any((inner_lo[ax] and np.take(mask, 0, axis=ax).any())
               or (inner_hi[ax] and np.take(mask, -1, axis=ax).any()) for ax in range(3))


def pooling_factors(roi_shape: Sequence[int], spacing: Sequence[float], max_voxels: int) -> np.ndarray:
    """Integer factors per axis so that the pooled ROI holds at most ``max_voxels`` voxels.

    The axis with the finest pooled spacing is coarsened first (as isotropic as possible).
    """
    sp = np.asarray(spacing, float)
    f = np.ones(3, int)
    while np.prod(np.ceil(np.asarray(roi_shape) / f)) > max_voxels:
        f[np.argmin(sp * f)] += 1
    return f


# -- 2. intensity model --------------------------------------------------------------------------
def working_image(roi: np.ndarray, f: np.ndarray, wshape: Sequence[int], ct: bool) -> tuple[np.ndarray, float]:
    """The ROI mean-pooled by ``f`` and normalised: ``(work, scale)``.

    CT is clipped to :data:`~medseg.core.intensity.CT_RANGE_HU`, other images to their 0.5-99.5
    percentiles (on the working grid), then divided by ``scale`` (robust noise level).
    """
    work = pool_mean(roi, f, wshape) if np.any(f > 1) else roi.astype(np.float32)
    x, _, _ = clip_intensity(work, CT_RANGE_HU if ct else None)
    scale = noise_scale(x)
    return x / scale, scale


def smoothed(work: np.ndarray, spacing: Sequence[float], amount: float) -> np.ndarray:
    """Gaussian smoothing of ``amount`` x the finest working spacing (isotropic in mm)."""
    return ndi.gaussian_filter(work, sigma=smoothing_sigma(spacing, amount))


def smoothing_sigma(spacing: Sequence[float], amount: float) -> list[float]:
    """Per-axis sigma, in voxels, of ``amount`` x the finest spacing."""
    return [max(0.0, amount * min(spacing) / s) for s in spacing]


def otsu_threshold(values: np.ndarray) -> Optional[float]:
    """Otsu threshold of a 1D sample, 64 bins (None when it is constant).

    The threshold is the upper edge of the last bin of the lower class (the bins' upper edges
    are given to :func:`skimage.filters.threshold_otsu` as their positions; Otsu's criterion
    does not change when all positions shift by half a bin).
    """
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return None
    hist, edges = np.histogram(values, bins=64, range=(lo, hi))
    return float(threshold_otsu(hist=(hist, edges[1:])))


def click_model(smooth: np.ndarray, p: np.ndarray, wsp: Sequence[float],
                cfg: ClassicalConfig) -> tuple[float, float]:
    """Intensity Gaussian ``(mu, sd)`` of the click at working voxel ``p``.

    ``mu``: the smoothed image at the click. ``sd``: the distance from ``mu`` to the Otsu
    threshold of the click's neighbourhood (``otsu_radius_mm``) over ``other_level`` (the
    other class then lies ``other_level`` sd away); without a threshold, the robust spread in
    a ball of ``click_radius_mm``. At least ``sigma_floor``.
    """
    mu = float(smooth[tuple(p)])
    thr = None
    if cfg.otsu_radius_mm > 0:
        thr = otsu_threshold(_box_around(smooth, p, [int(round(cfg.otsu_radius_mm / s)) for s in wsp]))
    if thr is not None and abs(mu - thr) > 0:
        sd = abs(mu - thr) / cfg.other_level
    else:
        vals = _box_around(smooth, p, [int(round(cfg.click_radius_mm / s)) for s in wsp])
        sd = float(1.4826 * np.median(np.abs(vals - mu)))
    log.debug("click model mu %.2f sd %.2f", mu, max(sd, cfg.sigma_floor))
    return mu, max(sd, cfg.sigma_floor)


def _box_around(img: np.ndarray, p: np.ndarray, r: Sequence[int]) -> np.ndarray:
    """The values of ``img`` in the box ``p +- r`` voxels (clipped to the array), flat."""
    lo = np.maximum(p - r, 0)
    hi = np.minimum(p + np.array(r) + 1, img.shape)
    return img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].ravel()


def likelihood(smooth: np.ndarray, mu: float, sd: float) -> np.ndarray:
    """Unnormalised Gaussian likelihood of each voxel under a click's model (1 at ``mu``)."""
    return np.exp(-0.5 * ((smooth - mu) / sd) ** 2)


def match_floor(cfg: ClassicalConfig) -> float:
    """Likelihood above which a voxel matches a click (within ``other_level`` sd)."""
    return np.exp(-0.5 * cfg.other_level ** 2)


def local_texture(work: np.ndarray, mean: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """Local texture: Gaussian-weighted standard deviation, then a 3x3x3 minimum.

    ``mean`` is ``work`` smoothed with ``sigma``. The minimum filter keeps a single intensity
    step (an organ's own boundary layer, next to its smooth interior) from reading as texture;
    thin striped tissue (abdominal wall: muscle and fat in 1-2 voxel layers) stays textured.
    """
    var = ndi.gaussian_filter(work * work, sigma) - mean * mean
    return ndi.minimum_filter(np.sqrt(np.maximum(var, 0.0)), size=3)


def texture_match(li: np.ndarray, texture: np.ndarray, near: np.ndarray, match: np.ndarray,
                   cfg: ClassicalConfig) -> np.ndarray:
    """Scale a positive click's intensity match down where the tissue is much more textured.

    Reference: the ``texture_quantile`` of the texture over the voxels near the click (within
    ``texture_radius_mm``) that match its intensity; voxels above it lose likelihood as a
    half-Gaussian with scale ``texture`` x max(reference, robust spread).
    """
    tv = texture[near & match]
    if tv.size < 5:
        return li
    ref = float(np.percentile(tv, cfg.texture_quantile))
    spread = 1.4826 * float(np.median(np.abs(tv - np.median(tv))))
    scale = cfg.texture * max(ref, spread, 1e-3)
    return li * np.exp(-0.5 * (np.maximum(texture - ref, 0.0) / scale) ** 2)


def support_radius(dist: np.ndarray, match: np.ndarray, fraction: float) -> float:
    """Largest radius (mm) of a ball around the click in which ≥ ``fraction`` of voxels match."""
    d = dist.ravel()
    order = np.argsort(d, kind="stable")
    cum = np.cumsum(match.ravel()[order]) / np.arange(1, d.size + 1)
    ok = np.nonzero(cum >= fraction)[0]
    return float(d[order][ok[-1]]) if ok.size else 0.0


# -- 3. priors ------------------------------------------------------------------------------------
def dist2_mm(axes: Sequence[np.ndarray], c: np.ndarray, wsp: Sequence[float]) -> np.ndarray:
    """Squared distance (mm^2) of every working voxel to working voxel ``c``."""
    return sum((g - float(ci) * s) ** 2 for g, ci, s in zip(axes, c, wsp))


def click_term(smooth: np.ndarray, c: np.ndarray, model: tuple[float, float], others: Sequence[np.ndarray],
               axes: Sequence[np.ndarray], wsp: Sequence[float], texture: Optional[np.ndarray],
               cfg: ClassicalConfig, shaped: Optional[Callable[..., Optional[np.ndarray]]] = None) -> np.ndarray:
    """One click's prior term: its intensity likelihood times a spatial Gaussian over its support.

    The support radius is that of the largest ball around the click in which at least
    ``support`` of the voxels match (for a positive click: also no more textured than around
    it). A negative click (``others``: the positive clicks) reaches at most half way to the
    nearest positive click. ``shaped(match, c, r_c)`` may give an elongated spatial prior for
    a positive click (:func:`elongated_spatial`, cached by the caller).
    """
    floor = match_floor(cfg)
    li = likelihood(smooth, *model)
    d2 = dist2_mm(axes, c, wsp)
    if texture is not None and not len(others):
        li = texture_match(li, texture, d2 <= cfg.texture_radius_mm ** 2, li > floor, cfg)
    r_c = support_radius(np.sqrt(d2), li > floor, cfg.support)
    if len(others):
        dmin = float(np.min(np.sqrt((((np.asarray(others) - c) * wsp) ** 2).sum(1))))
        r_c = max(min(max(r_c, min(wsp)), 0.5 * dmin / cfg.extent), 1e-3)
    else:
        r_c = max(r_c, cfg.min_radius_vox * min(wsp))
    log.debug("support radius %.1f mm", r_c)
    spatial = np.exp(-0.5 * (np.sqrt(d2) / (cfg.extent * r_c)) ** 2)
    if cfg.aniso > 1 and not len(others) and shaped is not None:
        elongated = shaped(li > floor, c, r_c)
        if elongated is not None:
            spatial = elongated
    return (li * spatial).astype(np.float32, copy=False)


def object_prior(l_fg: np.ndarray, l_neg: np.ndarray, cfg: ClassicalConfig) -> np.ndarray:
    """Foreground probability from the positive and negative click terms and a flat background."""
    l_bg = np.maximum(cfg.negative_strength * l_neg, cfg.background_weight * match_floor(cfg))
    return l_fg / (l_fg + l_bg + 1e-12)


def correction_prior(prior: np.ndarray, prev_w: np.ndarray, last_w: np.ndarray, last_positive: bool,
                     axes: Sequence[np.ndarray], wsp: Sequence[float], cfg: ClassicalConfig) -> np.ndarray:
    """After a correction: ``prior`` within the new click's zone of influence, ``prev_w`` outside.

    The zone is a Gaussian of ``influence`` x the click's depth in the error region (at
    least ``min_radius_vox`` working voxels). A negative click's zone also takes in the whole
    part of the previous mask that ``prior`` rejects and that connects to the click
    (``negative_connected``): a leak goes in one correction.

    Parameters
    ----------
    prior : float ndarray
        The prior from all clicks, working grid.
    prev_w : float32 ndarray
        The previous mask as a fraction per working voxel.
    last_w : (M, 3) int ndarray
        The newest prompt's voxels on the working grid.
    """
    inside_prev = prev_w > 0.5
    region = inside_prev if not last_positive else ~inside_prev
    w = np.zeros(prior.shape, np.float32)
    for c in last_w:
        depth = click_depth(region, tuple(c), wsp)
        r_inf = cfg.influence * max(depth, cfg.min_radius_vox * min(wsp))
        np.maximum(w, np.exp(-0.5 * dist2_mm(axes, c, wsp) / r_inf ** 2), out=w)
    if cfg.negative_connected and not last_positive:
        lab_r, _ = ndi.label(inside_prev & (prior < 0.5))
        ids = [i for i in (lab_r[tuple(c)] for c in last_w) if i > 0]
        if ids:
            np.maximum(w, np.isin(lab_r, ids).astype(np.float32), out=w)
    return w * prior + (1.0 - w) * prev_w


def elongated_spatial(match, c, r_c, wsp, grids, cfg) -> Optional[np.ndarray]:
    """Spatial prior of a click shaped by the matching tissue around it (tubes, long organs).

    The voxels that match the click's intensity and connect to it within ``aniso_reach``
    support radii give a second-moment ellipsoid about the click; the Gaussian's shortest
    axis keeps the support radius, the others stretch by the ellipsoid's axis ratios (at most
    ``aniso``). A compact target gives a near-sphere, i.e. the isotropic prior.
    """
    reach = cfg.aniso_reach * r_c
    half = [max(1, int(np.ceil(reach / s_))) for s_ in wsp]
    lo = [max(0, int(ci) - h) for ci, h in zip(c, half)]
    hi = [min(n, int(ci) + h + 1) for ci, n, h in zip(c, match.shape, half)]
    sub = match[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    cc = tuple(int(ci) - l for ci, l in zip(c, lo))
    if not sub[cc]:
        return None
    lab, _ = ndi.label(sub)
    pts = np.argwhere(lab == lab[cc]).astype(np.float64)
    if len(pts) < 10:
        return None
    d = (pts - np.asarray(cc, float)) * np.asarray(wsp)
    d = d[np.sum(d ** 2, axis=1) <= reach ** 2]
    if len(d) < 10:
        return None
    evals, evecs = np.linalg.eigh(np.einsum("ni,nj->ij", d, d) / len(d))  # no BLAS (see _walker)
    evals = np.maximum(evals, 1e-6)
    ratio = np.minimum(np.sqrt(evals / evals[0]), cfg.aniso)
    sig = cfg.extent * r_c * ratio
    dz, dy, dx = (g - float(ci) * s_ for g, ci, s_ in zip(grids, c, wsp))
    m2 = 0.0
    for k in range(3):
        e = evecs[:, k]
        m2 = m2 + ((e[0] * dz + e[1] * dy + e[2] * dx) / sig[k]) ** 2
    return np.exp(-0.5 * m2).astype(np.float32)


def click_depth(region: np.ndarray, c: tuple, spacing: Sequence[float]) -> float:
    """Distance (mm) from voxel ``c`` to the border of ``region`` (0 when outside it)."""
    if not region[c]:
        return 0.0
    lab, _ = ndi.label(region)
    comp = lab == lab[c]
    bb = ndi.find_objects(comp.astype(np.uint8))[0]
    edt = ndi.distance_transform_edt(np.pad(comp[bb], 1), sampling=spacing)
    return float(edt[tuple(int(ci) - b.start + 1 for ci, b in zip(c, bb))])


# -- 4. solve -------------------------------------------------------------------------------------
def walker_seeds(wshape: Sequence[int], wpos: np.ndarray, wneg: np.ndarray, blocked_w: Optional[np.ndarray],
                 box_w: Optional[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds of the walker and their values: positive clicks 1; negative clicks, blocked voxels
    and (with a box) everything outside the box 0.

    Returns
    -------
    seeds : bool ndarray, values : float64 ndarray
        Both ``wshape``.
    """
    seeds = np.zeros(wshape, bool)
    values = np.zeros(wshape, np.float64)
    for p in wpos:
        seeds[tuple(p)] = True
        values[tuple(p)] = 1.0
    for p in wneg:
        seeds[tuple(p)] = True
        values[tuple(p)] = 0.0
    if blocked_w is not None:
        seeds |= blocked_w
        values[blocked_w] = 0.0
    if box_w is not None:
        a, b = box_w
        inbox = np.zeros(wshape, bool)
        inbox[a[0]:b[0] + 1, a[1]:b[1] + 1, a[2]:b[2] + 1] = True
        seeds |= ~inbox
        values[~inbox] = 0.0
    return seeds, values


def solve(work: np.ndarray, smooth: np.ndarray, prior: np.ndarray, seeds: np.ndarray, values: np.ndarray,
          wsp: Sequence[float], cfg: ClassicalConfig) -> np.ndarray:
    """Random walker with the prior; foreground probability per working voxel.

    Edge weights come from a copy smoothed by ``edge_smooth`` (less than the click models'
    ``smooth``), so that thin planes between touching organs stay walls. The solve stops
    relative to the seeded right-hand side: a few iterations of edge-aware smoothing of the
    prior.
    """
    edge_img = smooth if cfg.edge_smooth == cfg.smooth else smoothed(work, wsp, cfg.edge_smooth)
    weights = edge_weights(edge_img[None], wsp, beta=cfg.beta)
    return solve_walker(weights, prior, gamma=cfg.gamma, seeds=seeds, seed_values=values,
                        rtol=cfg.cg_rtol, maxiter=cfg.cg_maxiter, free_norm=False)


def clean_mask(x: np.ndarray, wpos: np.ndarray, wsp: Sequence[float], cfg: ClassicalConfig) -> np.ndarray:
    """The walker's probability ``x`` to the object on the working grid.

    Threshold 0.5; the components holding positive clicks (all components without one);
    thin leaks cut (``open_frac``, :func:`cut_thin_leaks`); holes filled (``fill_holes``).
    """
    wmask = x > 0.5
    for p in wpos:
        wmask[tuple(p)] = True
    lab, _ = ndi.label(wmask)
    keep = np.unique([lab[tuple(p)] for p in wpos]) if len(wpos) else np.unique(lab[wmask])
    wmask = np.isin(lab, keep[keep > 0])
    if cfg.open_frac > 0 and len(wpos) and wmask.any():
        wmask = cut_thin_leaks(wmask, wpos, wsp, cfg.open_frac)
    if cfg.fill_holes:
        wmask = ndi.binary_fill_holes(wmask)
    return wmask


def cut_thin_leaks(wmask: np.ndarray, wpos: np.ndarray, wsp: Sequence[float], frac: float) -> np.ndarray:
    """Cut thin appendages of the object (leaks along thin tissue of the same intensity).

    An opening with a ball of radius ``frac`` x the object's depth at its deepest click (mm),
    computed with distance transforms; the parts of the opening that hold a click are kept,
    and the object's own boundary layer next to them is given back (``wmask`` within the
    radius of the kept body), so only appendages thinner than the ball and farther than its
    radius from the body are removed.
    """
    dist_in = ndi.distance_transform_edt(np.pad(wmask, 1), sampling=wsp)[1:-1, 1:-1, 1:-1]
    depth = max(float(dist_in[tuple(p)]) for p in wpos)
    r_mm = frac * depth
    if r_mm < min(wsp):
        return wmask
    core = dist_in > r_mm
    if not core.any():
        return wmask
    opened = ndi.distance_transform_edt(~core, sampling=wsp) <= r_mm
    for p in wpos:
        opened[tuple(p)] = True
    lab, _ = ndi.label(opened)
    keep = np.unique([lab[tuple(p)] for p in wpos])
    main = np.isin(lab, keep[keep > 0])
    return wmask & (ndi.distance_transform_edt(~main, sampling=wsp) <= r_mm)


# -- 5. refine: back to native resolution ----------------------------------------------------------
def native_mask(wmask: np.ndarray, x: np.ndarray, f: np.ndarray, shape: Sequence[int],
                blocked_roi: Optional[np.ndarray], linear_max_voxels: int,
                incremental: Optional[tuple[np.ndarray, np.ndarray]] = None,
                ) -> tuple[np.ndarray, Optional[tuple]]:
    """The working mask at native resolution: ``(mask, refine_box)``.

    Linear interpolation of the probability near the boundary for ROIs up to
    ``linear_max_voxels``, nearest neighbour above. ``incremental`` (the previous native mask
    on the same grid and its working mask) rewrites, in place, only the blocks whose working
    voxel changed. ``refine_box``: the working-grid part whose boundary needs refining
    (None: all; ``()``: none).
    """
    n_native = int(np.prod(shape))
    if not np.any(f > 1):
        mask = wmask
    elif n_native <= linear_max_voxels:
        prob = zoom_linear(np.where(ndi.binary_dilation(wmask), x, 0.0).astype(np.float32), shape)
        mask = prob[: shape[0], : shape[1], : shape[2]] > 0.5
    elif incremental is not None:
        return _changed_blocks(wmask, f, incremental, blocked_roi)
    else:
        mask = upsample_nearest(wmask, f, shape)
    if blocked_roi is not None:
        mask &= ~blocked_roi
    return mask, None


def _changed_blocks(wmask: np.ndarray, f: np.ndarray, incremental: tuple[np.ndarray, np.ndarray],
                    blocked_roi: Optional[np.ndarray]) -> tuple[np.ndarray, tuple]:
    """Rewrite in the previous native mask only the blocks whose working voxel changed."""
    mask, old_wmask = incremental
    bb = bounding_slices(wmask != (old_wmask > 0.5))
    if bb is None:
        return mask, ()  # unchanged blocks keep their refined boundary
    nsl = tuple(slice(b.start * k, min(b.stop * k, n)) for b, k, n in zip(bb, f, mask.shape))
    part = upsample_nearest(wmask[bb], f, tuple(s_.stop - s_.start for s_ in nsl))
    if blocked_roi is not None:
        part &= ~blocked_roi[nsl]
    mask[nsl] = part
    return mask, tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in bb)


def honour_clicks(mask: np.ndarray, pos: np.ndarray, neg: np.ndarray, blocked_roi: Optional[np.ndarray]) -> None:
    """Clicked voxels (ROI indices) get their label exactly, in place; blocked voxels stay out."""
    for p in pos:
        mask[tuple(p)] = True
    for p in neg:
        if np.all((p >= 0) & (p < np.array(mask.shape))):
            mask[tuple(p)] = False
    if blocked_roi is not None:
        for p in pos:
            if blocked_roi[tuple(p)]:
                mask[tuple(p)] = False


def native_box(wmask: np.ndarray, refined: bool, f: np.ndarray, shape: Sequence[int], pos: np.ndarray) -> Slices:
    """Box of the native mask from its working mask (no pass over the native ROI).

    For the nearest-neighbour path: the native mask is the upsampled working mask (refined
    within one working voxel), plus the clicked voxels ``pos`` (ROI indices).
    """
    bw = bounding_slices(ndi.binary_dilation(wmask) if refined else wmask)
    box = [slice(b.start * k, min(b.stop * k, n)) for b, k, n in zip(bw, f, shape)]
    for p in pos:
        box = [slice(min(b.start, int(c)), max(b.stop, int(c) + 1)) for b, c in zip(box, p)]
    return tuple(box)


def refine_band(img: np.ndarray, mask: np.ndarray, work: np.ndarray, wmask: np.ndarray, f: np.ndarray,
                 scale: float, sigma: float, blocked_roi: Optional[np.ndarray],
                 box: Optional[tuple[slice, slice, slice]] = None, max_voxels: Optional[int] = None) -> None:
    """Place the boundary at native resolution within one working voxel of the working mask.

    Local region competition: on the working grid, Gaussian-weighted (``sigma`` working
    voxels) means of the image inside and outside the working mask; every native voxel of
    the working voxels on either side of the boundary goes to the side whose local mean is
    closer to its own (normalised) intensity. ``mask`` (native ROI) is rewritten in place.

    Parameters
    ----------
    img : (Z, Y, X) ndarray
        The native ROI, raw intensities.
    mask : (Z, Y, X) bool ndarray
        The upsampled working mask (native ROI), changed in place.
    work : ndarray
        The normalised working grid (block means of ``img``).
    wmask : bool ndarray
        The object's mask on the working grid.
    f : (3,) int ndarray
        The pooling factors.
    scale : float
        The normalisation of ``work``: raw intensities (clipped) divided by ``scale``.
    sigma : float
        Scale of the local means, working voxels.
    blocked_roi : bool ndarray, optional
        Native voxels that must stay background.
    box : 3 slices, optional
        Refine only the working voxels in this box (the blocks that changed); all when None.
    max_voxels : int, optional
        Skip the refinement when the band holds more native voxels than this (bounded cost).
    """
    wm = wmask.astype(np.float32)
    gi = ndi.gaussian_filter(wm, sigma)
    gx = ndi.gaussian_filter(work * wm, sigma)
    mu_in = gx / np.maximum(gi, 1e-3)
    mu_out = (ndi.gaussian_filter(work, sigma) - gx) / np.maximum(1.0 - gi, 1e-3)
    band = ndi.binary_dilation(wmask) & ~ndi.binary_erosion(wmask, border_value=1)
    if box is not None:
        keep = np.zeros_like(band)
        keep[box] = True
        band &= keep
    n_band = int(np.count_nonzero(band))
    log.debug("refine band: %d working voxels x %d", n_band, int(np.prod(f)))
    if not n_band or (max_voxels is not None and n_band * int(np.prod(f)) > max_voxels):
        return
    iw = np.nonzero(band)
    # inside <=> the native value lies on the inner mean's side of the two means' midpoint
    # (raw units: the normalisation is a clip and a scale, and the midpoint lies within the clip)
    mi, mo = mu_in[iw], mu_out[iw]
    mid = (0.5 * (mi + mo) * scale).astype(np.float32)[:, None]
    sgn = np.sign(mi - mo).astype(np.float32)[:, None]
    offs = np.stack(np.meshgrid(*[np.arange(k) for k in f], indexing="ij"), -1).reshape(-1, 3)
    idx = tuple(np.minimum(i[:, None] * k + o[None, :], n - 1)  # ragged edge blocks: clipped
                for i, k, o, n in zip(iw, f, offs.T, mask.shape))
    inside = (img[idx] - mid) * sgn > 0
    if blocked_roi is not None:
        inside &= ~blocked_roi[idx]
    mask[idx] = inside
