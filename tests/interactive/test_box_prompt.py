"""A box on one slice as a training-free prompt: a click plus an in-plane limit, not a 3D limit."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.analysis.metrics import dice
from medseg.core.prompts import ObjectPrompts
from medseg.core.volume import Volume
from medseg.interactive import Session
from medseg.interactive.box_prompt import (as_click_prompts, box_click, box_corners, box_iou, box_region,
                                           choose_box_click,
                                           clicked_object_box, is_planar_box, limit_to_box_plane, most_interior_pixel,
                                           ridge_clicks, ridge_pixels)


def _ellipsoid(shape=(24, 48, 56), centre=(12, 22, 30), radii_mm=(18.0, 12.0, 15.0), spacing=(2.0, 1.0, 1.0)):
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    d = sum(((g - c) * s / r) ** 2 for g, c, s, r in zip((z, y, x), centre, spacing, radii_mm))
    obj = d < 1.0
    rng = np.random.default_rng(7)
    img = (30.0 + 150.0 * obj + rng.normal(0, 6, shape)).astype(np.float32)
    return Volume.from_spacing(img, spacing, meta={"Modality": "MR"}), obj


def test_planar_box_and_corners():
    assert is_planar_box(((3, 1, 9), (3, 8, 2)))
    assert not is_planar_box(((3, 1, 2), (4, 8, 9))) and not is_planar_box(((5, 1, 2), (3, 8, 9)))
    assert is_planar_box(((np.int64(300), 1, 2), (300, 8, 9)))  # equal slice numbers, not the same object
    assert not is_planar_box(None)
    lo, hi = box_corners(((3, 8, 2), (1, 1, 9)))
    assert tuple(lo) == (1, 1, 2) and tuple(hi) == (3, 8, 9)


def test_box_region_is_the_inclusive_in_plane_extent():
    r = box_region(((4, 6, 2), (4, 1, 9)), (10, 12))  # corners in any order, j before i
    j, i = np.nonzero(r)
    assert r.shape == (10, 12) and r.dtype == bool and r.sum() == 6 * 8
    assert (j.min(), j.max(), i.min(), i.max()) == (1, 6, 2, 9)
    assert box_region(((0, 3, 3), (0, 3, 3)), (5, 5)).sum() == 1  # one pixel, corners inclusive


def test_box_click_is_the_most_interior_voxel_of_the_box_or_of_the_mask_within():
    # a 5 x 11 box: its middle row, the first of its 7 most interior pixels (no mirroring of j and i)
    assert box_click(((4, 10, 20), (4, 14, 30)), (40, 40)) == (4, 12, 22)
    assert box_click(((4, 20, 10), (4, 30, 14)), (40, 40)) == (4, 22, 12)
    # corners in any order, middle slice of a 3D box
    assert box_click(((6, 14, 30), (2, 10, 20)), (40, 40)) == (4, 12, 22)
    within = np.zeros((40, 40), bool)
    within[10:13, 20:23] = True  # the top-left part of the box
    assert box_click(((4, 10, 20), (4, 14, 30)), (40, 40), within) == (4, 11, 21)
    # an empty mask within: the box itself
    assert box_click(((4, 10, 20), (4, 14, 30)), (40, 40), np.zeros((40, 40), bool)) == (4, 12, 22)
    # a region touching the array's edge: the edge counts as outside
    edge = np.zeros((9, 9), bool)
    edge[:, :3] = True
    assert most_interior_pixel(edge) == (1, 1)
    last_col, last_row = np.zeros((9, 9), bool), np.zeros((9, 9), bool)
    last_col[:, 8], last_row[8] = True, True
    assert most_interior_pixel(last_col) == (0, 8) and most_interior_pixel(last_row) == (8, 0)
    assert ridge_pixels(last_col) == [(0, 8), (4, 8), (8, 8)] and ridge_pixels(last_row) == [(8, 0), (8, 4), (8, 8)]
    # a tall narrow box: its middle column; boxes of odd and even sides (each side counted)
    assert box_click(((4, 10, 20), (4, 30, 24)), (40, 40)) == (4, 12, 22)
    assert box_click(((4, 10, 19), (4, 13, 23)), (40, 40)) == (4, 11, 20)  # 4 x 5
    assert box_click(((4, 10, 19), (4, 14, 22)), (40, 40)) == (4, 11, 20)  # 5 x 4
    assert box_click(((4, 19, 19), (4, 23, 23)), (40, 40)) == (4, 21, 21)  # 5 x 5


def test_click_prompts_keep_the_corrections():
    p = ObjectPrompts(np.array([[1, 2, 3]]), np.array([[4, 5, 6]]), ((0, 0, 0), (0, 9, 9)),
                      np.array([[4, 5, 6]]), False)
    c = as_click_prompts(p, (0, 4, 4))
    assert c.box is None and c.positive.tolist() == [[0, 4, 4], [1, 2, 3]]
    assert c.negative.tolist() == [[4, 5, 6]] and c.last.tolist() == [[4, 5, 6]] and not c.last_positive


def test_in_plane_limit_keeps_every_slice_and_widens_with_clicks():
    sl = (slice(2, 8), slice(10, 30), slice(5, 25))
    roi = np.ones((6, 20, 20), bool)
    p = ObjectPrompts(np.zeros((0, 3), int), np.zeros((0, 3), int), ((4, 12, 8), (4, 20, 15)))
    out = limit_to_box_plane(sl, roi, p)
    assert out.all(axis=(1, 2)).sum() == 0 and out.any(axis=(1, 2)).all()  # every slice kept
    expect = np.zeros_like(roi)
    expect[:, 12 - 10:20 - 10 + 1, 8 - 5:15 - 5 + 1] = True
    np.testing.assert_array_equal(out, expect)
    p2 = ObjectPrompts(np.array([[6, 25, 8]]), np.zeros((0, 3), int), p.box)  # a click below the box
    out2 = limit_to_box_plane(sl, roi, p2)
    assert out2[:, 25 - 10, 8 - 5].all() and not out2[:, 26 - 10].any()
    assert roi.all()  # the input is not changed


def test_classical_box_on_one_slice_gives_the_3d_object():
    """The box of the object's slice (padded by 1 voxel), drawn off-centre: the object spans
    all its slices (a box was once a hard 3D limit - the object could not leave its slice)."""
    vol, obj = _ellipsoid()
    s = Session("classical")
    s.set_image(vol)
    k = 9  # not the largest slice
    j, i = np.nonzero(obj[k])
    box = ((k, j.min() - 1, i.min() - 1), (k, j.max() + 1, i.max() + 1))
    m = s.add_box(*box)
    assert m[k].sum() > 0.8 * obj[k].sum()
    assert m[k + 4].any() and m[k - 4].any()  # beyond the box's slice
    lo, hi = box_corners(box)
    inplane = np.zeros(obj.shape[1:], bool)
    inplane[lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
    assert not (m & ~inplane[None]).any()  # limited in-plane to the box on every slice
    assert dice(m, obj & inplane[None]) > 0.85


def test_classical_3d_box_stays_a_hard_limit():
    vol, obj = _ellipsoid()
    s = Session("classical")
    s.set_image(vol)
    m = s.add_box((8, 6, 10), (16, 38, 50))  # a slab of the object: slices 8-16 of 2-22
    assert m[12, 22, 30] and not m[:8].any() and not m[17:].any()


def test_ridge_pixels_are_the_ends_and_centre_of_the_middle_row():
    region = np.zeros((40, 40), bool)
    region[10:15, 20:31] = True  # 5 x 11: most interior row 12, columns 22-28
    assert ridge_pixels(region) == [(12, 22), (12, 25), (12, 28)]
    assert ridge_clicks(((7, 10, 20), (7, 30, 24)), (40, 40)) == [(7, 12, 22), (7, 20, 22), (7, 28, 22)]
    assert ridge_clicks(((7, 19, 19), (7, 23, 23)), (40, 40)) == [(7, 21, 21)]  # 5 x 5
    assert ridge_clicks(((7, 10, 19), (7, 13, 23)), (40, 40)) == [(7, 11, 20), (7, 12, 20), (7, 12, 22)]  # 4 x 5
    square = np.zeros((9, 9), bool)
    square[2:7, 2:7] = True
    assert ridge_pixels(square) == [(4, 4)]


def test_the_box_click_is_the_ridge_point_whose_object_fills_the_box():
    """The box's first ridge point lies in a distinct brighter structure held by the object
    (as a kidney's renal sinus): clicked there, the training-free engine segments that structure
    (a 2D box far smaller than the user's); another ridge point gives the object, whose box
    matches the user's."""
    shape, k = (12, 48, 64), 6
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    outer = ((z - k) * 2.0 / 9) ** 2 + ((y - 24) / 10.0) ** 2 + ((x - 36) / 14.0) ** 2 < 1.0
    hole = ((z - k) * 2.0 / 6) ** 2 + (y - 24) ** 2 + (x - 30) ** 2 < 4.5 ** 2
    obj = outer & ~hole
    rng = np.random.default_rng(1)
    img = (30.0 + 120.0 * obj + 250.0 * hole + rng.normal(0, 5, shape)).astype(np.float32)
    vol = Volume.from_spacing(img, (2.0, 1.0, 1.0), meta={"Modality": "MR"})
    j, i = np.nonzero(outer[k])
    box = ((k, j.min() - 1, i.min() - 1), (k, j.max() + 1, i.max() + 1))
    cands = ridge_clicks(box, shape[1:])
    assert len(cands) == 3 and hole[cands[0]] and obj[cands[1]] and obj[cands[2]]
    from medseg.interactive import ClassicalEngine

    eng = ClassicalEngine()
    eng.set_image(vol)
    click = choose_box_click(eng, box, cands)
    assert click != cands[0] and obj[click]
    assert choose_box_click(eng, box, cands[:1] * 2) == cands[0]  # one candidate: no choice to make
    s = Session("classical")  # the engine's own box route makes the same choice
    s.set_image(vol)
    m = s.add_box(*box)
    assert dice(m, obj) > 0.8 and (m & hole).sum() < 0.5 * hole.sum()


def test_box_iou():
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert box_iou((0, 0, 9, 9), (10, 10, 19, 19)) == 0.0
    assert box_iou((0, 0, 9, 9), (0, 5, 9, 14)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 9, 9), (0, 12, 9, 19)) == 0.0  # side by side, a gap between: disjoint in i only
    assert box_iou((0, 0, 9, 9), (12, 0, 19, 9)) == 0.0  # disjoint in j only
    assert box_iou((0, 20, 9, 29), (12, 20, 19, 29)) == 0.0
    assert box_iou((0, 0, 9, 9), (9, 9, 12, 12)) == pytest.approx(1 / (100 + 16 - 1))  # one shared pixel
    # inclusive pixel counts of non-square boxes away from the origin: 3 x 5 and 5 x 3, 3 x 3 shared
    assert box_iou((10, 20, 12, 24), (10, 22, 14, 24)) == pytest.approx(9 / (15 + 15 - 9))


def test_clicked_object_box_is_in_volume_indices():
    vol, obj = _ellipsoid(shape=(24, 72, 96), centre=(12, 44, 62))  # far from the volume's origin
    from medseg.interactive import ClassicalEngine

    eng = ClassicalEngine()
    eng.set_image(vol)
    k = 12
    j, i = np.nonzero(obj[k])
    got = clicked_object_box(eng, (k, 44, 62))
    truth = (j.min(), i.min(), j.max(), i.max())
    assert max(abs(a - b) for a, b in zip(got, truth)) <= 3, (got, truth)  # the same box, not shifted


class _BoxesEngine:
    """A stand-in for the training-free engine (a dependency of choose_box_click, not the code
    under test): clicked at a known candidate it returns that candidate's 2D object on the
    click's slice, in an ROI away from the volume's origin."""

    def __init__(self, objects):
        self.objects, self.resets = objects, 0

    def reset(self):
        self.resets += 1

    def predict(self, prompts):
        assert len(prompts.positive) == 1 and len(prompts.negative) == 0 and prompts.box is None
        k, j, i = (int(v) for v in prompts.positive[0])
        sl = (slice(k - 2, k + 3), slice(5, 45), slice(7, 77))
        roi = np.zeros((5, 40, 70), bool)
        box = self.objects[(k, j, i)]
        if box is not None:
            roi[2, box[0] - 5:box[2] - 5 + 1, box[1] - 7:box[3] - 7 + 1] = True
        return sl, roi


def test_choose_box_click_ranks_candidates_by_the_iou_of_their_object_box_with_the_users():
    box = ((9, 10, 30), (9, 20, 60))
    a, b, c = (9, 15, 35), (9, 15, 45), (9, 15, 55)
    eng = _BoxesEngine({a: (10, 10, 20, 40), b: (10, 30, 20, 60), c: None})  # b's object fills the box
    assert choose_box_click(eng, box, [a, b]) == b
    d = (9, 16, 45)
    eng.objects[d] = (10, 30, 40, 60)  # the box's width, three times its height
    assert choose_box_click(eng, box, [d, b]) == b
    assert choose_box_click(eng, box, [c, a]) == a  # an empty object scores 0
    e = (9, 12, 32)
    eng.objects[e] = (30, 10, 40, 20)  # an object beside the box: also 0
    assert choose_box_click(eng, box, [c, e]) == c and choose_box_click(eng, box, [e, c]) == e
    assert clicked_object_box(eng, b) == (10, 30, 20, 60)  # volume indices (the ROI starts at 7, 5, 7)
    assert choose_box_click(eng, box, [c, c]) == c and eng.resets == 3 * 5  # one candidate: not evaluated
    eng2 = _BoxesEngine({a: (10, 30, 20, 60), b: (10, 30, 20, 60)})
    assert choose_box_click(eng2, box, [b, a]) == b  # ties: the first
