"""Guidance: a how-to and tooltips in every widget, anatomical axes, patient mm, plane switch,
slider-consistent numbers, distinct colours for new labels, an unlocked contrast range."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_napari import _layers as L

pytestmark = pytest.mark.gui

WIDGETS = [("medseg_napari._series", "SeriesWidget"), ("medseg_napari._autoseg", "AutoSegmentWidget"),
           ("medseg_napari._interactive", "InteractiveWidget"), ("medseg_napari._editor", "EditorWidget"),
           ("medseg_napari._export", "ExportWidget"), ("medseg_napari._review", "ConsensusWidget"),
           ("medseg_napari._review", "UncertaintyWidget"), ("medseg_napari._review", "QAWidget"),
           ("medseg_napari._view", "ViewWidget"), ("medseg_napari._segments", "SegmentListWidget")]


@pytest.fixture
def viewer_ct(make_napari_viewer, phantom):
    image, seg = phantom
    viewer = make_napari_viewer()
    img = L.add_layer_data(viewer, L.image_layer_data(image.with_array(image.array, Modality="CT"), name="ct"))
    lab = L.add_layer_data(viewer, L.labels_layer_data(seg, name="reference"))
    return viewer, img, lab, image, seg


@pytest.mark.parametrize("module,name", WIDGETS)
def test_every_control_has_a_tooltip_and_every_widget_a_howto(viewer_ct, module, name):
    import importlib

    from qtpy.QtWidgets import (QAbstractButton, QAbstractItemView, QAbstractSpinBox, QComboBox, QLabel,
                                QLineEdit, QSlider)

    viewer = viewer_ct[0]
    w = getattr(importlib.import_module(module), name)(viewer)
    howto = [l for l in w.findChildren(QLabel) if l.objectName() == "howto"]
    assert howto and len(howto[0].text()) > 60, f"{name} has no how-to"
    controls = [c for kind in (QAbstractButton, QComboBox, QAbstractSpinBox, QLineEdit, QSlider, QAbstractItemView)
                for c in w.findChildren(kind)]
    def in_combo(c):  # a part of a composite control (a combo's popup, a spin box's editor, a table's header)
        p = c.parentWidget()
        while p is not None:
            if isinstance(p, (QComboBox, QAbstractSpinBox, QAbstractItemView)):
                return True
            p = p.parentWidget()
        return False

    controls = [c for c in controls if not in_combo(c)]
    missing = [f"{type(c).__name__} {getattr(c, 'text', lambda: '')()!r}" for c in controls if not c.toolTip().strip()]
    assert not missing, f"{name}: controls without a tooltip: {missing}"


def test_axes_planes_patient_mm_and_contrast_range(viewer_ct):
    from medseg_napari._view import ViewWidget

    viewer, img, lab, image, seg = viewer_ct
    w = ViewWidget(viewer)
    assert tuple(viewer.dims.axis_labels) == L.AXIS_LABELS  # not -3 / -2 / -1
    assert w.set_view("coronal") == (1, 0, 2) and w.set_view("sagittal") == (2, 0, 1)
    assert w.set_view("axial") == (0, 1, 2)
    # the cursor in patient millimetres
    world = L.index_to_world(image.affine, (3, 10, 20))
    viewer.cursor.position = tuple(world)
    x, y, z = image.affine[:3, :3] @ np.array([3, 10, 20]) + image.affine[:3, 3]
    text = viewer.text_overlay.text
    assert text == L.patient_position_text(world)
    assert f"{abs(z):.1f}" in text and f"{abs(x):.1f}" in text and ("S" in text or "I" in text)
    # the contrast slider reaches the data's range, not only the soft-tissue window
    assert tuple(img.contrast_limits) == pytest.approx(L.window_limits("soft tissue"))
    lo, hi = img.contrast_limits_range
    assert lo <= float(image.array.min()) and hi >= float(image.array.max())
    # window buttons
    assert w.set_window("lung") == pytest.approx(L.window_limits("lung"))


def test_status_bar_shows_the_cursor_in_patient_mm_on_a_real_mouse_move(qtbot, make_napari_viewer, phantom):
    """napari's own status bar (public ``viewer.status``) shows L/P/S mm of the cursor beside
    napari's coordinates when the mouse moves over the canvas; off with 'cursor in mm' off."""
    from medseg_napari._view import ViewWidget

    from .mouse import canvas_of, hover

    image, _ = phantom
    viewer = make_napari_viewer(show=True)
    L.add_layer_data(viewer, L.image_layer_data(image.with_array(image.array, Modality="CT"), name="ct"))
    w = ViewWidget(viewer)
    viewer.window.add_dock_widget(w, name="View")
    canvas = canvas_of(viewer, w)
    qtbot.wait(100)

    def shown() -> str:
        s = viewer.status
        return str(s.get("coordinates", "")) if isinstance(s, dict) else str(s)

    k = image.shape[0] // 2
    viewer.dims.set_point(0, L.index_to_world(image.affine, (k, 0, 0))[0])
    for j, i in ((10, 20), (30, 12)):
        world = L.index_to_world(image.affine, (k, j, i))
        hover(viewer, canvas, world)
        mm = L.patient_position_text(viewer.cursor.position)
        qtbot.waitUntil(lambda: mm in shown(), timeout=10_000)
        x, y, z = image.affine[:3, :3] @ np.array([k, j, i]) + image.affine[:3, 3]
        assert abs(abs(x) - float(mm.split()[1])) < 1.0 and abs(abs(y) - float(mm.split()[3])) < 1.0
        assert abs(abs(z) - float(mm.split()[5])) < 1e-3
    w.cursor_mm.setChecked(False)
    hover(viewer, canvas, L.index_to_world(image.affine, (k, 20, 20)))
    qtbot.wait(200)
    assert " mm" not in shown()


