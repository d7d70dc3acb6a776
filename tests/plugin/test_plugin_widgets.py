"""Dock widgets driven through their actions in a real napari viewer (worker threads included)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from medseg.analysis.metrics import dice
from medseg.io import read_segmentation

from medseg_napari import _layers as L

pytestmark = pytest.mark.gui

WAIT_MS = 120_000


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=WAIT_MS)


def _started(qtbot, viewer, img, *, engine=None, start_labels=None):
    """The interactive widget on ``img`` with its session started (``engine`` and the locked
    ``start_labels`` chosen in their combos when given)."""
    from medseg_napari._interactive import InteractiveWidget

    w = InteractiveWidget(viewer)
    w.image_combo.set_layer(img)
    if engine is not None:
        w.engine_combo.setCurrentText(engine)
    if start_labels is not None:
        w.start_labels_combo.setCurrentText(start_labels)
    w.start()
    _wait(qtbot, w)
    return w


@pytest.fixture
def viewer_with_phantom(make_napari_viewer, phantom):
    image, seg = phantom
    viewer = make_napari_viewer()
    img = L.add_layer_data(viewer, L.image_layer_data(image.with_array(image.array, Modality="CT"), name="ct"))
    lab = L.add_layer_data(viewer, L.labels_layer_data(seg, name="reference"))
    return viewer, img, lab, image, seg


# -- auto-segment ------------------------------------------------------------------------------
def test_autoseg_widget_runs_a_model_and_adds_layers(qtbot, viewer_with_phantom):
    from medseg.models import load_model

    from medseg_napari._autoseg import AutoSegmentWidget

    viewer, img, _, image, _ = viewer_with_phantom
    w = AutoSegmentWidget(viewer)
    assert w.model_combo.count() >= 1
    w.image_combo.set_layer(img)
    w.device_combo.setCurrentText("cpu")
    w.probabilities.setChecked(True)
    name = w.model_combo.currentText()
    try:  # the bundled trained model when present, otherwise the same network untrained
        load_model(name, device="cpu")
    except Exception:
        w._models[(name, "cpu")] = load_model(name, device="cpu", allow_untrained=True)
    # the bundled model is for demonstration: its card is shown and running needs an acknowledgement
    assert "DEMONSTRATION" in w.card_panel.text.text() and "synthetic" in w.card_panel.text.text()
    assert w.card_panel.warnings and not w.run()
    assert "acknowledg" in w.runner.status.text()
    w.card_panel.acknowledge.setChecked(True)
    assert w.run()
    assert not w.run()  # busy: a second run is refused, not queued
    _wait(qtbot, w)
    assert w.runner.last_error is None, w.runner.last_error
    out = w.result_layer
    assert out is not None and out in viewer.layers and L.is_layer_type(out, "labels")
    assert out.data.shape == image.shape
    assert np.allclose(L.volume_from_layer(out).affine, image.affine)
    assert "liver" in L.labels_from_layer(out).names
    assert w.heatmap_layer is not None and w.heatmap_layer.data.shape == image.shape
    assert 0.0 <= float(w.heatmap_layer.data.min()) and float(w.heatmap_layer.data.max()) <= 1.0 + 1e-6
    w.opacity.setValue(80)
    assert out.opacity == pytest.approx(0.8)


def test_autoseg_cancel_and_errors_reach_the_status(qtbot, viewer_with_phantom):
    from medseg_napari._autoseg import AutoSegmentWidget

    viewer, img, *_ = viewer_with_phantom
    w = AutoSegmentWidget(viewer)
    w.model_combo.addItem("no_such_model")
    w.model_combo.setCurrentText("no_such_model")
    assert not w.run() and w.card_panel.warnings  # no card: acknowledged before it runs
    w.card_panel.acknowledge.setChecked(True)
    assert w.run()
    _wait(qtbot, w)
    assert w.runner.last_error is not None
    assert "no_such_model" in w.runner.status.text()
    assert w.result_layer is None


def test_task_runner_cancel(qtbot, make_napari_viewer):
    import time

    from medseg.core.errors import CancelledError
    from medseg.core.progress import StepProgress

    from medseg_napari._worker import TaskRunner

    def slow(*, progress=None, cancel=None):
        steps = StepProgress(1000, "slow", progress=progress, cancel=cancel)
        for _ in range(1000):
            time.sleep(0.01)
            steps.step()

    r = TaskRunner()
    qtbot.addWidget(r)
    assert r.start(slow, label="slow")
    qtbot.waitUntil(lambda: r.bar.maximum() == 1000, timeout=5000)  # progress reached the GUI
    r.cancel()
    qtbot.waitUntil(lambda: not r.busy, timeout=10000)
    assert isinstance(r.last_error, CancelledError)
    assert "cancelled" in r.status.text()



def _stuck_in_helper(*, progress=None, cancel=None):
    """Helper-process work that reports progress once, then never looks at ``cancel``."""
    import time

    progress(1, 10, "started")
    time.sleep(600)


def _helper_pid(*, progress=None, cancel=None):
    import os

    return os.getpid()


def test_task_runner_cancel_stops_helper_process_work(qtbot, make_napari_viewer):
    """Cancel stops work in the helper process even when it ignores the cancel flag (the helper is
    killed), and the next helper task runs in a fresh helper."""
    from medseg.core.errors import CancelledError

    from medseg_napari._worker import TaskRunner

    r = TaskRunner()
    qtbot.addWidget(r)
    got = []
    assert r.start(_helper_pid, process=True, label="pid", on_done=got.append)
    qtbot.waitUntil(lambda: not r.busy, timeout=WAIT_MS)
    assert r.start(_stuck_in_helper, process=True, label="stuck")
    qtbot.waitUntil(lambda: r.bar.maximum() == 10, timeout=WAIT_MS)  # running in the helper
    r.cancel()
    qtbot.waitUntil(lambda: not r.busy, timeout=30_000)  # not the 600 s of the task
    assert isinstance(r.last_error, CancelledError)
    assert "cancelled" in r.status.text()
    assert r.start(_helper_pid, process=True, label="pid", on_done=got.append)
    qtbot.waitUntil(lambda: not r.busy, timeout=WAIT_MS)
    assert r.last_error is None and len(got) == 2 and got[0] != got[1] and got[1] != __import__("os").getpid()

# -- click to segment ---------------------------------------------------------------------------
def _liver_voxel(seg):
    idx = np.argwhere(seg.array == 1)
    return tuple(int(v) for v in idx[len(idx) // 2])


def test_interactive_widget_click_accept_undo(qtbot, viewer_with_phantom):
    from medseg_napari._interactive import InteractiveWidget

    viewer, img, lab, image, seg = viewer_with_phantom
    w = InteractiveWidget(viewer)
    w.image_combo.set_layer(img)
    assert w.start()
    _wait(qtbot, w)
    assert w.session is not None and w.objects_layer in viewer.layers and w.preview_layer in viewer.layers
    target = _liver_voxel(seg)
    world = L.index_to_world(image.affine, target)
    # a click through the mouse handler (prompt mode on)
    w.toggle_prompt_mode()
    assert w._on_mouse in viewer.mouse_drag_callbacks and not L.viewer_camera(viewer).mouse_pan
    gen = w._on_mouse(viewer, SimpleNamespace(position=tuple(world), modifiers=set(), type="mouse_press"))
    assert gen is None or next(gen, None) is None
    _wait(qtbot, w)
    assert w.runner.last_error is None, w.runner.last_error
    assert w.session.prompts[0].index == target  # the prompt landed on the clicked voxel
    mask = w.preview_layer.data.astype(bool)
    assert mask[target]
    liver = seg.array == 1
    precision = (mask & liver).sum() / mask.sum()
    assert precision > 0.8, precision
    n_points = len(w.points_layer.data)
    assert n_points == 1
    # a negative shift-click outside the liver, then undo it
    out_voxel = tuple(int(v) for v in np.argwhere(seg.array == 2)[0])
    gen = w._on_mouse(viewer, SimpleNamespace(position=tuple(L.index_to_world(image.affine, out_voxel)),
                                              modifiers={"Shift"}, type="mouse_press"))
    next(gen, None)  # napari runs a drag callback up to its first yield on press
    _wait(qtbot, w)
    assert w.session.prompts[-1].positive is False
    assert w.undo()
    _wait(qtbot, w)
    assert len(w.session.prompts) == 1
    # accept under a name: written into the objects label map, locked
    w.name_edit.setText("liver")
    assert w.accept()
    _wait(qtbot, w)
    objects = L.segmentation_from_layer(w.objects_layer)
    assert objects.labels.names == ["liver"]
    assert np.array_equal(objects.array == 1, mask)
    assert "liver (1)" in w.locked_label.text()
    assert not w.preview_layer.data.any()
    w.toggle_prompt_mode()
    assert w._on_mouse not in viewer.mouse_drag_callbacks and L.viewer_camera(viewer).mouse_pan


def test_interactive_widget_box_and_scribble_drag(qtbot, viewer_with_phantom):
    from medseg_napari._interactive import InteractiveWidget

    viewer, img, lab, image, seg = viewer_with_phantom
    w = InteractiveWidget(viewer)
    w.image_combo.set_layer(img)
    w.start()
    _wait(qtbot, w)
    spleen = np.argwhere(seg.array == 2)
    lo, hi = spleen.min(0), spleen.max(0)
    k = int((lo[0] + hi[0]) // 2)
    a, b = (k, int(lo[1]), int(lo[2])), (k, int(hi[1]), int(hi[2]))
    w.set_mode("box")
    ev = SimpleNamespace(position=tuple(L.index_to_world(image.affine, a)), modifiers=set(), type="mouse_press")
    gen = w._on_mouse(viewer, ev)
    next(gen)
    ev.type, ev.position = "mouse_move", tuple(L.index_to_world(image.affine, b))
    next(gen)
    ev.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)
    _wait(qtbot, w)
    assert w.runner.last_error is None, w.runner.last_error
    box = w.session.prompts[-1]
    assert (tuple(box.corner_a), tuple(box.corner_b)) == (a, b)
    # then a positive click inside: the object stays within the box (in-plane) on the spleen
    w.add_world_point(L.index_to_world(image.affine, tuple(int(v) for v in spleen[len(spleen) // 2])))
    _wait(qtbot, w)
    mask = w.preview_layer.data.astype(bool)
    assert mask.any() and (mask & (seg.array == 2)).sum() / mask.sum() > 0.5
    inside = np.zeros_like(mask)
    inside[:, a[1]:b[1] + 1, a[2]:b[2] + 1] = True
    assert not (mask & ~inside).any()
    assert w.reset()
    _wait(qtbot, w)
    assert not w.preview_layer.data.any()
    # scribble through three voxels of the liver
    w.set_mode("scribble")
    pts = [tuple(int(v) for v in p) for p in np.argwhere(seg.array == 1)[[100, 200, 300]]]
    w.add_world_scribble([L.index_to_world(image.affine, p) for p in pts])
    _wait(qtbot, w)
    assert w.runner.last_error is None, w.runner.last_error
    assert w.preview_layer.data.any()


def test_classical_box_on_one_slice_gives_a_3d_object(qtbot, viewer_with_phantom):
    """The training-free engine given a box drawn on the current slice: a 3D object beyond that
    slice, within the box in-plane (it once took the box as a hard 3D limit: near-empty)."""
    viewer, img, lab, image, seg = viewer_with_phantom
    w = _started(qtbot, viewer, img, engine="classical")
    assert w.session.engine.name == "classical"
    spleen = seg.array == 2
    k = int(np.argmax(spleen.sum(axis=(1, 2))))
    j, i = np.nonzero(spleen[k])
    a, b = (k, int(j.min()) - 1, int(i.min()) - 1), (k, int(j.max()) + 1, int(i.max()) + 1)
    w.set_mode("box")
    w.add_world_box(L.index_to_world(image.affine, a), L.index_to_world(image.affine, b))
    _wait(qtbot, w)
    assert w.runner.last_error is None, w.runner.last_error
    mask = w.preview_layer.data.astype(bool)
    slices = np.nonzero(mask.any(axis=(1, 2)))[0]
    assert len(slices) > 3 and slices.min() < k < slices.max()  # beyond the box's slice, both ways
    assert dice(mask, spleen) > 0.6
    inside = np.zeros_like(mask)
    inside[:, a[1]:b[1] + 1, a[2]:b[2] + 1] = True
    assert not (mask & ~inside).any()


def test_interactive_keeps_existing_labels_locked(qtbot, viewer_with_phantom):
    viewer, img, lab, image, seg = viewer_with_phantom
    w = _started(qtbot, viewer, img, start_labels="reference")
    assert "liver (1)" in w.locked_label.text()
    w.add_world_point(L.index_to_world(image.affine, _liver_voxel(seg)))
    _wait(qtbot, w)
    assert not (w.preview_layer.data.astype(bool) & (seg.array > 0)).any()  # locked labels never overwritten


# -- correct boundaries ---------------------------------------------------------------------------
def test_editor_operations_with_undo(qtbot, viewer_with_phantom):
    from medseg_napari._editor import OPERATION_NAMES, EditorWidget

    viewer, img, lab, image, seg = viewer_with_phantom
    w = EditorWidget(viewer)
    w.labels_combo.set_layer(lab)
    original = np.array(lab.data, copy=True)
    w.index.setValue(2)
    w.operation.setCurrentText("grow")
    w.margin.setValue(6.0)
    assert w.apply()
    _wait(qtbot, w)
    grown = (lab.data == 2).sum()
    assert grown > (original == 2).sum()
    # with 6 mm z spacing, 6 mm reaches one slice in z; 5.4 mm in-plane reaches one voxel
    from medseg.core import editing

    expected = editing.apply_mask(original, 2, editing.grow(original == 2, 6.0, spacing=image.spacing))
    assert np.array_equal(lab.data, expected)
    assert w.undo()  # napari's undo history of the layer (Ctrl-Z)
    assert np.array_equal(lab.data, original)
    assert w.redo()  # and redo (Ctrl-Shift-Z)
    assert np.array_equal(lab.data, expected)
    w.undo()
    w.undo()  # nothing left to undo: the layer stays as it was
    assert np.array_equal(lab.data, original)
    # every operation runs and can be undone; locked labels are never changed
    w.locked.setText("1, 3")
    w.other.setValue(5)
    for op in OPERATION_NAMES:
        w.operation.setCurrentText(op)
        assert w.apply(), op
        _wait(qtbot, w)
        assert w.runner.last_error is None, (op, w.runner.last_error)
        assert np.array_equal(lab.data == 1, original == 1) and np.array_equal(lab.data == 3, original == 3), op
    for _ in OPERATION_NAMES:
        w.undo()
    assert np.array_equal(lab.data, original)
    w.locked.setText("one")
    assert not w.apply() and "integers" in w.runner.status.text()


def test_editor_interpolate_between_slices(qtbot, make_napari_viewer, phantom):
    from medseg_napari._editor import EditorWidget

    image, seg = phantom
    sparse = np.zeros(seg.array.shape, np.uint8)
    liver = seg.array == 1
    ks = np.flatnonzero(liver.any(axis=(1, 2)))
    keep = ks[:: 3]
    sparse[keep] = np.where(liver[keep], 1, 0)
    viewer = make_napari_viewer()
    from medseg.core.segmentation import Segmentation

    lab = L.add_layer_data(viewer, L.labels_layer_data(Segmentation(seg.label_map.with_array(sparse), seg.labels)))
    w = EditorWidget(viewer)
    w.labels_combo.set_layer(lab)
    w.index.setValue(1)
    w.operation.setCurrentText("interpolate slices")
    w.apply()
    _wait(qtbot, w)
    filled = lab.data == 1
    between = slice(int(keep[0]), int(keep[-1]) + 1)
    dice = 2 * (filled[between] & liver[between]).sum() / (filled[between].sum() + liver[between].sum())
    assert dice > 0.85, dice


# -- export ---------------------------------------------------------------------------------------
def test_export_widget_nifti_nrrd_and_statistics(qtbot, viewer_with_phantom, tmp_path):
    from medseg_napari._export import ExportWidget

    viewer, img, lab, image, seg = viewer_with_phantom
    w = ExportWidget(viewer)
    w.labels_combo.set_layer(lab)
    w.image_combo.set_layer(img)
    for fmt, suffix in (("NIfTI (.nii.gz)", ".nii.gz"), ("NRRD (.nrrd)", ".nrrd")):
        w.format_combo.setCurrentText(fmt)
        w.path_edit.setText(str(tmp_path / "out.nii.gz"))
        w._fix_suffix()
        assert w.path_edit.text().endswith(suffix)
        assert w.export()
        _wait(qtbot, w)
        assert w.runner.last_error is None, w.runner.last_error
        back = read_segmentation(w.path_edit.text())
        assert np.array_equal(back.array, seg.array) and np.allclose(back.affine, seg.affine, atol=1e-4)
        assert back.labels.names == seg.labels.names
    vols = seg.volumes_ml()
    assert w.table.rowCount() == len(seg.labels)
    for row in w.rows:
        assert row["volume_ml"] == pytest.approx(vols[row["index"]], rel=1e-3)
        if row["voxels"]:
            inside = image.array[seg.array == row["index"]]
            assert row["mean"] == pytest.approx(float(inside.mean()), abs=0.05)
    csv_path = w.save_csv(str(tmp_path / "stats.csv"))
    assert "liver" in csv_path.read_text()
    # DICOM SEG needs a DICOM source: a clear error in the status, nothing written
    w.format_combo.setCurrentText("DICOM SEG (.dcm)")
    w.export()
    _wait(qtbot, w)
    assert "DICOM source" in w.runner.status.text()


@pytest.mark.real_data
def test_dicom_series_widget_and_seg_export(qtbot, make_napari_viewer, real_data, tmp_path):
    pytest.importorskip("medseg.io.dicom")
    from medseg.core.segmentation import Segmentation

    from medseg_napari._autoseg import source_metadata
    from medseg_napari._export import ExportWidget
    from medseg_napari._series import SeriesWidget

    viewer = make_napari_viewer()
    w = SeriesWidget(viewer)
    w.folder_edit.setText(str(real_data / "ct_dicom_series"))
    assert w.scan()
    _wait(qtbot, w)
    assert w.runner.last_error is None, w.runner.last_error
    assert len(w.series) == 1 and w.default_uid == w.series[0]["uid"]
    assert w.open_selected()
    _wait(qtbot, w)
    (img,) = [l for l in viewer.layers if L.is_layer_type(l, "image")]
    assert img.data.shape == (20, 512, 512)
    assert w.apply_window() is not None and tuple(img.contrast_limits) == pytest.approx((-160, 240))
    # labels derived from this image export as DICOM SEG
    vol = L.volume_from_layer(img)
    arr = np.zeros(vol.shape, np.uint8)
    arr[8:12, 200:260, 200:260] = 1
    from medseg.core.labels import LabelTable

    data, kw, kind = L.labels_layer_data(Segmentation(vol.with_array(arr), LabelTable.from_names(["lesion"])))
    kw["metadata"][L.METADATA_KEY]["source"] = source_metadata(img)
    lab = L.add_layer_data(viewer, (data, kw, kind))
    pytest.importorskip("medseg.export.seg")
    e = ExportWidget(viewer)
    e.labels_combo.set_layer(lab)
    e.format_combo.setCurrentText("DICOM SEG (.dcm)")
    e.path_edit.setText(str(tmp_path / "seg.dcm"))
    assert e.export()
    _wait(qtbot, e)
    assert e.runner.last_error is None, e.runner.last_error
    import pydicom

    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    assert ds.Modality == "SEG"


def test_window_presets_and_shortcuts(make_napari_viewer, phantom):
    from napari.utils.key_bindings import KeyBinding

    from medseg_napari._series import SeriesWidget
    from medseg_napari._shortcuts import SHORTCUTS

    image, _ = phantom
    viewer = make_napari_viewer()
    img = L.add_layer_data(viewer, L.image_layer_data(image))
    SeriesWidget(viewer)
    viewer.layers.selection.active = img
    for key, limits in (("Alt-2", (-1350, 150)), ("Alt-3", (-500, 1300)), ("Alt-4", (0, 80)), ("Alt-1", (-160, 240))):
        viewer.keymap[KeyBinding.from_str(key)](viewer)
        assert tuple(img.contrast_limits) == pytest.approx(limits), key
    viewer.keymap[KeyBinding.from_str("Alt-0")](viewer)
    lo, hi = img.contrast_limits
    assert lo == pytest.approx(np.percentile(image.array, 0.5), abs=60) and hi > lo
    assert {"Alt-P", "Alt-A", "Alt-Z", "Alt-E", "Alt-U", "Alt-G"} <= set(SHORTCUTS)


def test_manifest_python_names_import_and_validate():
    import importlib

    import npe2

    pm = npe2.PluginManifest.from_distribution("medseg")
    names = [c.python_name for c in pm.contributions.commands if c.python_name]
    assert len(names) >= 10
    for python_name in names:
        module, attr = python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), python_name
    pm.validate_imports()


def test_models_without_weights_are_not_offered_and_other_modalities_warn(qtbot, make_napari_viewer, phantom):
    from medseg.models import list_models

    from medseg_napari._autoseg import AutoSegmentWidget
    from medseg_napari._review import UncertaintyWidget

    image, _ = phantom
    viewer = make_napari_viewer()
    mr = L.add_layer_data(viewer, L.image_layer_data(image.with_array(image.array, Modality="MR"), name="mr"))
    auto = AutoSegmentWidget(viewer)
    offered = {auto.model_combo.itemText(i) for i in range(auto.model_combo.count())}
    untrained = {m.name for m in list_models() if not m.trained}
    assert untrained and not (offered & untrained), offered & untrained
    u = UncertaintyWidget(viewer)
    u.image_combo.set_layer(mr)
    u.card_panel.refresh()
    assert any("MR" in w and "CT only" in w for w in u.card_panel.warnings), u.card_panel.warnings
    assert not u.run() and "acknowledg" in u.runner.status.text()


def _answer_modal(qtbot, yes: bool) -> None:
    """Answer the next modal question box (Yes/No) as a user would, from a timer."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    def answer():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, answer)
            return
        box.button(QMessageBox.StandardButton.Yes if yes else QMessageBox.StandardButton.No).click()

    QTimer.singleShot(20, answer)


