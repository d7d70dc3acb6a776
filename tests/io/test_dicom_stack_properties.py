"""Property tests of DICOM stack planning (medseg.io.dicom._geometry.plan_stack) with Hypothesis.

Synthetic image headers (no pixels) on random oblique planes: sub-degree tilts, gaps, jittered
positions, mixed PixelSpacing and single slices. Each test states the geometric fact a silent
bug would break (wrong anatomy copied into a gap, a tilt squared off, a spacing guessed), and
one end-to-end read checks the voxels a plan produces.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medseg.io.dicom._geometry import plan_stack
from medseg.io.dicom._headers import FileRecord, ImageRecord

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
angles = st.tuples(*(st.floats(-np.pi, np.pi) for _ in range(3)))


def rotation(a: float, b: float, c: float) -> np.ndarray:
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


def record(n: int, position, row, col, *, spacing=(0.8, 0.7), thickness=None, sbs=None) -> ImageRecord:
    f = FileRecord(path=f"im{n:03d}.dcm", transfer_syntax="1.2.840.10008.1.2.1", rows=8, columns=6, samples=1,
                   bits_allocated=16, bits_stored=16, signed=True, photometric="MONOCHROME2", frames=1,
                   little_endian=True)
    return ImageRecord(file=f, frame=None, sop_uid=f"1.2.3.{n}", position=tuple(float(v) for v in position),
                       orientation=tuple(float(v) for v in (*row, *col)), pixel_spacing=tuple(spacing),
                       slope=1.0, intercept=0.0, slice_thickness=thickness, spacing_between_slices=sbs)


def series(t, euler, *, tilt_deg=0.0, spacing=(0.8, 0.7), origin=(10.0, -20.0, 30.0), shuffle_seed=0):
    """Images at distances ``t`` (mm) along a line tilted ``tilt_deg`` from the slice normal."""
    r = rotation(*euler)
    row, col = r[:, 0], r[:, 1]
    normal = np.cross(row, col)
    tilt = np.radians(tilt_deg)
    u = np.cos(tilt) * normal + np.sin(tilt) * col  # step line, tilted towards the column vector
    images = [record(i, np.asarray(origin) + ti * u, row, col, spacing=spacing) for i, ti in enumerate(t)]
    order = np.random.default_rng(shuffle_seed).permutation(len(images))  # file order must not matter
    return [images[i] for i in order], row, col, normal, u


@SETTINGS
@given(angles, st.integers(3, 30), st.floats(0.3, 6.0), st.floats(0.011, 0.99))
def test_sub_degree_tilt_is_kept_in_the_affine(euler, n, step, tilt):
    """A tilt of 0.011-0.99 deg stays in the affine: every slice centre sits where it was acquired."""
    t = np.arange(n) * step
    images, row, col, normal, u = series(t, euler, tilt_deg=tilt)
    plan = plan_stack(images)
    assert plan.problem is None and plan.shape == (n, 8, 6)
    assert plan.tilt_deg == pytest.approx(tilt, abs=1e-3)
    np.testing.assert_allclose(plan.affine[:3, 0], u * step, atol=1e-6)
    for k in range(n):
        np.testing.assert_allclose(plan.affine[:3, :3] @ [k, 0, 0] + plan.affine[:3, 3],
                                   plan.images[k].position, atol=1e-6)
    assert any("gantry tilt" in w for w in plan.warnings)


@SETTINGS
@given(angles, st.integers(2, 20), st.floats(0.3, 6.0))
def test_untilted_stack_is_exactly_orthogonal(euler, n, step):
    images, row, col, normal, _ = series(np.arange(n) * step, euler)
    plan = plan_stack(images)
    assert plan.problem is None and plan.tilt_deg == 0.0 and not plan.irregular
    np.testing.assert_allclose(plan.affine[:3, 0], normal * step, atol=1e-9)
    np.testing.assert_allclose(plan.affine[:3, 1], col * 0.8, atol=1e-12)
    np.testing.assert_allclose(plan.affine[:3, 2], row * 0.7, atol=1e-12)
    np.testing.assert_allclose(plan.affine[:3, 3], plan.images[0].position)
    assert [s for s in plan.sources] == [[(k, 1.0)] for k in range(n)]
    assert [im.file.path for im in plan.images] == [f"im{k:03d}.dcm" for k in range(n)]  # sorted along n


@st.composite
def gapped(draw):
    """Distances along the line: ``n`` slices at ``step`` with 1-2 gaps of a whole number of steps
    and every acquired position jittered by less than the regular-grid tolerance."""
    n = draw(st.integers(12, 30))
    step = draw(st.floats(0.5, 5.0))
    slots = list(range(n + 2))
    holes = draw(st.lists(st.integers(1, n), min_size=1, max_size=2, unique=True))
    kept = [s for s in slots if s not in holes]
    tol = max(0.01, 0.01 * step)
    jitter = draw(st.lists(st.floats(-0.45 * tol, 0.45 * tol), min_size=len(kept), max_size=len(kept)))
    jitter[0] = jitter[-1] = 0.0  # ends exact: the grid runs from the first to the last slice
    return np.array([s * step + j for s, j in zip(kept, jitter)]), step, len(slots)


@SETTINGS
@given(angles, gapped())
def test_gap_fill_copies_the_acquired_slice_at_each_grid_position(euler, g):
    """Each regular-grid slice is a copy of the acquired slice at that position or an interpolation
    between the two acquired slices around it, never a slice from elsewhere."""
    t, step, m = g
    images, *_ = series(t, euler)
    plan = plan_stack(images)
    assert plan.problem is None and plan.irregular and plan.shape[0] == m
    grid_step = (t[-1] - t[0]) / (m - 1)
    tol = max(0.01, 0.01 * (t[-1] - t[0]) / (len(t) - 1))
    ordered_t = np.array([np.dot(np.subtract(im.position, plan.images[0].position),
                                 plan.affine[:3, 0] / np.linalg.norm(plan.affine[:3, 0])) for im in plan.images])
    np.testing.assert_allclose(ordered_t, t, atol=1e-6)
    for k, src in enumerate(plan.sources):
        tg = k * grid_step
        if len(src) == 1:
            (i, w), = src
            assert w == 1.0 and abs(t[i] - tg) <= tol, (k, src, tg, t[i])
            assert k not in plan.interpolated
        else:
            (lo, wl), (hi, wh) = src
            assert hi == lo + 1 and t[lo] < tg < t[hi] and k in plan.interpolated
            assert wl + wh == pytest.approx(1.0) and wh == pytest.approx((tg - t[lo]) / (t[hi] - t[lo]))
    assert len(plan.interpolated) == m - len(t)


@SETTINGS
@given(angles, gapped(), st.floats(0.2, 12.0))
def test_tilt_with_a_gap_keeps_the_tilt(euler, g, tilt):
    """Resampling a tilted series with a gap keeps the true (tilted) step vector."""
    t, step, m = g
    images, row, col, normal, u = series(t, euler, tilt_deg=tilt)
    plan = plan_stack(images)
    assert plan.problem is None and plan.irregular
    assert plan.tilt_deg == pytest.approx(tilt, abs=0.02)
    grid_step = (t[-1] - t[0]) / (m - 1)
    np.testing.assert_allclose(plan.affine[:3, 0], u * grid_step, atol=1e-3 * grid_step + 1e-6)
    last = plan.affine[:3, :3] @ [m - 1, 0, 0] + plan.affine[:3, 3]
    np.testing.assert_allclose(last, plan.images[-1].position, atol=1e-6)


@SETTINGS
@given(angles, st.integers(2, 12), st.sampled_from([0, 1]), st.floats(0.001, 0.3))
def test_mixed_pixel_spacing_is_refused(euler, n, axis, delta):
    images, *_ = series(np.arange(n) * 2.0, euler)
    odd = images[n // 2]
    ps = list(odd.pixel_spacing)
    ps[axis] += delta
    images[n // 2] = record(99, odd.position, odd.orientation[:3], odd.orientation[3:], spacing=ps)
    plan = plan_stack(images)
    assert plan.problem is not None and "PixelSpacing varies" in plan.problem


def test_pixel_spacing_rounding_noise_is_accepted():
    images, *_ = series(np.arange(4) * 2.0, (0.1, 0.2, 0.3))
    odd = images[1]
    images[1] = record(98, odd.position, odd.orientation[:3], odd.orientation[3:], spacing=(0.8 + 5e-5, 0.7))
    assert plan_stack(images).problem is None


@SETTINGS
@given(angles, st.floats(0.1, 10.0), st.one_of(st.none(), st.floats(0.1, 10.0)))
def test_single_slice_z_spacing_from_its_headers(euler, thickness, sbs):
    """One image: the k column is the normal times SpacingBetweenSlices, else SliceThickness."""
    r = rotation(*euler)
    im = record(0, (1.0, 2.0, 3.0), r[:, 0], r[:, 1], thickness=thickness, sbs=sbs)
    plan = plan_stack([im])
    assert plan.problem is None and plan.shape == (1, 8, 6) and plan.sources == [[(0, 1.0)]]
    step = sbs if sbs else thickness
    np.testing.assert_allclose(plan.affine[:3, 0], np.cross(r[:, 0], r[:, 1]) * step, atol=1e-9)
    np.testing.assert_allclose(plan.affine[:3, 3], (1.0, 2.0, 3.0))
    assert not plan.warnings


def test_single_slice_without_thickness_gets_1_mm_with_a_warning():
    im = record(0, (0, 0, 0), (1, 0, 0), (0, 1, 0))
    plan = plan_stack([im])
    np.testing.assert_allclose(plan.affine[:3, 0], (0, 0, 1.0))
    assert any("z spacing set to 1 mm" in w for w in plan.warnings)


@pytest.mark.parametrize("holes, ok", [([3], True), ([3, 7], True), ([2, 3, 4], False)])
def test_too_many_missing_slices_is_an_error(holes, ok):
    kept = [s for s in range(16) if s not in holes]
    images, *_ = series(np.array(kept) * 2.0, (0.0, 0.0, 0.0))
    plan = plan_stack(images)
    if ok:
        assert plan.problem is None and len(plan.interpolated) == len(holes)
        assert any("missing slice" in w for w in plan.warnings)
    else:
        assert "too sparse" in plan.problem
    strict = plan_stack(images, strict=True)
    assert strict.problem is not None


def test_uneven_spacing_is_resampled_with_a_warning():
    t = np.array([0.0, 2.0, 4.0, 6.3, 8.0, 10.0, 12.0])
    images, *_ = series(t, (0.0, 0.0, 0.0))
    plan = plan_stack(images)
    assert plan.problem is None and plan.irregular
    assert any("uneven slice spacing" in w for w in plan.warnings)
    assert plan.interpolated == [3]


def test_off_line_and_duplicate_positions_are_errors():
    images, row, col, normal, _ = series(np.arange(5) * 2.0, (0.0, 0.0, 0.0))
    moved = images[2]
    images[2] = record(77, np.add(moved.position, 2.0 * row), row, col)
    assert "do not lie on one line" in plan_stack(images).problem
    images, row, col, *_ = series(np.arange(5) * 2.0, (0.0, 0.0, 0.0))
    images.append(record(78, images[0].position, row, col))
    assert "share a position" in plan_stack(images).problem


def test_gap_fill_voxels_end_to_end(tmp_path):
    """Read a written series with a slice removed: copied slices equal their files, the filled one
    is the mean of its neighbours."""
    import pydicom

    from medseg.io.dicom import read_dicom

    from dicom_helpers import ramp_volume, write_series

    vol = ramp_volume(shape=(12, 6, 5))
    files = sorted(write_series(vol, tmp_path / "s", seed=1))
    by_z = sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    by_z[4].unlink()
    out = read_dicom(tmp_path / "s")
    assert out.shape == (12, 6, 5)
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-4)
    keep = [k for k in range(12) if k != 4]
    np.testing.assert_array_equal(out.array[keep], vol.array[keep])
    np.testing.assert_allclose(out.array[4], (vol.array[3].astype(float) + vol.array[5]) / 2, atol=0.51)


def test_copies_of_one_sop_instance_are_dropped_wherever_they_are():
    images, *_ = series(np.arange(6) * 2.0, (0.3, 0.2, 0.1))
    images = sorted(images, key=lambda im: im.file.path)
    images.insert(2, images[1])  # the same SOP instance twice (two copies of a file)
    images.insert(5, images[4])
    plan = plan_stack(images)
    assert plan.problem is None and plan.shape == (6, 8, 6)
    assert "2 duplicate file(s) of the same SOP instance ignored" in plan.warnings
    assert [im.sop_uid for im in plan.images] == [f"1.2.3.{k}" for k in range(6)]


def test_shared_position_error_names_the_position_to_a_micrometre():
    images, row, col, *_ = series(np.arange(4) * 2.0, (0.0, 0.0, 0.0), origin=(10.123456, -20.654321, 30.5))
    first = min(images, key=lambda im: im.position[2])
    images.append(record(50, first.position, row, col))
    plan = plan_stack(images)
    assert "5 images at only 4 distinct positions" in plan.problem
    assert "first at [10.123, -20.654, 30.5] mm" in plan.problem
