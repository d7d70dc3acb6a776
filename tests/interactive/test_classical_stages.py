"""Each stage of the training-free engine on its own (medseg.interactive.classical_stages).

Every test here is built to fail when its stage is subtly wrong: a likelihood that does not
rank the object above the background, an ROI that drops a prompt, a correction that damages
the mask far from the click, a refinement that writes outside its band.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from medseg.core.editing import bounding_slices
from medseg.interactive import classical_stages as st
from medseg.interactive._grid import upsample_nearest
from medseg.interactive.classical import ClassicalConfig

CFG = ClassicalConfig()


def _phantom(seed: int = 0, shape=(24, 40, 40), noise: float = 10.0):
    """A bright box (object) in a darker, noisy background; raw intensities and the truth."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, bool)
    truth[6:18, 10:30, 12:28] = True
    img = (np.where(truth, 200.0, 80.0) + rng.normal(0, noise, shape)).astype(np.float32)
    return img, truth


def _grid(img: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> st.WorkGrid:
    f = np.ones(3, int)
    work, scale = st.working_image(img, f, img.shape, ct=False)
    sl = tuple(slice(0, n) for n in img.shape)
    return st.WorkGrid(sl, f, img.shape, tuple(spacing), work, scale)


# -- ROI ---------------------------------------------------------------------------------------------
def test_roi_holds_the_prompts_with_the_margin_and_stays_in_the_volume():
    pts = np.array([[5, 10, 40], [9, 30, 44]])
    lo, hi = st.roi_bounds(pts.min(0), pts.max(0), 8.0, (2.0, 1.0, 1.0), (20, 60, 50), pts)
    assert np.array_equal(lo, [1, 2, 32]) and np.array_equal(hi, [14, 39, 50])  # x clipped at 50
    assert np.all(pts >= lo) and np.all(pts < hi)


def test_roi_keeps_the_previous_roi_only_while_it_holds_the_prompts():
    prev = (slice(0, 20), slice(0, 40), slice(0, 40))
    shape = (20, 60, 60)
    inside = np.array([[10, 20, 20]])
    lo, hi = st.roi_bounds(inside.min(0), inside.max(0), 4.0, (1.0, 1.0, 1.0), shape, inside, prev)
    assert [slice(int(a), int(b)) for a, b in zip(lo, hi)] == list(prev)  # kept: caches stay valid
    near_face = np.array([[10, 20, 39]])  # less than half the margin from the inner face x = 40
    lo, hi = st.roi_bounds(near_face.min(0), near_face.max(0), 4.0, (1.0, 1.0, 1.0), shape, near_face, prev)
    assert hi[2] == 44 and lo[2] == 0  # grown past the click and still covering the previous ROI


def test_pooling_factors_fit_the_budget_and_coarsen_the_finest_axis_first():
    f = st.pooling_factors((40, 100, 100), (5.0, 1.0, 1.0), 60_000)
    assert np.prod(np.ceil(np.array([40, 100, 100]) / f)) <= 60_000
    assert list(f) == [1, 3, 3]  # z (5 mm) is already coarse: only y and x are pooled
    f = st.pooling_factors((40, 200, 200), (5.0, 1.0, 1.0), 60_000)
    assert np.prod(np.ceil(np.array([40, 200, 200]) / f)) <= 60_000
    assert list(f) == [2, 5, 5]  # y, x up to 5 mm first, then all three


def test_touches_inner_face_ignores_the_volume_border():
    m = np.zeros((5, 5, 5), bool)
    m[0, 2, 2] = True
    assert not st.touches_inner_face(m, [False, True, True], [True, True, True])
    assert st.touches_inner_face(m, [True, False, False], [False, False, False])


# -- intensity model --------------------------------------------------------------------------------
def test_working_image_is_unit_free_and_clips_ct():
    img, _ = _phantom()
    w1, s1 = st.working_image(img, np.ones(3, int), img.shape, ct=False)
    w2, s2 = st.working_image(img * 7.0, np.ones(3, int), img.shape, ct=False)
    np.testing.assert_allclose(w1, w2, rtol=1e-4, atol=1e-4)  # the scale absorbs the units
    assert s2 == pytest.approx(7.0 * s1, rel=1e-4)
    ct = np.full((8, 8, 8), 5000, np.int16)
    ct[:4] = -3000
    w, s = st.working_image(ct, np.ones(3, int), ct.shape, ct=True)
    assert w.max() * s == pytest.approx(3071.0) and w.min() * s == pytest.approx(-1024.0)


def test_otsu_threshold_separates_two_modes():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(0, 1, 500), rng.normal(10, 1, 300)])
    thr = st.otsu_threshold(v)
    assert 3.0 < thr < 7.0
    assert st.otsu_threshold(np.full(10, 4.0)) is None