def test_export_defaults_confirm_overwrite_full_path_and_sortable_table(qtbot, viewer_with_phantom, tmp_path):
    from medseg.core.segmentation import Segmentation

    from medseg_napari._export import ExportWidget
    from medseg_napari._interactive import PREVIEW_NAME

    viewer, img, lab, image, seg = viewer_with_phantom
    data, kw, kind = L.labels_layer_data(seg, name="ct objects")
    kw["metadata"][L.METADATA_KEY]["source"] = {"layer": "ct", "meta": {"source": str(tmp_path / "ct.nii.gz")}}
    (tmp_path / "ct.nii.gz").write_bytes(b"")  # the source scan's folder
    objects = L.add_layer_data(viewer, (data, kw, kind))
    empty = Segmentation(seg.label_map.with_array(np.zeros(seg.array.shape, np.uint8)), seg.labels)
    L.add_layer_data(viewer, L.labels_layer_data(empty, name=PREVIEW_NAME))  # the click widget's preview
    w = ExportWidget(viewer)
    w.image_combo.set_layer(img)
    assert w.labels_combo.layer() is objects, "the accepted labels, not the empty preview, are the default"
    assert w.path_edit.text() == str(tmp_path / "ct_objects.nii.gz"), "default path next to the source"
    assert w.export()
    _wait(qtbot, w)
    target = tmp_path / "ct_objects.nii.gz"
    assert target.is_file() and str(target) in w.message.text() and w.open_folder_button.isEnabled()
    stamp = target.stat().st_mtime_ns
    _answer_modal(qtbot, yes=False)
    assert not w.export(), "an existing file is replaced only after a Yes"
    assert target.stat().st_mtime_ns == stamp and "kept" in w.runner.status.text()
    _answer_modal(qtbot, yes=True)
    assert w.export()
    _wait(qtbot, w)
    assert target.stat().st_mtime_ns != stamp
    # statistics: a sortable table, numbers sorted as numbers
    col = 3  # volume (mL)
    w.table.sortItems(col, Qt_order(descending=True))
    vols = [float(w.table.item(r, col).text()) for r in range(w.table.rowCount())]
    assert vols == sorted(vols, reverse=True) and len(vols) == len(seg.labels)
    # the next export of another layer defaults to the last folder used when it has no source
    w.labels_combo.set_layer(lab)
    assert w.path_edit.text() == str(tmp_path / "reference.nii.gz")


def Qt_order(descending: bool):
    from qtpy.QtCore import Qt

    return Qt.SortOrder.DescendingOrder if descending else Qt.SortOrder.AscendingOrder


def test_editor_limits_a_label_to_an_intensity_range(qtbot, viewer_with_phantom):
    from medseg_napari._editor import EditorWidget

    viewer, img, lab, image, seg = viewer_with_phantom
    w = EditorWidget(viewer)
    w.labels_combo.set_layer(lab)
    w.image_combo.set_layer(img)
    before = np.array(lab.data, copy=True)
    liver = before == 1
    hu = image.array[liver]
    lo, hi = float(np.percentile(hu, 25)), float(np.percentile(hu, 75))
    w.index.setValue(1)
    w.operation.setCurrentText("intensity range")
    w.range_lo.setValue(lo)
    w.range_hi.setValue(hi)
    assert w.apply()
    _wait(qtbot, w)
    assert w.runner.last_error is None, w.runner.last_error
    kept = lab.data == 1
    inside = liver & (image.array >= lo) & (image.array <= hi)
    assert np.array_equal(kept, inside)
    assert np.array_equal(lab.data[~liver], before[~liver])  # other labels untouched
    w.undo()  # one step of napari's history
    assert np.array_equal(lab.data, before)
