"""Conversion point 3: Volume ⇄ napari layers, world clicks ⇄ voxel indices."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.core.errors import GeometryError, PromptError
from medseg.core.geometry import make_affine
from medseg.core.labels import LabelTable
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

from medseg_napari import _layers as L

pytestmark = pytest.mark.gui


def _rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


GRIDS = {
    # axial DICOM layout: i -> L, j -> P, k -> S
    "axial": make_affine((2.5, 0.8, 0.7), (-100.0, -80.0, 30.0)),
    # flipped: k -> I and i -> R
    "flipped": make_affine((3.0, 1.0, 1.2), (50.0, -20.0, 90.0), np.array([[0, 0, -1], [0, 1, 0], [-1, 0, 0]], float)),
    # oblique: rotated 20 degrees about z and 15 about x
    "oblique": make_affine((2.0, 1.1, 0.9), (10.0, 5.0, -7.0), _rotation(20, 15) @ np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)),
}


@pytest.fixture(params=sorted(GRIDS))
def grid(request):
    return request.param, GRIDS[request.param]


def test_world_frame_is_documented_radiological():
    # LPS (x, y, z) = (1, 2, 3) -> world (-z, y, x)
    assert np.allclose((L.WORLD_FROM_LPS @ [1, 2, 3, 1])[:3], [-3, 2, 1])


def test_transform_kwargs_axis_aligned_vs_oblique(grid):
    name, affine = grid
    kw = L.layer_transform_kwargs(affine)
    if name == "oblique":
        assert set(kw) == {"affine"}
    else:
        assert set(kw) == {"scale", "translate"}
        assert np.allclose(np.abs(kw["scale"]), L.Volume(np.zeros((2, 2, 2)), affine).spacing)


def test_volume_layer_roundtrip_and_clicks(make_napari_viewer, grid):
    name, affine = grid
    rng = np.random.default_rng(1)
    vol = Volume(rng.normal(size=(6, 9, 11)).astype(np.float32), affine, {"Modality": "MR", "source": "x.nii.gz"})
    viewer = make_napari_viewer()
    data, kwargs, kind = L.image_layer_data(vol)
    layer = viewer.add_image(data, **kwargs)
    # layer -> Volume: same voxels, same affine
    back = L.volume_from_layer(layer)
    assert np.array_equal(back.array, vol.array) and np.allclose(back.affine, affine)
    assert back.meta["Modality"] == "MR"
    # the napari transform alone (metadata dropped) gives the same affine too
    layer.metadata = {}
    assert np.allclose(L.volume_from_layer(layer).affine, affine, atol=1e-6)
    # a world click on a voxel centre (and near it) lands on that voxel
    for idx in [(0, 0, 0), (5, 8, 10), (3, 4, 7), (2, 7, 1)]:
        world = L.index_to_world(affine, idx)
        assert L.world_to_index(layer, world) == idx
        jitter = L.index_to_world(affine, np.asarray(idx) + [0.3, -0.3, 0.2])
        assert L.world_to_index(layer, jitter) == idx
        # the same world point is the LPS point of that voxel
        lps = (L.LPS_FROM_WORLD @ [*world, 1])[:3]
        assert np.allclose(lps, vol.index_to_world(np.array([idx]))[0])


def test_click_outside_raises_or_clips(make_napari_viewer):
    affine = GRIDS["axial"]
    vol = Volume(np.zeros((4, 5, 6), np.float32), affine)
    viewer = make_napari_viewer()
    data, kwargs, _ = L.image_layer_data(vol)
    layer = viewer.add_image(data, **kwargs)
    far = L.index_to_world(affine, (10, 2, 2))
    with pytest.raises(PromptError, match="outside layer"):
        L.world_to_index(layer, far)
    assert L.world_to_index(layer, far, clip=True) == (3, 2, 2)


def test_labels_layer_roundtrip(make_napari_viewer, grid):
    _, affine = grid
    arr = np.zeros((6, 9, 11), np.uint8)
    arr[1:3, 2:5, 3:7] = 1
    arr[4, 6, 8] = 3
    table = LabelTable.from_names({1: "liver", 3: "tumour"})
    seg = Segmentation(Volume(arr, affine), table)
    viewer = make_napari_viewer()
    data, kwargs, kind = L.labels_layer_data(seg)
    assert kind == "labels"
    layer = viewer.add_labels(data, **kwargs)
    back = L.segmentation_from_layer(layer)
    assert np.array_equal(back.array, arr) and np.allclose(back.affine, affine)
    assert back.labels.names == ["liver", "tumour"]
    # colours reach napari
    rgba = layer.colormap.map(np.array([1]))[0]
    assert np.allclose(rgba[:3] * 255, table[1].color, atol=1)
    # a value painted by the user without a table entry gets a generic name
    layer.data[0, 0, 0] = 7
    assert "label_7" in L.segmentation_from_layer(layer).labels.names


def test_labels_table_from_features_only(make_napari_viewer):
    viewer = make_napari_viewer()
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[1, 1, 1] = 2
    layer = viewer.add_labels(arr, features={"index": [0, 2], "name": ["bg", "spleen"]}, scale=(-2, 1, 1))
    table = L.labels_from_layer(layer)
    assert table.names == ["spleen"]
    vol = L.volume_from_layer(layer)
    assert np.allclose(vol.spacing, (2, 1, 1))


def test_volume_from_2d_layer_raises(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((4, 5)))
    with pytest.raises(GeometryError, match="medseg needs"):
        L.volume_from_layer(layer)


def test_contrast_presets():
    assert L.window_limits("lung") == (-1350.0, 150.0)
    ct = Volume(np.zeros((2, 2, 2)), GRIDS["axial"], {"Modality": "CT"})
    assert L.contrast_limits_for(ct) == L.window_limits("soft tissue")
    mr = Volume(np.arange(1000, dtype=float).reshape(10, 10, 10), GRIDS["axial"], {"Modality": "MR"})
    lo, hi = L.contrast_limits_for(mr)
    assert 0 < lo < 10 and 989 < hi < 999
    with pytest.raises(KeyError, match="unknown CT window"):
        L.window_limits("liver")


def test_rendered_views_follow_the_radiological_convention(qtbot, make_napari_viewer):
    """Axial: anterior up, patient left on the right; coronal: superior up, left on the right;
    sagittal: superior up, anterior on the left — checked on rendered pixels."""
    arr = np.full((20, 40, 40), 100, np.float32)  # body
    k, j, i = 16, 6, 33  # superior, anterior, patient-left voxel block
    arr[k - 2:k + 2, j - 3:j + 3, i - 3:i + 3] = 1000
    vol = Volume(arr, make_affine((2.0, 1.0, 1.0), (0.0, 0.0, 0.0)))  # axial: i->L, j->P, k->S
    viewer = make_napari_viewer(show=True)
    data, kw, _ = L.image_layer_data(vol)
    kw["contrast_limits"] = (0, 1000)
    layer = viewer.add_image(data, **kw)
    world = L.index_to_world(vol.affine, (k, j, i))

    def marker_position(order):
        viewer.dims.order = order
        for ax in range(3):
            viewer.dims.set_point(ax, float(world[ax]))
        viewer.reset_view()
        qtbot.wait(100)
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., 0].astype(float)
        body = np.argwhere(shot > 20)
        bright = np.argwhere(shot > 200)
        assert len(bright) and len(body)
        rel = bright.mean(0) - body.mean(0)  # (row, col) of the marker relative to the body centre
        return rel

    rows, cols = marker_position((0, 1, 2))  # axial
    assert rows < 0 and cols > 0, "axial: anterior must be up and patient left on the right"
    rows, cols = marker_position((1, 0, 2))  # coronal
    assert rows < 0 and cols > 0, "coronal: superior must be up and patient left on the right"
    rows, cols = marker_position((2, 0, 1))  # sagittal
    assert rows < 0 and cols < 0, "sagittal: superior must be up and anterior on the left"
    assert layer.visible