def test_new_labels_get_distinct_colours(phantom):
    from medseg.core.labels import LabelTable, default_color

    cmap = L.label_colormap(LabelTable.from_names(["liver"]))
    colours = {tuple(np.round(cmap.map(v), 3)) for v in range(1, 8)}
    assert len(colours) == 7, "painted values 2..7 must not all be the same grey"
    assert tuple(np.round(cmap.map(5)[:3] * 255)) == pytest.approx(default_color(5), abs=1)


def test_prompts_layer_keeps_the_slider_steps(qtbot, viewer_ct):
    from medseg_napari._interactive import InteractiveWidget

    viewer, img, lab, image, seg = viewer_ct
    steps = tuple(viewer.dims.nsteps)
    w = InteractiveWidget(viewer)
    w.image_combo.set_layer(img)
    assert w.start()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=60_000)
    assert w.points_layer in viewer.layers
    assert tuple(viewer.dims.nsteps) == steps, "adding the prompts layer changed the slider steps"
    # slider numbers: the review list's numbers are napari's slider positions
    for k in (0, 5, image.shape[0] - 1):
        world = L.index_to_world(image.affine, (k, 0, 0))
        viewer.dims.set_point(0, world[0])
        assert L.slider_position(viewer, world, 0) == viewer.dims.current_step[0]


def test_segment_list_rename_hide_lock_select_and_brush_mm(qtbot, viewer_ct):
    from qtpy.QtCore import Qt

    from medseg_napari._editor import EditorWidget
    from medseg_napari._segments import SegmentListWidget, locked_of

    viewer, img, lab, image, seg = viewer_ct
    w = SegmentListWidget(viewer)
    w.labels_combo.set_layer(lab)
    assert w.table.rowCount() == len(seg.labels)
    names = [w.table.item(r, 4).text() for r in range(w.table.rowCount())]
    assert names == seg.labels.names
    # rename through the table cell (as a double-click edit does)
    w.table.item(0, 4).setText("liver (right lobe)")
    assert L.labels_from_layer(lab).names[0] == "liver (right lobe)"
    assert not w.rename(2, "liver (right lobe)")  # names stay unique
    # hide: the segment is drawn transparent, its voxels kept
    w.table.item(1, 1).setCheckState(Qt.CheckState.Unchecked)
    index = int(w.table.item(1, 3).text())
    assert lab.colormap.map(index)[3] == 0 and (lab.data == index).any()
    # lock: Correct boundaries leaves it alone
    w.table.item(0, 2).setCheckState(Qt.CheckState.Checked)
    first = int(w.table.item(0, 3).text())
    assert first in locked_of(lab)
    ed = EditorWidget(viewer)
    ed.labels_combo.set_layer(lab)
    assert first in ed.locked_labels()
    # selecting a row selects the label for napari's brush; the brush size is in mm
    w.table.setCurrentCell(2, 4)
    assert lab.selected_label == int(w.table.item(2, 3).text())
    w.brush_mm.setValue(12.0)
    assert lab.brush_size == 12


def test_segment_list_colour_button_recolours_the_layer_and_the_exported_table(qtbot, viewer_ct, tmp_path):
    """Clicking a segment's colour button opens Qt's colour dialog; the colour chosen goes to
    the layer's colormap and to the label table an export writes (read back from the sidecar)."""
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QColor

    from medseg.io import read_segmentation

    from medseg_napari._segments import SegmentListWidget
    from medseg_napari._writer import write_labels

    viewer, img, lab, image, seg = viewer_ct
    w = SegmentListWidget(viewer)
    w.labels_combo.set_layer(lab)
    row = 1
    index = int(w.table.item(row, 3).text())
    assert L.labels_from_layer(lab)[index].color != (12, 200, 34)
    qtbot.mouseClick(w.table.cellWidget(row, 0), Qt.MouseButton.LeftButton)
    dialog = w.color_dialog
    assert dialog is not None and dialog.isVisible()
    dialog.setCurrentColor(QColor(12, 200, 34))
    dialog.accept()
    assert L.labels_from_layer(lab)[index].color == (12, 200, 34)
    assert np.allclose(lab.colormap.map(index)[:3], np.array([12, 200, 34]) / 255.0, atol=1 / 255)
    others = [l for l in seg.labels if l.index != index]
    assert all(L.labels_from_layer(lab)[l.index].color == l.color for l in others)
    assert w.table.item(row, 0).background().color().getRgb()[:3] == (12, 200, 34)
    out = tmp_path / "recoloured.nii.gz"
    data, meta, _ = lab.as_layer_data_tuple()
    write_labels(str(out), data, meta)
    assert read_segmentation(out).labels[index].color == (12, 200, 34)


def test_3d_surfaces_of_accepted_segments(qtbot, viewer_ct):
    from medseg_napari._view import ViewWidget

    viewer, img, lab, image, seg = viewer_ct
    w = ViewWidget(viewer)
    w.labels_combo.set_layer(lab)
    assert w.show_surfaces()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=120_000)
    assert w.runner.last_error is None, w.runner.status.text()
    present = [l for l in seg.labels if (seg.array == l.index).sum() >= 8]
    assert len(w.surfaces) == len(present) and viewer.dims.ndisplay == 3
    liver = next(s for s in w.surfaces if s.name == "liver surface")
    verts = liver.data[0]
    k, j, i = np.argwhere(seg.array == 1).T
    # vertices lie on the liver's voxel box (index space, the label map's transform on the layer)
    assert verts[:, 0].min() >= k.min() - 1 and verts[:, 0].max() <= k.max() + 1
    assert np.allclose(liver.scale, img.scale) and np.allclose(liver.translate, img.translate)
