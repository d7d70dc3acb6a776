"""A box on one slice as a training-free prompt: a click plus an in-plane limit, not a 3D limit."""

from __future__ import annotations

import numpy as np

from medseg.analysis.metrics import dice
from medseg.core.prompts import ObjectPrompts
from medseg.core.volume import Volume
from medseg.interactive import Session
from medseg.interactive.box_prompt import (as_click_prompts, box_click, box_corners, choose_box_click,
                                           is_planar_box, limit_to_box_plane, most_interior_pixel,
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
    assert not is_planar_box(((3, 1, 2), (4, 8, 9)))
    assert not is_planar_box(None)
    lo, hi = box_corners(((3, 8, 2), (1, 1, 9)))
    assert tuple(lo) == (1, 1, 2) and tuple(hi) == (3, 8, 9)


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
