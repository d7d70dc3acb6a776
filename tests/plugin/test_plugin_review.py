"""Consensus, uncertainty and QA widgets (issue 6) driven in a real napari viewer."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.core import editing
from medseg.core.segmentation import Segmentation

from medseg_napari import _layers as L

pytestmark = pytest.mark.gui

WAIT_MS = 180_000


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=WAIT_MS)
    assert widget.runner.last_error is None, widget.runner.last_error


def _rater(seg, margin_mm):
    arr = seg.array
    mask = editing.margin(arr == 1, margin_mm, spacing=seg.label_map.spacing)
    return Segmentation(seg.label_map.with_array(np.where(mask, 1, 0).astype(np.uint8)), seg.labels.subset([1]))


def test_consensus_widget(qtbot, make_napari_viewer, phantom):
    from medseg_napari._review import ConsensusWidget

    _, seg = phantom
    viewer = make_napari_viewer()
    for name, m in (("r1", -5.5), ("r2", 0.0), ("r3", 5.5)):
        L.add_layer_data(viewer, L.labels_layer_data(_rater(seg, m), name=name))
    w = ConsensusWidget(viewer)
    assert not w.run()  # nothing checked
    w.set_checked(["r1", "r2", "r3"])
    w.method.setCurrentText("majority")
    assert w.run()
    _wait(qtbot, w)
    cons = L.segmentation_from_layer(w.consensus_layer)
    assert np.array_equal(cons.array == 1, seg.array == 1)  # the middle rater wins the vote
    assert np.allclose(cons.affine, seg.affine)
    dis = w.disagreement_layer.data
    assert dis.shape == seg.array.shape and dis.max() > 0 and dis[seg.array == 0].min() == 0
    w.method.setCurrentText("staple")
    w.set_checked(["r1", "r2", "r3"])
    assert w.run()
    _wait(qtbot, w)
    assert w.table.rowCount() == 3 and "sens" in w.table.horizontalHeaderItem(1).text()


def test_qa_widget(qtbot, make_napari_viewer, phantom, tmp_path):
    from medseg_napari._review import QAWidget

    _, seg = phantom
    viewer = make_napari_viewer()
    ref = L.add_layer_data(viewer, L.labels_layer_data(seg, name="gold"))
    pred_arr = seg.array.copy()
    pred_arr[seg.array == 2] = 0  # spleen missed
    pred = L.add_layer_data(viewer, L.labels_layer_data(
        Segmentation(seg.label_map.with_array(pred_arr), seg.labels), name="pred"))
    w = QAWidget(viewer)
    w.reference_combo.set_layer(ref)
    w.prediction_combo.set_layer(pred)
    w.folder_edit.setText(str(tmp_path / "qa"))
    assert w.run()
    _wait(qtbot, w)
    rows = {r["name"]: r for r in w.report.per_class}
    assert rows["liver"]["dice"] == pytest.approx(1.0) and rows["spleen"]["dice"] == pytest.approx(0.0)
    assert w.table.rowCount() == len(rows)
    errors = w.error_layer.data
    assert np.array_equal(errors == 1, seg.array == 2) and not (errors == 2).any()
    assert (tmp_path / "qa").is_dir() and any((tmp_path / "qa").glob("*.json"))
    w.prediction_combo.set_layer(ref)
    assert not w.run()


def test_uncertainty_widget_review_list_jumps_to_slice(qtbot, make_napari_viewer, phantom):
    from medseg.models import load_model

    from medseg_napari._review import UncertaintyWidget

    image, seg = phantom
    viewer = make_napari_viewer()
    img = L.add_layer_data(viewer, L.image_layer_data(image))
    w = UncertaintyWidget(viewer)
    w.image_combo.set_layer(img)
    name = w.model_combo.currentText()
    try:
        load_model(name, device="cpu")
    except Exception:  # no trained weights yet: the same network, untrained, still gives samples
        w._models[(name, "auto")] = load_model(name, device="cpu", allow_untrained=True)
    w.method.setCurrentText("tta")
    w.samples.setValue(2)
    w.card_panel.acknowledge.setChecked(True)  # a demonstration model: acknowledged
    assert w.run()
    _wait(qtbot, w)
    assert w.heatmap_layer.data.shape == image.shape
    assert np.allclose(L.volume_from_layer(w.heatmap_layer).affine, image.affine)
    w.map_combo.setCurrentText("variance")
    assert np.array_equal(w.heatmap_layer.data, w.result.variance.array)
    if not w.items:
        pytest.skip("the model is certain everywhere: empty review list")
    assert w.review.count() == len(w.items)
    for row in range(min(3, len(w.items))):
        w.review.setCurrentRow(row)  # a click on the list
        item = w.items[row]
        k, j, i = (int(v) for v in np.round(img.world_to_data(viewer.dims.point)))
        assert k == item.slice_index
        # the slider counts world steps along (-z): step 0 is the most superior slice
        assert viewer.dims.current_step[0] == image.shape[0] - 1 - item.slice_index
        assert np.allclose(L.viewer_camera(viewer).center[-2:], L.index_to_world(image.affine, item.centre_kji)[1:])


def test_consensus_widget_names_labels_from_a_sidecar_and_from_a_folder_labels_json(
        qtbot, make_napari_viewer, real_data, tmp_path):
    """Two raters opened from files: the real MR's TotalSegmentator map (names in the folder's
    ``labels.json``) and an edited copy (names in its ``.labels.json`` sidecar). The consensus
    layer and the rater table use the organ names, not label_1, label_5."""
    from medseg.io import read_segmentation, write_segmentation

    from medseg_napari._review import ConsensusWidget

    src = real_data / "mr_abdomen" / "labels.nii.gz"
    assert not (real_data / "mr_abdomen" / "labels.labels.json").exists()
    seg = read_segmentation(src)
    assert seg.labels[1].name == "spleen" and seg.labels[5].name == "liver"  # from the folder's labels.json
    arr = seg.array.copy()
    arr[editing.margin(arr == 1, -3.0, spacing=seg.label_map.spacing) != (arr == 1)] = 0  # spleen shrunk 3 mm
    other = tmp_path / "rater_b_labels.nii.gz"
    write_segmentation(Segmentation(seg.label_map.with_array(arr), seg.labels), other)
    assert (tmp_path / "rater_b_labels.labels.json").is_file()
    viewer = make_napari_viewer()
    a = viewer.open(str(src), plugin="medseg")[0]
    b = viewer.open(str(other), plugin="medseg")[0]
    for layer in (a, b):
        names = L.labels_from_layer(layer).names
        assert "spleen" in names and "liver" in names and not any(n.startswith("label_") for n in names)
    w = ConsensusWidget(viewer)
    w.set_checked([a.name, b.name])
    w.method.setCurrentText("staple")  # per-label sensitivity and specificity per rater
    assert w.run()
    _wait(qtbot, w)
    cons = L.segmentation_from_layer(w.consensus_layer)
    assert cons.labels[1].name == "spleen" and cons.labels[5].name == "liver"
    headers = [w.table.horizontalHeaderItem(c).text() for c in range(w.table.columnCount())]
    assert "spleen sens" in headers and "liver spec" in headers
