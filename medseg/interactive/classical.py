"""The training-free default engine: ROI random walker with click-learned, shape-aware priors.

:class:`ClassicalEngine` runs, per prediction, the stages of :mod:`.classical_stages` (ROI,
intensity model, priors, solve, refine) on a region of interest around the object's prompts
only, and keeps what stays valid between clicks of one object (the working image, each
click's prior term, the last result) in a small cache (:class:`RoiCache`).
``timings`` holds the seconds spent per stage in the last :meth:`ClassicalEngine.predict`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from medseg.core.editing import bounding_slices
from medseg.interactive import classical_stages as st
from medseg.interactive._grid import paste_overlap, pool_any, pool_fraction
from medseg.interactive.box_prompt import (as_click_prompts, box_corners, choose_box_click, is_planar_box,
                                           limit_to_box_plane, ridge_clicks)
from medseg.interactive.classical_stages import WorkGrid
from medseg.interactive.engine import Slices
from medseg.core.prompts import ObjectPrompts
from medseg.core.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["ClassicalConfig", "ClassicalEngine", "RoiCache"]


@dataclass(frozen=True)
class ClassicalConfig:
    """Parameters of :class:`ClassicalEngine` (defaults chosen on the real scans, see benchmarks).

    Attributes
    ----------
    margin_mm, max_grow : float, int
        ROI margin around the prompts (mm) and how often the ROI may double it.
    max_voxels : int
        Largest working grid (the ROI is mean-pooled to fit).
    beta, gamma : float
        Walker edge contrast and prior strength.
    click_radius_mm, otsu_radius_mm, other_level, sigma_floor : float
        Click intensity model (:func:`~.classical_stages.click_model`).
    smooth, edge_smooth : float
        Smoothing of the click models' image and of the edges' image (x finest spacing).
    support, extent, min_radius_vox, aniso, aniso_reach : float
        A click's spatial support and its shape (:func:`~.classical_stages.click_term`).
    texture, texture_radius_mm, texture_quantile : float
        Damping of a positive click's match in more textured tissue (0: off).
    background_weight, negative_strength : float
        Flat background and negative clicks' weight in the prior.
    influence, negative_connected : float, bool
        A correction's zone of influence (:func:`~.classical_stages.correction_prior`).
    cg_rtol, cg_maxiter : float, int
        Walker solve stopping rule.
    open_frac, fill_holes : float, bool
        Thin leaks cut and holes filled on the working grid.
    linear_upsample_voxels : int
        Largest ROI (native voxels) upsampled linearly; nearest neighbour above.
    refine_min_factor : float
        Refine the boundary at native resolution when the geometric mean of the pooling
        factors is at least this (0: never).
    refine_sigma : float
        Scale, in working voxels, of the local inside/outside means.
    refine_max_voxels : int
        Skip the refinement when its band holds more native voxels than this.
    """

    margin_mm: float = 40.0
    max_voxels: int = 60_000
    beta: float = 6.0
    gamma: float = 0.04
    click_radius_mm: float = 2.5
    sigma_floor: float = 1.0
    other_level: float = 2.0
    max_grow: int = 3
    fill_holes: bool = True
    linear_upsample_voxels: int = 2_000_000
    cg_rtol: float = 1e-3
    cg_maxiter: int = 300
    background_weight: float = 2.0
    min_radius_vox: float = 2.0
    extent: float = 1.0
    support: float = 0.75
    influence: float = 2.0
    otsu_radius_mm: float = 10.0
    negative_strength: float = 2.0
    smooth: float = 1.0
    open_frac: float = 0.6
    aniso: float = 3.5
    aniso_reach: float = 4.0
    edge_smooth: float = 0.5
    texture: float = 1.5
    texture_radius_mm: float = 10.0
    texture_quantile: float = 97.0
    negative_connected: bool = True
    refine_min_factor: float = 2.0
    refine_sigma: float = 3.0
    refine_max_voxels: int = 200_000


@dataclass
class RoiCache:
    """What stays valid between predictions of one object while its ROI and grid stay.

    Attributes
    ----------
    work_key : tuple, optional
        :attr:`WorkGrid.key` of ``work``.
    work : float32 ndarray, optional
        The normalised working image; ``scale`` its normalisation.
    terms_key : tuple, optional
        Grid of ``terms``: each click's prior term, keyed by click, model and positive clicks.
    result_key : tuple, optional
        Grid of the last result; ``wmask`` its working mask (float32), ``native`` the native
        mask returned (recognised by identity when it comes back as ``previous``).
    box_of, box : ndarray and 3 slices, optional
        The box of the native mask ``box_of`` (large ROIs: from its working grid).
    """

    work_key: Optional[tuple] = None
    work: Optional[np.ndarray] = None
    scale: float = 1.0
    terms_key: Optional[tuple] = None
    terms: dict = field(default_factory=dict)
    result_key: Optional[tuple] = None
    wmask: Optional[np.ndarray] = None
    native: Optional[np.ndarray] = None
    box_of: Optional[np.ndarray] = None
    box: Optional[Slices] = None


#: Most click terms (and elongated priors) kept per grid (<= 240 KB each).
_MAX_TERMS = 64


class ClassicalEngine:
    """Training-free click-to-segment engine (random walker with click-learned priors on an ROI)."""

    name = "classical"
    prompt_types = ("point", "box", "scribble")
    supports_undo = True
    background_preparation = False

    def __init__(self, config: Optional[ClassicalConfig] = None) -> None:
        self.config = config or ClassicalConfig()
        self._image: Optional[np.ndarray] = None
        self._spacing = (1.0, 1.0, 1.0)
        self._ct = False
        self._cache = RoiCache()
        self.timings: dict[str, float] = {}  # seconds per stage of the last predict (profiling)
        self._ell: dict[tuple, Optional[np.ndarray]] = {}  # elongated priors, per grid and click
        self._box_clicks: dict = {}  # a 2D box's click, per box (chosen once per image)

    def _tick(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self._t_last
        self._t_last = now

    @property
    def is_ct(self) -> bool:
        """Whether the image set last is CT in HU (its Modality, or without one its value range)."""
        return self._ct

    # -- image ------------------------------------------------------------------------------
    def set_image(self, volume: Volume) -> None:
        """Hold the image (a view, no copy when already float32 or int)."""
        arr = volume.array
        if arr.ndim == 4:
            arr = arr[0]
        self._image = arr
        self._spacing = tuple(float(s) for s in volume.spacing)
        self._ct = str(volume.meta.get("Modality", "")).upper() == "CT"
        self._box_clicks = {}
        if not volume.meta.get("Modality"):
            lo, hi = float(arr.flat[:: max(1, arr.size // 20000)].min()), float(arr.max())
            self._ct = lo <= -900 and hi >= 300 and np.issubdtype(arr.dtype, np.integer)
        self.reset()

    def reset(self) -> None:
        """Forget the caches (a new object begins, or an undo)."""
        self._cache = RoiCache()
        self._ell = {}

    # -- prediction -------------------------------------------------------------------------
    def predict(self, prompts: ObjectPrompts, *, blocked: Optional[np.ndarray] = None,
                previous: Optional[tuple[Slices, np.ndarray]] = None) -> tuple[Slices, np.ndarray]:
        """Segment the current object.

        Parameters
        ----------
        prompts : ObjectPrompts
            The object's prompts, voxel indices. A box on one axial slice stands for a click
            (of the box's most interior voxels, the one whose object's 2D box matches the box
            best; :mod:`~medseg.interactive.box_prompt`) and limits the object to its in-plane
            extent on every slice (:meth:`predict_from_box_click`); a box over several slices
            is a hard 3D limit (everything outside it is background).
        blocked : (Z, Y, X) bool ndarray, optional
            Voxels that must stay background (locked labels, existing objects).
        previous : (slices, mask), optional
            The previous ROI result of this object (used to size the ROI).

        Returns
        -------
        slices : 3 slices
            The ROI in the full volume.
        mask : bool ndarray
            The object's mask inside the ROI (False everywhere outside it).
        """
        if self._image is None:
            raise RuntimeError("set_image first")
        if is_planar_box(prompts.box):
            # a box on one slice is not a 3D limit: it stands for a click, and limits the object
            # in-plane only (see medseg.interactive.box_prompt)
            key = tuple(map(tuple, box_corners(prompts.box)))
            if key not in self._box_clicks:  # chosen at the box's first prediction, kept after
                self._box_clicks[key] = choose_box_click(self, prompts.box, ridge_clicks(prompts.box, self._image.shape[1:]))
            click = self._box_clicks[key]
            return self.predict_from_box_click(prompts, click, blocked=blocked, previous=previous)
        return self._predict_prompts(prompts, blocked, previous)

    def predict_from_box_click(self, prompts: ObjectPrompts, click, *, blocked: Optional[np.ndarray] = None,
                               previous: Optional[tuple[Slices, np.ndarray]] = None) -> tuple[Slices, np.ndarray]:
        """Segment an object prompted by a box on one slice, the box standing for ``click``.

        ``click`` ``(k, j, i)`` joins the positive prompts in place of the box; the result is
        limited on every slice to the in-plane extent of the box and of the positive clicks
        (:func:`~medseg.interactive.box_prompt.limit_to_box_plane`). Parameters and returns as
        :meth:`predict`.
        """
        sl, roi = self._predict_prompts(as_click_prompts(prompts, click), blocked, previous)
        return sl, limit_to_box_plane(sl, roi, prompts)

    def _predict_prompts(self, prompts: ObjectPrompts, blocked: Optional[np.ndarray],
                         previous: Optional[tuple[Slices, np.ndarray]]) -> tuple[Slices, np.ndarray]:
        cfg = self.config
        self.timings = {}
        self._t_last = time.perf_counter()
        shape = np.asarray(self._image.shape)
        pos = np.asarray(prompts.positive, int).reshape(-1, 3)
        neg = np.asarray(prompts.negative, int).reshape(-1, 3)
        pts = self._anchor_points(pos, prompts.box, previous)
        if pts.size == 0:
            return (slice(0, 1),) * 3, np.zeros((1, 1, 1), bool)
        margin = cfg.margin_mm if prompts.box is None else min(cfg.margin_mm, 3.0 * max(self._spacing))
        prev_sl = previous[0] if previous is not None and previous[1].size else None
        clicks = np.concatenate([pos, neg]) if len(neg) else pos
        for attempt in range(cfg.max_grow + 1):
            lo, hi = st.roi_bounds(pts.min(0), pts.max(0), margin, self._spacing, self._image.shape, clicks,
                                   prev_sl if attempt == 0 else None)
            sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            may_grow = attempt < cfg.max_grow and prompts.box is None
            mask = self._predict_roi(sl, pos, neg, blocked, previous, prompts,
                                     grow_faces=(lo > 0, hi < shape) if may_grow else None)
            if mask is None:  # the working-grid mask touches an inner ROI face: grow first
                margin *= 2.0
                continue
            if prompts.box is not None or not st.touches_inner_face(mask, lo > 0, hi < shape):
                break
            margin *= 2.0
        return sl, mask

    # -- internals --------------------------------------------------------------------------
    def _anchor_points(self, pos: np.ndarray, box, previous) -> np.ndarray:
        """Voxels the ROI must hold: positive prompts, box corners and the previous mask's box."""
        anchor = [pos]
        if box is not None:
            anchor.append(np.asarray(box, int))
        bb = None
        if previous is not None and self._cache.box_of is previous[1]:
            bb = self._cache.box  # large ROI: box of our own last mask, from its working grid
        elif previous is not None and previous[1].any():
            bb = bounding_slices(previous[1])
        if bb is not None:
            sl = previous[0]
            anchor.append(np.array([[s.start + b.start for s, b in zip(sl, bb)],
                                    [s.start + b.stop - 1 for s, b in zip(sl, bb)]]))
        return np.concatenate(anchor)

    def _grid(self, sl: Slices) -> WorkGrid:
        """The ROI's working grid (its normalised image reused while the ROI stays)."""
        roi = self._image[sl]
        f = st.pooling_factors(roi.shape, self._spacing, self.config.max_voxels)
        wshape = tuple(int(np.ceil(n / k)) for n, k in zip(roi.shape, f))
        if self._cache.work_key == (sl, tuple(f)):
            work, scale = self._cache.work, self._cache.scale
        else:
            work, scale = st.working_image(roi, f, wshape, self._ct)
        wsp = tuple(float(s * k) for s, k in zip(self._spacing, f))
        return WorkGrid(sl, f, wshape, wsp, work, scale)  # type: ignore[arg-type]

    def _previous_on_grid(self, previous: tuple[Slices, np.ndarray], grid: WorkGrid) -> Optional[np.ndarray]:
        """Previous native ROI mask as a fraction on the current working grid."""
        psl, pm = previous
        if self._cache.result_key == grid.key and self._cache.native is pm:
            return self._cache.wmask
        if pm.size == 0 or not pm.any():
            return None
        native = paste_overlap(psl, pm, grid.slices)
        if native is None or not np.any(grid.factors > 1):
            return native
        return pool_fraction(native, grid.factors, grid.shape)

    def _click_terms(self, grid: WorkGrid, smooth, models, points, others, axes, texture) -> np.ndarray:
        """Maximum of the clicks' prior terms; a term is reused while its grid, click, model and
        (negative clicks) the positive clicks stay, so a click's cost does not grow with their number."""
        cache = self._cache
        out = np.zeros(grid.shape, np.float32)
        for model, c in zip(models, points):
            tkey = (tuple(int(v) for v in c), *model, tuple(tuple(int(v) for v in o) for o in others))
            term = cache.terms.get(tkey)
            if term is None:
                term = st.click_term(smooth, c, model, others, axes, grid.spacing, texture, self.config,
                                     shaped=lambda match, c_, r_c: self._elongated(grid, match, c_, r_c, model, axes))
                if len(cache.terms) < _MAX_TERMS:
                    cache.terms[tkey] = term
            np.maximum(out, term, out=out)
        return out

    def _elongated(self, grid: WorkGrid, match, c, r_c: float, model, axes) -> Optional[np.ndarray]:
        """:func:`~.classical_stages.elongated_spatial`, cached per grid, click and support."""
        key = (tuple((a.start, a.stop) for a in grid.slices), tuple(grid.factors), tuple(int(v) for v in c),
               round(r_c, 6), *model)
        if key not in self._ell:
            if len(self._ell) > _MAX_TERMS:
                self._ell.clear()
            self._ell[key] = st.elongated_spatial(match, c, r_c, grid.spacing, axes, self.config)
        return self._ell[key]

    def _prior(self, grid: WorkGrid, smooth, wpos, wneg, box, prompts, previous) -> np.ndarray:
        """The walker's prior: clicks' terms, then (a correction) the previous mask outside its zone."""
        cfg = self.config
        fg_models = [st.click_model(smooth, p, grid.spacing, cfg) for p in wpos]
        centres = list(wpos)
        if box is not None and not len(wpos):
            c = grid.to_grid((np.asarray(box[0]) + np.asarray(box[1])) // 2)
            fg_models, centres = [st.click_model(smooth, c, grid.spacing, cfg)], [c]
        axes = grid.axes_mm()
        texture = None
        if cfg.texture > 0 and (len(wpos) or box is not None):
            texture = st.local_texture(grid.work, smooth, st.smoothing_sigma(grid.spacing, cfg.smooth))
        if self._cache.terms_key != grid.key:
            self._cache.terms_key, self._cache.terms = grid.key, {}
        self._tick("smooth")
        l_fg = self._click_terms(grid, smooth, fg_models, centres, [], axes, texture)
        neg_models = [st.click_model(smooth, p, grid.spacing, cfg) for p in wneg]
        l_neg = self._click_terms(grid, smooth, neg_models, list(wneg), centres, axes, texture)
        prior = st.object_prior(l_fg, l_neg, cfg)
        if previous is not None and prompts.last is not None and len(prompts.last):
            prev_w = self._previous_on_grid(previous, grid)
            if prev_w is not None:
                prior = st.correction_prior(prior, prev_w, grid.to_grid(prompts.last), prompts.last_positive,
                                            axes, grid.spacing, cfg)
        return prior

    def _predict_roi(self, sl, pos, neg, blocked, previous, prompts, grow_faces=None) -> Optional[np.ndarray]:
        """The object's native mask in ROI ``sl``; None when it reaches a face in ``grow_faces``."""
        cfg, old = self.config, self._cache
        roi_native = self._image[sl]
        grid = self._grid(sl)
        f, off = grid.factors, grid.offset
        self._tick("pool")
        smooth = st.smoothed(grid.work, grid.spacing, cfg.smooth)
        wpos = grid.to_grid(pos) if len(pos) else np.zeros((0, 3), int)
        wneg = (neg - off) // f if len(neg) else np.zeros((0, 3), int)
        wneg = wneg[np.all((wneg >= 0) & (wneg < np.array(grid.shape)), axis=1)]
        prior = self._prior(grid, smooth, wpos, wneg, prompts.box, prompts, previous)
        self._tick("prior")
        blocked_roi = None if blocked is None else np.asarray(blocked[sl]) != 0
        blocked_w = pool_any(blocked_roi, f, grid.shape) if blocked_roi is not None and blocked_roi.any() else None
        box_w = None if prompts.box is None else (grid.to_grid(prompts.box[0]), grid.to_grid(prompts.box[1]))
        seeds, values = st.walker_seeds(grid.shape, wpos, wneg, blocked_w, box_w)
        self._tick("seeds")
        x = st.solve(grid.work, smooth, prior, seeds, values, grid.spacing, cfg)
        self._cache = RoiCache(work_key=grid.key, work=grid.work, scale=grid.scale,
                               terms_key=old.terms_key, terms=old.terms)
        self._tick("solve")
        wmask = st.clean_mask(x, wpos, grid.spacing, cfg)
        self._tick("post_grid")
        if grow_faces is not None and st.touches_inner_face(wmask, *grow_faces):
            return None  # decided on the working grid, before any native-resolution work
        incremental = None
        if old.result_key == grid.key and previous is not None and old.native is previous[1] \
                and previous[1].shape == roi_native.shape:
            incremental = (previous[1], old.wmask)
        mask, refine_box = st.native_mask(wmask, x, f, roi_native.shape, blocked_roi, cfg.linear_upsample_voxels,
                                          incremental)
        self._tick("upsample")
        refined = bool(cfg.refine_min_factor > 0 and len(pos) and wmask.any()
                       and float(np.prod(f)) >= cfg.refine_min_factor ** 3)
        if refined and refine_box != ():
            st.refine_band(roi_native, mask, grid.work, wmask, f, grid.scale, cfg.refine_sigma, blocked_roi,
                           refine_box, cfg.refine_max_voxels)
            self._tick("refine")
        st.honour_clicks(mask, pos - off, neg - off, blocked_roi)
        self._cache.result_key, self._cache.wmask, self._cache.native = grid.key, wmask.astype(np.float32), mask
        if np.any(f > 1) and roi_native.size > cfg.linear_upsample_voxels and wmask.any():
            self._cache.box_of, self._cache.box = mask, st.native_box(wmask, refined, f, mask.shape, pos - off)
        return mask
