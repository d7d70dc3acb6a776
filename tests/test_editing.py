"""medseg.core.editing: spacing-aware label edits (no napari)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.core import editing as E
from medseg.core.errors import InputError


def ball(shape, centre, radius_mm, spacing):
    zz, yy, xx = np.meshgrid(*(np.arange(s) * sp for s, sp in zip(shape, spacing)), indexing="ij")
    c = np.asarray(centre) * spacing
    return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius_mm ** 2


SP = (3.0, 1.0, 1.0)  # anisotropic


def test_grow_and_shrink_are_in_mm_with_anisotropic_spacing():
    m = np.zeros((21, 41, 41), bool)
    m[10, 20, 20] = True
    g = E.grow(m, 6.0, spacing=SP)
    # 6 mm reaches 2 slices in z (3 mm each) but 6 voxels in x/y
    assert g[8, 20, 20] and not g[7, 20, 20]
    assert g[10, 20, 26] and not g[10, 20, 27]
    b = ball((21, 41, 41), (10, 20, 20), 12.0, SP)
    s = E.shrink(b, 3.0, spacing=SP)
    assert s.sum() < b.sum() and np.all(s <= b)
    assert not s[6, 20, 20] and s[7, 20, 20]  # (10-6)*3=12mm at edge -> removed; 9 mm kept
    assert np.array_equal(E.margin(b, -3.0, spacing=SP), s)
    assert np.array_equal(E.margin(m, 6.0, spacing=SP), g)
    with pytest.raises(InputError, match="use shrink"):
        E.grow(m, -1, spacing=SP)
    with pytest.raises(InputError, match="use grow"):
        E.shrink(m, -1, spacing=SP)


def test_shrink_treats_array_border_as_background():
    m = np.ones((5, 5, 5), bool)
    s = E.shrink(m, 1.0, spacing=(1, 1, 1))
    assert s.sum() == 27


def test_smooth_removes_spikes_keeps_body():
    b = ball((20, 40, 40), (10, 20, 20), 10.0, (1, 1, 1))
    spiky = b.copy()
    spiky[10, 20, 30:38] = True  # one-voxel spike
    out = E.smooth(spiky, spacing=(1, 1, 1), sigma_mm=1.5)
    assert not out[10, 20, 35]
    assert out[10, 20, 20]
    assert abs(int(out.sum()) - int(b.sum())) < 0.1 * b.sum()
    assert np.array_equal(E.smooth(spiky, spacing=(1, 1, 1), sigma_mm=0), spiky)
    with pytest.raises(InputError, match="sigma_mm"):
        E.smooth(b, spacing=(1, 1, 1), sigma_mm=-1)


def test_fill_holes_3d_and_per_slice():
    b = ball((20, 30, 30), (10, 15, 15), 8.0, (1, 1, 1))
    hole = b.copy()
    hole[9:12, 14:17, 14:17] = False
    assert np.array_equal(E.fill_holes(hole), b)
    # a tube open at both ends: no 3D hole, but per slice the lumen is filled
    tube = np.zeros((5, 20, 20), bool)
    tube[:, 5:15, 5:15] = True
    tube[:, 8:12, 8:12] = False
    assert np.array_equal(E.fill_holes(tube), tube)
    assert E.fill_holes(tube, per_slice=True)[:, 8:12, 8:12].all()


def test_islands_and_largest():
    m = np.zeros((10, 10, 10), bool)
    m[0:4, 0:4, 0:4] = True  # 64 voxels
    m[8, 8, 8] = True  # 1 voxel
    m[6:8, 0:2, 0:2] = True  # 8 voxels
    out = E.remove_small_islands(m, spacing=(2, 1, 1), min_volume_mm3=10.0)  # voxel = 2 mm3
    assert not out[8, 8, 8] and out[6, 0, 0] and out[0, 0, 0]
    largest = E.keep_largest(m)
    assert largest.sum() == 64
    assert not E.keep_largest(np.zeros((2, 2, 2), bool)).any()
    with pytest.raises(InputError, match="min_volume_mm3"):
        E.remove_small_islands(m, spacing=(1, 1, 1), min_volume_mm3=-1)


def test_logical():
    a = np.zeros((2, 2, 2), bool)
    b = a.copy()
    a[0] = True
    b[:, 0] = True
    assert E.logical(a, b, "union").sum() == 6
    assert E.logical(a, b, "intersect").sum() == 2
    assert E.logical(a, b, "subtract").sum() == 2
    assert E.logical(a, b, "xor").sum() == 4
    with pytest.raises(InputError, match="op must be"):
        E.logical(a, b, "and")
    with pytest.raises(InputError, match="same shape"):
        E.logical(a, np.zeros((1, 2, 2), bool), "union")


def test_interpolate_slices_fills_between_annotations():
    sp = (4.0, 1.0, 1.0)
    # a cone: radius linear in z, so shape-based interpolation should be nearly exact
    zz, yy, xx = np.meshgrid(np.arange(11), np.arange(40), np.arange(40), indexing="ij")
    full = (yy - 20) ** 2 + (xx - 20) ** 2 <= (4 + 1.4 * zz) ** 2
    sparse = np.zeros_like(full)
    sparse[[1, 5, 9]] = full[[1, 5, 9]]
    out = E.interpolate_slices(sparse, spacing=sp)
    assert np.array_equal(out[[1, 5, 9]], full[[1, 5, 9]])
    assert not out[0].any() and not out[10].any()
    for s in (2, 3, 4, 6, 7, 8):
        inter = (out[s] & full[s]).sum() / max(1, (out[s] | full[s]).sum())
        assert inter > 0.85, (s, inter)
    # along another axis
    out_x = E.interpolate_slices(np.moveaxis(sparse, 0, 2), spacing=(1.0, 1.0, 4.0), axis=2)
    assert np.array_equal(np.moveaxis(out_x, 2, 0), out)
    with pytest.raises(InputError, match="axis must be"):
        E.interpolate_slices(sparse, spacing=sp, axis=3)


def test_apply_mask_respects_locked_labels():
    lm = np.zeros((3, 4, 4), np.uint8)
    lm[0] = 1
    lm[1] = 2
    lm[2, 0, 0] = 3
    new = np.zeros((3, 4, 4), bool)
    new[1:] = True
    out = E.apply_mask(lm, 3, new, locked=[2])
    assert np.all(out[1] == 2)  # locked label kept
    assert np.all(out[2] == 3)
    assert np.all(out[0] == 1)
    assert lm[2, 1, 1] == 0  # input untouched
    out2 = E.apply_mask(lm, 3, np.zeros_like(new))
    assert not (out2 == 3).any()
    with pytest.raises(InputError, match="is locked"):
        E.apply_mask(lm, 2, new, locked=[2])
    with pytest.raises(InputError, match="index must be"):
        E.apply_mask(lm, 300, new)
    with pytest.raises(InputError, match="must hold integers"):
        E.apply_mask(lm.astype(float), 1, new)
    with pytest.raises(InputError, match="must match"):
        E.apply_mask(lm, 1, new[:2])


def test_label_bbox_and_validation():
    lm = np.zeros((10, 10, 10), np.uint8)
    lm[2:4, 5, 6:9] = 4
    assert E.label_bbox(lm, [4], margin_vox=(1, 1, 1)) == (slice(1, 5), slice(4, 7), slice(5, 10))
    assert E.label_bbox(lm, [1]) is None
    with pytest.raises(InputError, match="spacing must be"):
        E.grow(lm > 0, 1, spacing=(1, 0, 1))
    with pytest.raises(InputError, match=r"\(Z, Y, X\)"):
        E.keep_largest(np.zeros((2, 2), bool))


def test_operations_registry():
    b = ball((10, 20, 20), (5, 10, 10), 5.0, (1, 1, 1))
    for name, fn in E.OPERATIONS.items():
        out = fn(b, (1.0, 1.0, 1.0))
        assert out.shape == b.shape and out.dtype == bool, name


def test_fill_holes_matches_scipy_on_random_masks():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    for p in (0.3, 0.6, 0.8):
        m = rng.random((12, 15, 17)) < p
        assert np.array_equal(E.fill_holes(m), ndi.binary_fill_holes(m)), p
    assert not E.fill_holes(np.zeros((3, 3, 3), bool)).any()
    assert E.fill_holes(np.ones((3, 3, 3), bool)).all()


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 8)])
def test_bounding_slices_equal_the_extent_of_the_voxels(shape):
    """The one bounding-box helper (classical engine, LiteMedSAM boxes, label_bbox) against the
    coordinates of the set voxels, in 2D and 3D; empty masks give None."""
    from medseg.core.editing import bounding_slices

    rng = np.random.default_rng(len(shape))
    for _ in range(20):
        m = rng.random(shape) > 0.97
        box = bounding_slices(m)
        if not m.any():
            assert box is None
            continue
        where = np.argwhere(m)
        assert box == tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(where.min(0), where.max(0)))
    assert bounding_slices(np.zeros(shape, bool)) is None
