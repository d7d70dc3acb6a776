"""Property tests of the geometry core (medseg.core.geometry, medseg.core.volume) with Hypothesis.

Random oblique directions, spacings and origins; each property is one that a silent geometry
bug (a mirrored axis, a tolerance off by a factor of 1000, a swapped column) would break.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.core import geometry
from medseg.core.errors import GeometryError, InputError
from medseg.core.volume import Volume

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

spacings = st.tuples(*(st.floats(0.05, 20.0) for _ in range(3)))
origins = st.tuples(*(st.floats(-500.0, 500.0) for _ in range(3)))
angles = st.tuples(*(st.floats(-np.pi, np.pi) for _ in range(3)))


def rotation(a: float, b: float, c: float) -> np.ndarray:
    """A proper rotation from three Euler angles (radians)."""
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@SETTINGS
@given(spacings, origins, angles)
def test_make_affine_round_trips_spacing_origin_direction(spacing, origin, euler):
    d = rotation(*euler)
    a = geometry.make_affine(spacing, origin, d)
    np.testing.assert_allclose(geometry.spacing_of(a), spacing, rtol=1e-9)
    np.testing.assert_allclose(geometry.origin_of(a), origin, atol=1e-9)
    np.testing.assert_allclose(geometry.direction_of(a), d, atol=1e-9)
    # voxel (k, j, i) -> origin + k*sz*d0 + j*sy*d1 + i*sx*d2
    idx = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [2.5, -1.0, 3.0]])
    expect = np.asarray(origin) + (idx * np.asarray(spacing)) @ d.T
    np.testing.assert_allclose(geometry.apply_affine(a, idx), expect, atol=1e-6)
    v = Volume(np.zeros((2, 3, 4), np.int16), a)
    np.testing.assert_allclose(v.world_to_index(v.index_to_world(idx)), idx, atol=1e-6)
    assert v.voxel_volume_ml == pytest.approx(np.prod(spacing) / 1000.0, rel=1e-9)


@SETTINGS
@given(spacings, st.integers(0, 2), st.floats(-20.0, 0.0))
def test_make_affine_refuses_a_non_positive_spacing(spacing, axis, bad):
    """A negative spacing would mirror an axis silently: it must be refused, whatever the others are."""
    sp = list(spacing)
    sp[axis] = bad
    with pytest.raises(GeometryError, match="spacing"):
        geometry.make_affine(sp)
    sp[axis] = float("nan")
    with pytest.raises(GeometryError, match="spacing"):
        geometry.make_affine(sp)
    with pytest.raises(GeometryError, match="spacing"):
        geometry.make_affine(spacing[:2])


def test_default_direction_is_axial_dicom():
    a = geometry.make_affine((3.0, 2.0, 1.0), (10.0, 20.0, 30.0))
    np.testing.assert_array_equal(a, [[0, 0, 1, 10], [0, 2, 0, 20], [3, 0, 0, 30], [0, 0, 0, 1]])
    assert geometry.orientation_code(a) == "SPL"
    assert geometry.orientation_code(geometry.reverse_axes(a)) == "LPS"


@SETTINGS
@given(spacings, origins, angles, st.floats(0.01, 5.0), st.integers(0, 3))
def test_same_grid_tells_grids_a_fraction_of_a_mm_apart(spacing, origin, euler, shift, column):
    """Two grids 0.01-5 mm apart (origin or one axis) differ; within 1e-4 mm they are the same."""
    a = geometry.make_affine(spacing, origin, rotation(*euler))
    b = a.copy()
    b[column % 3, 3 if column == 3 else column] += shift
    shape = (4, 5, 6)
    assert geometry.same_grid(shape, a, shape, a)
    assert not geometry.same_grid(shape, a, shape, b)
    near = a.copy()
    near[:3, 3] += 1e-4
    assert geometry.same_grid(shape, a, shape, near)
    assert not geometry.same_grid(shape, a, (4, 5, 7), a)
    va, vb, vn = (Volume(np.zeros(shape, np.uint8), m) for m in (a, b, near))
    assert va.same_grid(vn) and not va.same_grid(vb)
    va.require_same_grid(vn)
    with pytest.raises(GeometryError, match="must match the image grid"):
        va.require_same_grid(vb)


@SETTINGS
@given(spacings, origins, angles)
def test_lps_ras_and_axis_reversal(spacing, origin, euler):
    a = geometry.make_affine(spacing, origin, rotation(*euler))
    ras = geometry.lps_to_ras(a)
    np.testing.assert_allclose(ras[:2], -a[:2], atol=1e-12)
    np.testing.assert_allclose(ras[2:], a[2:], atol=1e-12)
    np.testing.assert_allclose(geometry.ras_to_lps(ras), a, atol=1e-12)
    r = geometry.reverse_axes(a)  # (k, j, i) -> (i, j, k)
    np.testing.assert_allclose(r[:3, 0], a[:3, 2])
    np.testing.assert_allclose(r[:3, 2], a[:3, 0])
    np.testing.assert_allclose(r[:3, 3], a[:3, 3])


@SETTINGS
@given(angles)
def test_orientation_code_names_the_dominant_direction_of_each_axis(euler):
    d = rotation(*euler)
    code = geometry.orientation_code(geometry.make_affine((1, 1, 1), direction=d))
    for letter, col in zip(code, d.T):
        ax = int(np.argmax(np.abs(col)))
        assert letter == ("LR", "PA", "SI")[ax][0 if col[ax] > 0 else 1]


@pytest.mark.parametrize("bad, match", [
    (np.eye(3), "4x4"),
    (np.full((4, 4), np.nan), "NaN"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], float), "last row"),
    (np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
])
def test_check_affine_names_the_problem(bad, match):
    with pytest.raises(GeometryError, match=match):
        geometry.check_affine(bad)
    with pytest.raises(GeometryError, match=match):
        Volume(np.zeros((2, 2, 2)), bad)


def test_check_affine_accepts_a_tiny_but_regular_grid():
    a = np.diag([0.01, 0.01, 0.01, 1.0])  # determinant 1e-6 > 1e-12
    np.testing.assert_array_equal(geometry.check_affine(a), a)


def test_volume_shape_channels_and_errors():
    a = geometry.make_affine((2.0, 1.0, 1.0))
    v = Volume(np.zeros((3, 4, 5), np.float32), a)
    assert v.shape == (3, 4, 5) and v.channels == 1
    mc = v.with_array(np.zeros((2, 3, 4, 5), np.float32), note="x")
    assert mc.channels == 2 and mc.shape == (3, 4, 5) and mc.meta["note"] == "x"
    with pytest.raises(GeometryError, match="spatial shape"):
        v.with_array(np.zeros((3, 4, 6)))
    with pytest.raises(InputError, match="dimensions"):
        Volume(np.zeros((4, 5)), a)
    with pytest.raises(InputError, match="empty axis"):
        Volume(np.zeros((0, 4, 5)), a)
    assert v.orientation == "SPL"
    assert "orientation='SPL'" in repr(v) and "spacing=(2.0, 1.0, 1.0)" in repr(v)


@pytest.mark.parametrize("index, inside", [
    ((0, 0, 0), True), ((-0.5, 0, 0), True), ((-0.51, 0, 0), False), ((2.49, 3.49, 4.49), True),
    ((2.5, 0, 0), False), ((0, 3.5, 0), False), ((0, 0, 4.5), False), ((0, -0.6, 0), False),
])
def test_contains_index_uses_voxel_edges(index, inside):
    v = Volume(np.zeros((3, 4, 5)), np.eye(4))
    assert v.contains_index(index) is inside


def test_volume_from_spacing_matches_make_affine():
    d = rotation(0.3, -0.2, 0.1)
    v = Volume.from_spacing(np.zeros((2, 2, 2)), (3.0, 2.0, 1.0), origin=(1, 2, 3), direction=d)
    np.testing.assert_allclose(v.affine, geometry.make_affine((3.0, 2.0, 1.0), (1, 2, 3), d))
    np.testing.assert_allclose(v.spacing, (3.0, 2.0, 1.0))
    np.testing.assert_allclose(v.origin, (1, 2, 3))
    np.testing.assert_allclose(v.direction, d, atol=1e-12)


def test_volume_is_immutable_and_compared_by_identity():
    """Frozen: geometry cannot be changed under a caller. eq=False: two volumes are never compared
    element-wise by ``==`` (ambiguous for arrays), and volumes stay hashable (dict keys, caches)."""
    import dataclasses

    v = Volume(np.zeros((2, 3, 4)), np.eye(4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.affine = np.eye(4) * 2  # type: ignore[misc]
    twin = Volume(v.array, v.affine)
    assert v == v and v != twin and len({v, twin}) == 2 and hash(v) == hash(v)
