"""Clinician stories on the real CT, driven by real mouse and key events on napari's canvas.

Each story is what a radiologist did by hand when the plugin was tried (issue 19): open the
real abdominal CT, click organs in prompt mode, paint and erase with napari's brush, open
Correct boundaries, undo and redo with Ctrl-Z / Ctrl-Shift-Z. The widgets are docked in the
viewer; events go to the vispy canvas through Qt (see ``mouse.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from medseg_napari import _layers as L

from .mouse import canvas_of, click, drag, key

pytestmark = pytest.mark.gui

WAIT_MS = 120_000
#: voxels (k, j, i) of the real CT (ct_dicom_series, 20 x 512 x 512): liver and spleen, slice 10
LIVER = (10, 280, 160)
SPLEEN = (10, 330, 370)


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=WAIT_MS)
    assert widget.runner.last_error is None, widget.runner.status.text()


@pytest.fixture
def real_ct(real_data):
    from medseg.io import read_volume

    return read_volume(real_data / "ct_dicom_series")


@pytest.fixture
def session(make_napari_viewer, real_ct, qtbot):
    """A viewer with the real CT, the click widget docked, prompt mode on, on slice 10."""
    from medseg_napari._interactive import InteractiveWidget

    viewer = make_napari_viewer(show=True)
    img = L.add_layer_data(viewer, L.image_layer_data(real_ct, name="ct"))
    w = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(w, name="Click to segment")
    w.image_combo.set_layer(img)
    viewer.dims.set_point(0, L.index_to_world(real_ct.affine, LIVER)[0])
    qtbot.wait(50)
    canvas = canvas_of(viewer, w)
    w.prompt_button.setChecked(True)
    return viewer, w, canvas, real_ct


def _world(vol, kji):
    return L.index_to_world(vol.affine, kji)


def _click_accept(qtbot, viewer, w, canvas, vol, kji, name):
    click(viewer, canvas, _world(vol, kji))
    _wait(qtbot, w)
    qtbot.waitUntil(lambda: w.preview_layer is not None and w.preview_layer.data[kji] > 0, timeout=WAIT_MS)
    w.name_edit.setText(name)
    assert w.accept()
    _wait(qtbot, w)


def test_click_liver_and_spleen_accept_both_then_export_seg_with_codes(qtbot, session, tmp_path):
    viewer, w, canvas, vol = session
    # the first click, before any Start session, starts one (it used to do nothing)
    assert w.session is None
    _click_accept(qtbot, viewer, w, canvas, vol, LIVER, "liver")
    _click_accept(qtbot, viewer, w, canvas, vol, SPLEEN, "spleen")
    seg = L.segmentation_from_layer(w.objects_layer)
    assert seg.labels.names == ["liver", "spleen"]
    liver, spleen = seg.array == 1, seg.array == 2
    assert liver[LIVER] and spleen[SPLEEN] and not (liver & spleen).any()
    for mask in (liver, spleen):  # soft tissue, not the whole body
        assert 500 < mask.sum() < 0.2 * vol.array[10].size * vol.shape[0]
        assert 0 < float(vol.array[mask].mean()) < 250
    assert "liver (1)" in w.locked_label.text() and "spleen (2)" in w.locked_label.text()
    # export as DICOM SEG: the accepted labels by default, SNOMED codes, the full path shown
    import pydicom

    from medseg_napari._export import ExportWidget

    ex = ExportWidget(viewer)
    viewer.window.add_dock_widget(ex, name="Export")
    assert ex.labels_combo.layer() is w.objects_layer
    ex.format_combo.setCurrentText("DICOM SEG (.dcm)")
    ex.path_edit.setText(str(tmp_path / "organs.dcm"))
    assert ex.export()
    _wait(qtbot, ex)
    assert str(tmp_path / "organs.dcm") in ex.message.text() and ex.open_folder_button.isEnabled()
    ds = pydicom.dcmread(tmp_path / "organs.dcm")
    codes = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in ds.SegmentSequence}
    assert codes == {"liver": "10200004", "spleen": "78961009"}


def _brush(viewer, canvas, layer, vol, label, k, j, i0, i1, size=6):
    layer.mode = "paint" if label else "erase"
    layer.selected_label = max(label, 1)
    layer.brush_size = size
    drag(viewer, canvas, [_world(vol, (k, j, i)) for i in range(i0, i1 + 1, 3)])
    layer.mode = "pan_zoom"


def test_paint_and_erase_survive_correct_boundaries_and_the_next_accept(qtbot, session):
    from medseg_napari._editor import EditorWidget

    viewer, w, canvas, vol = session
    _click_accept(qtbot, viewer, w, canvas, vol, LIVER, "liver")
    objects = w.objects_layer
    liver_before = objects.data == 1
    # erase a stripe through the liver, paint a new label 5 next to the spine (napari's brush)
    w.prompt_button.setChecked(False)
    viewer.layers.selection.active = objects
    k, j = LIVER[0], LIVER[1]
    _brush(viewer, canvas, objects, vol, 0, k, j, LIVER[2] - 15, LIVER[2] + 15)
    erased = liver_before & (objects.data == 0)
    assert erased.sum() > 20, "the brush stroke erased nothing"
    _brush(viewer, canvas, objects, vol, 5, k, 300, 250, 262)
    painted = objects.data == 5
    assert painted.sum() > 20
    # open Correct boundaries on the objects layer; picking a label in napari must not break it
    ed = EditorWidget(viewer)
    viewer.window.add_dock_widget(ed, name="Correct boundaries")
    ed.labels_combo.set_layer(objects)
    objects.selected_label = 5
    assert ed.index.value() == 5  # napari 0.9's selected_label event has no value: read the layer
    objects.selected_label = 1
    assert ed.index.value() == 1
    # accept another object near the edits: the edits and both names survive
    viewer.layers.selection.active = w.image_layer
    w.prompt_button.setChecked(True)
    _click_accept(qtbot, viewer, w, canvas, vol, SPLEEN, "spleen")
    assert "failed" not in w.runner.status.text()
    data = objects.data
    assert not (data[erased] == 1).any(), "erased liver voxels came back"
    assert np.all(data[painted] == 5), "painted voxels were overwritten"
    names = L.labels_from_layer(objects).names
    assert "liver" in names and "spleen" in names
    spleen_index = int(data[SPLEEN])
    assert spleen_index not in (1, 5), "a painted label number was reused"
    assert "label_5 (5)" in w.locked_label.text()


def test_ctrl_z_and_ctrl_shift_z_walk_through_accept_paint_and_smoothing(qtbot, session):
    from medseg_napari._editor import EditorWidget

    viewer, w, canvas, vol = session
    states = [None]
    _click_accept(qtbot, viewer, w, canvas, vol, LIVER, "liver")
    objects = w.objects_layer
    states[0] = np.zeros_like(objects.data)
    states.append(objects.data.copy())                         # 1: liver accepted
    w.prompt_button.setChecked(False)
    viewer.layers.selection.active = objects
    _brush(viewer, canvas, objects, vol, 1, LIVER[0], 200, 240, 270, size=8)  # liver extended by hand
    states.append(objects.data.copy())                         # 2: paint stroke on the liver
    assert not np.array_equal(states[2], states[1])
    ed = EditorWidget(viewer)
    viewer.window.add_dock_widget(ed, name="Correct boundaries")
    ed.labels_combo.set_layer(objects)
    ed.index.setValue(1)
    ed.operation.setCurrentText("smooth")
    ed.sigma.setValue(3.0)
    assert ed.apply()
    _wait(qtbot, ed)
    states.append(objects.data.copy())                         # 3: smoothing
    assert not np.array_equal(states[3], states[2])
    viewer.layers.selection.active = objects
    for back in (2, 1, 0):
        key(canvas, "z", ctrl=True)
        assert np.array_equal(objects.data, states[back]), f"Ctrl-Z did not go back to state {back}"
    for fwd in (1, 2, 3):
        key(canvas, "z", ctrl=True, shift=True)
        assert np.array_equal(objects.data, states[fwd]), f"Ctrl-Shift-Z did not go forward to state {fwd}"
    # the click widget's Undo (no prompt pending) is the same history
    assert w.undo()
    assert np.array_equal(objects.data, states[2])


def test_open_nsclc_with_its_rtstruct_correct_gtv_with_clicks_and_brush_and_export_rtstruct(
        qtbot, make_napari_viewer, real_data, tmp_path):
    """Open the clinical CT folder (its RTSTRUCT comes with it), reopen GTV-1 in the click
    widget, correct it with a negative and a positive click, accept, extend it with one brush
    stroke, export RTSTRUCT: read back, GTV-1 differs from the original only where edited."""
    import pydicom

    from medseg.export import rasterize_rtstruct
    from medseg.interactive.session import REOPEN_RADIUS_MM

    from medseg_napari._export import ExportWidget
    from medseg_napari._interactive import InteractiveWidget

    folder = real_data / "nsclc_lung1_001" / "dicom"
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(folder), plugin="medseg")
    image = next(l for l in layers if L.is_layer_type(l, "image"))
    rt = next(l for l in layers if L.is_layer_type(l, "labels"))
    assert rt.data.shape == image.data.shape == (134, 512, 512)
    seg0 = L.segmentation_from_layer(rt)
    gtv = seg0.labels.names.index("GTV-1") + 1
    original = rt.data == gtv
    vol = L.volume_from_layer(image)
    k = 74  # a slice through the tumour (GTV-1 spans k 65-85, rows 226-315, columns 290-386)
    viewer.dims.set_point(0, L.index_to_world(vol.affine, (k, 0, 0))[0])
    # the click widget, keeping the RTSTRUCT's labels; GTV-1 reopened for correction
    w = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(w, name="Click to segment")
    canvas = canvas_of(viewer, w)
    w.image_combo.set_layer(image)
    w.start_labels_combo.setCurrentText(rt.name)
    assert w.start()
    _wait(qtbot, w)
    objects = w.objects_layer
    assert np.array_equal(objects.data, rt.data)
    # pick GTV-1 in the segment list, then "Correct with clicks"
    from qtpy.QtCore import Qt

    from medseg_napari._segments import SegmentListWidget

    segments = SegmentListWidget(viewer)
    segments.labels_combo.set_layer(objects)
    row = next(r for r in range(segments.table.rowCount()) if segments.table.item(r, 4).text() == "GTV-1")
    segments.table.setCurrentCell(row, 4)
    assert objects.selected_label == gtv
    qtbot.mouseClick(w.reopen_button, Qt.MouseButton.LeftButton)
    _wait(qtbot, w)
    assert not (objects.data == gtv).any() and np.array_equal(w.preview_layer.data > 0, original)
    assert w.name_edit.text() == "GTV-1"
    # a negative click (Shift) removes the tumour's lower edge, a positive one takes part back
    viewer.layers.selection.active = image
    w.prompt_button.setChecked(True)
    clicks = [(k, 307, 326), (k, 311, 326)]
    assert original[clicks[0]] and original[clicks[1]]
    for kji, negative in zip(clicks, (True, False)):
        click(viewer, canvas, _world(vol, kji), shift=negative)
        qtbot.waitUntil(lambda: not w.runner.busy, timeout=WAIT_MS)
        assert w.runner.last_error is None, w.runner.status.text()
    assert w.accept()
    _wait(qtbot, w)
    w.prompt_button.setChecked(False)
    after_clicks = objects.data == gtv
    by_clicks = after_clicks != original
    assert (original & ~after_clicks).sum() > 100, "the negative click removed nothing"
    table = L.labels_from_layer(objects)
    assert gtv in table and table[gtv].name == "GTV-1", "Accept re-numbered or renamed GTV-1"
    # the clicks changed GTV-1 only near them (not a redraw of the whole tumour)
    sp = np.asarray(vol.spacing)
    changed_at = np.argwhere(by_clicks)
    near = np.min([np.sqrt((((changed_at - c) * sp) ** 2).sum(axis=1)) for c in clicks], axis=0)
    assert near.max() <= REOPEN_RADIUS_MM + np.linalg.norm(sp)  # a click lands within a voxel of its aim
    # one brush stroke extends the tumour outline
    viewer.layers.selection.active = objects
    _brush(viewer, canvas, objects, vol, gtv, k, 240, 270, 300, size=10)
    edited = objects.data == gtv
    by_brush = edited != after_clicks
    assert by_brush.sum() > 50 and np.array_equal(np.flatnonzero(by_brush.any(axis=(1, 2))), [k])
    changed = by_clicks | by_brush
    # export RTSTRUCT: the accepted objects layer by default, referencing the source series
    ex = ExportWidget(viewer)
    viewer.window.add_dock_widget(ex, name="Export")
    ex.labels_combo.set_layer(objects)
    ex.format_combo.setCurrentText("DICOM RTSTRUCT (.dcm)")
    ex.path_edit.setText(str(tmp_path / "corrected.rtstruct.dcm"))
    assert ex.export()
    qtbot.waitUntil(lambda: not ex.runner.busy, timeout=600_000)
    assert ex.runner.last_error is None, ex.runner.status.text()
    out = tmp_path / "corrected.rtstruct.dcm"
    assert str(out) in ex.message.text()
    ref = lambda ds: ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
        .RTReferencedSeriesSequence[0].SeriesInstanceUID  # noqa: E731
    assert ref(pydicom.dcmread(out)) == ref(pydicom.dcmread(folder / "2.dcm"))
    back = rasterize_rtstruct(out, seg0)["GTV-1"]
    assert np.array_equal(back, edited), "GTV-1 read back differs from the corrected layer"
    assert np.array_equal(back[~changed], original[~changed]), "GTV-1 changed where it was not edited"
    assert (back[by_clicks] != original[by_clicks]).all() and (back[by_brush] != original[by_brush]).any()


def test_brush_limited_to_an_intensity_range_paints_only_in_range_voxels_in_one_undo_step(
        qtbot, make_napari_viewer, real_ct):
    """Segment list: 'paint only within' 0..250 HU; a real brush drag across the liver's edge
    into fat and air paints only the voxels in range, and one Ctrl-Z undoes the whole stroke."""
    from medseg.core.labels import LabelTable
    from medseg.core.segmentation import Segmentation

    from medseg_napari._segments import SegmentListWidget

    viewer = make_napari_viewer(show=True)
    vol = real_ct
    img = L.add_layer_data(viewer, L.image_layer_data(vol, name="ct"))
    empty = Segmentation(vol.with_array(np.zeros(vol.shape, np.uint8)), LabelTable(()))
    lab = L.add_layer_data(viewer, L.labels_layer_data(empty, name="drawn"))
    w = SegmentListWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segments")
    canvas = canvas_of(viewer, w)
    w.labels_combo.set_layer(lab)
    w.limit_image.set_layer(img)
    k, j = LIVER[0], LIVER[1]
    viewer.dims.set_point(0, _world(vol, (k, 0, 0))[0])
    viewer.layers.selection.active = lab
    sizes = [canvas.size()]

    def settled():  # the dock's layout (the list, the status) settles before each stroke
        qtbot.wait(150)
        sizes.append(canvas.size())
        return sizes[-1] == sizes[-2]

    qtbot.waitUntil(settled, timeout=10_000)
    # zoomed in on the stroke (about 2 canvas pixels per mm): pixel rounding of the mouse
    # position stays well under the brush, so the same drag paints the same voxels
    cam = L.viewer_camera(viewer)
    centre = _world(vol, (k, j, 100))
    cam.center = tuple(centre[a] for a in viewer.dims.displayed)
    cam.zoom = 2.0
    qtbot.waitUntil(settled, timeout=10_000)
    # the stroke without the limit: its footprint crosses the body's edge
    _brush(viewer, canvas, lab, vol, 1, k, j, 62, 138, size=8)
    footprint = lab.data == 1
    hu = vol.array
    in_range = (hu >= 0) & (hu <= 250)
    assert (footprint & in_range).sum() > 50 and (footprint & ~in_range).sum() > 50
    lab.undo()
    assert not lab.data.any()
    # the same stroke with the limit on
    w.limit_low.setValue(0.0)
    w.limit_high.setValue(250.0)
    w.limit_check.setChecked(True)
    qtbot.waitUntil(settled, timeout=10_000)
    _brush(viewer, canvas, lab, vol, 1, k, j, 62, 138, size=8)
    qtbot.waitUntil(lambda: "left out" in w.runner.status.text(), timeout=10_000)
    painted = lab.data == 1
    assert not (painted & ~in_range).any(), "the brush painted outside the intensity range"
    # the same drag paints the same voxels in range (up to the brush's pixel rounding when the
    # dock's layout moves the canvas between the two strokes)
    expected = footprint & in_range
    assert (painted & expected).sum() / (painted | expected).sum() > 0.95
    left_out = int(w.runner.status.text().split(": ")[-1].split()[0])
    assert left_out > 50 and abs(left_out - int((footprint & ~in_range).sum())) <= 0.05 * left_out
    # one undo step for the limited stroke; erasing is never limited
    lab.undo()
    assert not lab.data.any()
    lab.redo()
    assert np.array_equal(lab.data == 1, footprint & in_range)
    _brush(viewer, canvas, lab, vol, 0, k, j, 56, 144, size=16)
    qtbot.wait(50)
    assert not lab.data.any()
    # an edit not made with the brush (the click widget's accept, a correction) is not limited
    lab.mode = "pan_zoom"
    lab.data_setitem(np.nonzero(footprint), 2)
    qtbot.wait(50)
    assert np.array_equal(lab.data == 2, footprint)