def test_click_likelihood_ranks_object_voxels_above_the_background():
    img, truth = _phantom()
    g = _grid(img)
    smooth = st.smoothed(g.work, g.spacing, CFG.smooth)
    mu, sd = st.click_model(smooth, np.array([12, 20, 20]), g.spacing, CFG)
    li = st.likelihood(smooth, mu, sd)
    inside, outside = li[truth], li[~truth]
    # rank statistic (AUC) of object over background voxels
    auc = np.mean(inside[:, None] > outside[None, ::50])
    assert auc > 0.97
    assert np.median(inside) > 0.5 > np.median(outside)
    # the model's spread is the distance to the Otsu threshold over other_level: the background
    # mean lies about other_level * 2 sd away (so it scores below the match floor)
    assert li[~truth].mean() < st.match_floor(CFG)


# -- priors -----------------------------------------------------------------------------------------
def test_click_term_is_high_on_the_object_near_the_click_and_low_elsewhere():
    img, truth = _phantom()
    g = _grid(img)
    smooth = st.smoothed(g.work, g.spacing, CFG.smooth)
    c = np.array([12, 20, 20])
    term = st.click_term(smooth, c, st.click_model(smooth, c, g.spacing, CFG), [], g.axes_mm(), g.spacing, None, CFG)
    assert term.dtype == np.float32 and term[tuple(c)] > 0.9
    assert term[truth].mean() > 5 * term[~truth].mean()


def test_a_negative_click_term_does_not_reach_the_positive_click():
    img, _ = _phantom()
    g = _grid(img)
    smooth = st.smoothed(g.work, g.spacing, CFG.smooth)
    pos, neg = np.array([12, 20, 18]), np.array([12, 20, 22])  # both on the object, 4 mm apart
    model = st.click_model(smooth, neg, g.spacing, CFG)
    term = st.click_term(smooth, neg, model, [pos], g.axes_mm(), g.spacing, None, CFG)
    alone = st.click_term(smooth, neg, model, [], g.axes_mm(), g.spacing, None, CFG)
    # its spatial Gaussian is at most half the distance to the positive click: exp(-2) there
    assert term[tuple(neg)] > 0.9 and term[tuple(pos)] < 0.15 < 0.5 < alone[tuple(pos)]


def test_object_prior_is_a_probability_favouring_the_stronger_term():
    l_fg = np.array([0.9, 0.0, 0.5], np.float32)
    l_neg = np.array([0.0, 0.9, 0.0], np.float32)
    p = st.object_prior(l_fg, l_neg, CFG)
    assert np.all((p >= 0) & (p <= 1)) and p[0] > 0.5 > p[1] and p[2] < p[0]


def test_correction_prior_changes_only_near_the_correction():
    shape = (20, 40, 40)
    prev = np.zeros(shape, np.float32)
    prev[5:15, 5:35, 5:35] = 1.0
    new = np.zeros(shape, np.float32)  # the clicks' prior alone would drop everything
    axes = st.WorkGrid((slice(0, 20),) * 3, np.ones(3, int), shape, (1.0, 1.0, 1.0), new, 1.0).axes_mm()
    cfg = ClassicalConfig(negative_connected=False)
    out = st.correction_prior(new, prev, np.array([[10, 20, 8]]), False, axes, (1.0, 1.0, 1.0), cfg)
    assert out[10, 20, 8] < 0.05  # at the negative click: the new prior
    assert out[10, 20, 33] > 0.95  # far from it: the previous mask
    joined = st.correction_prior(new, prev, np.array([[10, 20, 8]]), False, axes, (1.0, 1.0, 1.0), CFG)
    assert joined[10, 20, 33] < 0.05  # negative_connected: the whole rejected part connected to it


# -- solve ------------------------------------------------------------------------------------------
def test_walker_seeds_mark_clicks_blocked_voxels_and_outside_the_box():
    blocked = np.zeros((6, 6, 6), bool)
    blocked[0, 0, 0] = True
    seeds, values = st.walker_seeds((6, 6, 6), np.array([[3, 3, 3]]), np.array([[1, 1, 1]]), blocked,
                                    (np.array([1, 1, 1]), np.array([4, 4, 4])))
    assert seeds[3, 3, 3] and values[3, 3, 3] == 1.0
    assert seeds[1, 1, 1] and values[1, 1, 1] == 0.0 and seeds[0, 0, 0] and values[0, 0, 0] == 0.0
    assert seeds[5, 5, 5] and not seeds[2, 2, 2] and seeds.sum() == 6 ** 3 - 4 ** 3 + 2


def test_solve_and_clean_segment_the_phantom():
    img, truth = _phantom(noise=25.0)
    g = _grid(img)
    smooth = st.smoothed(g.work, g.spacing, CFG.smooth)
    c = np.array([12, 20, 20])
    l_fg = st.click_term(smooth, c, st.click_model(smooth, c, g.spacing, CFG), [], g.axes_mm(), g.spacing, None, CFG)
    prior = st.object_prior(l_fg, np.zeros_like(l_fg), CFG)
    seeds, values = st.walker_seeds(g.shape, c[None], np.zeros((0, 3), int), None, None)
    x = st.solve(g.work, smooth, prior, seeds, values, g.spacing, CFG)
    m = st.clean_mask(x, c[None], g.spacing, CFG)
    dice = 2 * (m & truth).sum() / (m.sum() + truth.sum())
    assert dice > 0.9


def test_clean_mask_keeps_the_clicked_component_and_fills_its_holes():
    x = np.zeros((12, 12, 12))
    x[2:8, 2:8, 2:8] = 1.0
    x[4, 4, 4] = 0.0  # a hole
    x[10:12, 10:12, 10:12] = 1.0  # another component, not clicked
    m = st.clean_mask(x, np.array([[3, 3, 3]]), (1.0, 1.0, 1.0), ClassicalConfig(open_frac=0.0))
    assert m[4, 4, 4] and not m[11, 11, 11] and m.sum() == 6 ** 3


# -- refine -----------------------------------------------------------------------------------------
def test_native_mask_rewrites_only_changed_blocks_and_respects_blocked_voxels():
    f = np.array([2, 2, 2])
    old_w = np.zeros((4, 4, 4), bool)
    old_w[1:3, 1:3, 1:3] = True
    prev = upsample_nearest(old_w, f, (8, 8, 8))
    prev[2, 2, 2] = False  # a native detail of an unchanged block (e.g. a refined boundary)
    new_w = old_w.copy()
    new_w[3, 3, 3] = True
    mask, box = st.native_mask(new_w, new_w.astype(float), f, (8, 8, 8), None, 0, (prev, old_w.astype(np.float32)))
    assert mask is prev and not mask[2, 2, 2]  # unchanged block kept as it was
    assert mask[6:8, 6:8, 6:8].all() and box == (slice(2, 5),) * 3
    blocked = np.zeros((8, 8, 8), bool)
    blocked[4, 4, 4] = True
    lin, box = st.native_mask(old_w, old_w.astype(float), f, (8, 8, 8), blocked, 10 ** 6)  # linear path
    assert box is None and not lin[4, 4, 4] and lin[3, 4, 4] and lin[2, 4, 4] and not lin[1, 4, 4]


def test_refine_band_moves_the_boundary_only_within_one_working_voxel():
    img, truth = _phantom(shape=(24, 40, 40), noise=4.0)
    truth_shift = np.zeros_like(truth)
    truth_shift[6:18, 10:30, 13:28] = True  # x boundary at 13: not on the 4-voxel block grid
    img = np.where(truth_shift, 200.0, 80.0).astype(np.float32)
    f = np.array([2, 4, 4])
    wshape = tuple(int(np.ceil(n / k)) for n, k in zip(img.shape, f))
    work, scale = st.working_image(img, f, wshape, ct=False)
    wmask = work * scale > 140.0
    mask = upsample_nearest(wmask, f, img.shape)
    before = mask.copy()
    st.refine_band(img, mask, work, wmask, f, scale, 1.5, None)
    band = upsample_nearest(ndi.binary_dilation(wmask) & ~ndi.binary_erosion(wmask, border_value=1), f,
                            img.shape)
    assert not (mask != before)[~band].any()  # nothing changes outside the band
    assert (mask != truth_shift).sum() < (before != truth_shift).sum()  # and the boundary gets closer


def test_honour_clicks_and_native_box():
    mask = np.zeros((6, 6, 6), bool)
    blocked = np.zeros((6, 6, 6), bool)
    blocked[5, 5, 5] = True
    mask[1, 1, 1] = True
    st.honour_clicks(mask, np.array([[2, 2, 2], [5, 5, 5]]), np.array([[1, 1, 1], [9, 9, 9]]), blocked)
    assert mask[2, 2, 2] and not mask[1, 1, 1] and not mask[5, 5, 5]
    w = np.zeros((3, 3, 3), bool)
    w[1, 1, 1] = True
    box = st.native_box(w, False, np.array([2, 2, 2]), (6, 6, 6), np.array([[0, 5, 3]]))
    assert box == bounding_slices(upsample_nearest(w, np.array([2, 2, 2]), (6, 6, 6)) | _at((6, 6, 6), (0, 5, 3)))


def _at(shape, idx):
    m = np.zeros(shape, bool)
    m[idx] = True
    return m
