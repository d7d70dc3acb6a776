"""Quality-review dock widgets: consensus, uncertainty (with a review list), QA report.

Thin UIs over :func:`medseg.analysis.consensus.consensus`, :func:`medseg.analysis.uncertainty.estimate_uncertainty`
/ :func:`medseg.analysis.uncertainty.review_list` and :func:`medseg.analysis.evaluate.evaluate`; all compute runs
in worker threads (layers are converted to medseg objects there too, and the output layers are
built there). A re-run updates the widget's previous output layers in place (same name, same
grid; see :func:`._layers.show_layer`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medseg_napari._layers import (
    METADATA_KEY,
    index_to_world,
    labels_layer_data,
    make_layer,
    probability_layer_data,
    is_layer_type,
    show_layer,
    slider_position,
    viewer_camera,
    volume_from_layer,
)
from medseg_napari._worker import LayerCombo, TaskRunner, guide

log = logging.getLogger(__name__)

__all__ = ["ConsensusWidget", "UncertaintyWidget", "QAWidget", "jump_to"]


def _state(layer: Any) -> tuple:
    from medseg_napari._writer import portable_state

    data, meta, _ = layer.as_layer_data_tuple()
    return data, portable_state(meta)


def _seg(state: tuple) -> Any:
    from medseg_napari._writer import segmentation_from_state

    return segmentation_from_state(*state)


def _fill_table(table: QTableWidget, rows: list[dict], columns: list[str]) -> None:
    table.setColumnCount(len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, col in enumerate(columns):
            v = row.get(col)
            text = "" if v is None else f"{v:.3f}" if isinstance(v, float) and math.isfinite(v) else str(v)
            table.setItem(r, c, QTableWidgetItem(text))


def jump_to(viewer: Any, affine: np.ndarray, index_kji: tuple[int, int, int]) -> np.ndarray:
    """Move napari's sliders and camera to voxel ``(k, j, i)`` of a grid; returns the world point."""
    world = index_to_world(affine, index_kji)
    ndim = viewer.dims.ndim
    point = list(viewer.dims.point)
    point[ndim - 3:] = world
    for axis in range(ndim - 3, ndim):
        viewer.dims.set_point(axis, float(point[axis]))
    displayed = list(viewer.dims.displayed)
    viewer_camera(viewer).center = tuple(float(point[a]) for a in displayed)
    return world


# -- consensus ----------------------------------------------------------------------------------
def _run_consensus(states: list, names: list[str], method: str, *, progress: Any = None, cancel: Any = None) -> Any:
    from medseg.analysis.consensus import consensus

    from medseg.core.segmentation import Segmentation

    segs = [_seg(s) for s in states]
    res = consensus(segs, method=method, names=names, progress=progress, cancel=cancel)
    # the widget shows the label map and the disagreement; the (C, Z, Y, X) vote fractions
    # would only cost memory and transfer time
    slim = Segmentation(res.segmentation.label_map, res.segmentation.labels)
    return type(res)(slim, res.disagreement, res.raters, res.method)


class ConsensusWidget(QWidget):
    """Pick two or more labels layers → consensus labels layer and disagreement heatmap."""

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result: Any = None
        self.consensus_layer: Any = None
        self.disagreement_layer: Any = None
        self.raters = QListWidget()
        self.method = QComboBox()
        self.method.addItems(["staple", "majority"])
        self.run_button = QPushButton("Run consensus")
        self.run_button.clicked.connect(self.run)
        self.table = QTableWidget(0, 0)
        self.runner = TaskRunner()
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("raters (check two or more labels layers)"))
        lay.addWidget(self.raters, 1)
        form = QFormLayout()
        form.addRow("method", self.method)
        lay.addLayout(form)
        lay.addWidget(self.run_button)
        lay.addWidget(self.runner)
        lay.addWidget(self.table, 1)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh)
        self._refresh()
        guide(self, "Check two or more labels layers (raters) and Run: STAPLE or majority voting gives a "
              "consensus labels layer and a map of where raters disagree; the table scores each rater.", {
            'raters': 'Labels layers to combine (check at least two); label names come from each layer',
            'method': 'STAPLE (weights raters by estimated performance) or majority vote',
            'run_button': 'Compute the consensus in the background',
            'table': 'Per-rater agreement with the consensus',
        })

    def _refresh(self, *_: Any) -> None:
        checked = set(self.checked_names())
        own = {id(self.consensus_layer)}
        self.raters.clear()
        for layer in self.viewer.layers:
            if is_layer_type(layer, "labels") and id(layer) not in own:
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if layer.name in checked else Qt.CheckState.Unchecked)
                self.raters.addItem(item)

    def checked_names(self) -> list[str]:
        return [self.raters.item(i).text() for i in range(self.raters.count())
                if self.raters.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked(self, names: list[str]) -> None:
        for i in range(self.raters.count()):
            item = self.raters.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    def run(self) -> bool:
        names = self.checked_names()
        if len(names) < 2:
            self.runner.status.setText("check at least two labels layers")
            return False
        layers = [self.viewer.layers[n] for n in names]
        states = [_state(l) for l in layers]
        return self.runner.start(_run_consensus, states, names, self.method.currentText(), process=True,
                                 prepare=_consensus_layers, label=f"{self.method.currentText()} consensus",
                                 on_done=self._show)

    def _show(self, prepared: tuple) -> Iterator[None]:
        """GUI steps (one layer each, see :class:`TaskRunner`): consensus, disagreement, table."""
        result, cons, cons_layer, dis, dis_layer, rows = prepared
        self.result = result
        self.consensus_layer = show_layer(self.viewer, self.consensus_layer, cons, cons_layer)
        yield
        self.disagreement_layer = show_layer(self.viewer, self.disagreement_layer, dis, dis_layer)
        yield
        _fill_table(self.table, rows, list(dict.fromkeys(k for row in rows for k in row)))
        self._refresh()


def _consensus_layers(result: Any) -> tuple:
    """Worker thread: layer data, layer objects and table rows of a consensus result."""
    cons = labels_layer_data(result.segmentation, name=f"consensus ({result.method})")
    dis = probability_layer_data(result.disagreement, name="disagreement", colormap="magma")
    rows = []
    for r in result.raters:
        row = {"rater": r["name"]}
        for key, val in r.items():
            if isinstance(val, dict):
                name = key
                for lab in result.segmentation.labels:
                    if str(lab.index) == key:
                        name = lab.name
                row[f"{name} sens"] = val.get("sensitivity")
                row[f"{name} spec"] = val.get("specificity")
        rows.append(row)
    return result, cons, make_layer(cons), dis, make_layer(dis), rows


# -- uncertainty ---------------------------------------------------------------------------------
def _run_uncertainty(volume: Any, method: str, samples: int, model_name: str, cache: dict, *,
                     progress: Any = None, cancel: Any = None) -> Any:
    from medseg.inference import uncertainty_predictors
    from medseg.models import load_model
    from medseg.analysis.uncertainty import estimate_uncertainty, review_list

    key = (model_name, "auto")
    if key not in cache:
        if progress:
            progress(0, None, f"loading model {model_name}")
        cache.clear()
        cache[key] = load_model(model_name or None)
    result = estimate_uncertainty(volume, uncertainty_predictors(method, cache[key]), method=method,
                                  samples=samples, progress=progress, cancel=cancel)
    return result, review_list(result)


class UncertaintyWidget(QWidget):
    """TTA or MC-dropout uncertainty: heatmap layer, structure scores and a review list.

    Clicking (or :meth:`jump`) an entry of the review list moves the viewer to that slice and
    centres the camera on the uncertain region.
    """

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._models: dict = {}
        self.result: Any = None
        self.items: list = []
        self.heatmap_layer: Any = None
        self.labels_layer: Any = None
        self.image_combo = LayerCombo(napari_viewer, "image")
        self.model_combo = QComboBox()
        from medseg_napari._autoseg import ModelCardPanel, trained_model_names

        self.model_combo.addItems(trained_model_names())
        self.card_panel = ModelCardPanel(self.model_combo, self.image_combo)
        self.method = QComboBox()
        self.method.addItems(["tta", "mc_dropout"])
        self.samples = QSpinBox()
        self.samples.setRange(2, 8)
        self.samples.setValue(4)
        self.map_combo = QComboBox()
        self.map_combo.addItems(["entropy", "mutual_information", "variance"])
        self.map_combo.currentTextChanged.connect(self._show_map)
        self.run_button = QPushButton("Estimate uncertainty")
        self.run_button.clicked.connect(self.run)
        self.review = QListWidget()
        self.review.currentRowChanged.connect(self.jump)
        self.runner = TaskRunner()
        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_combo)
        form.addRow(self.card_panel)
        form.addRow("method", self.method)
        form.addRow("samples", self.samples)
        form.addRow("heatmap", self.map_combo)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.run_button)
        lay.addWidget(self.runner)
        lay.addWidget(QLabel("review list (click to jump)"))
        lay.addWidget(self.review, 1)
        guide(self, "Pick an image and a model, then Estimate: the model runs several times (test-time "
              "augmentation or MC dropout) and the heatmap shows where it is unsure. Click an entry of "
              "the review list to go to that slice (numbers as on the slider).", {
            'image_combo': 'Image layer to assess',
            'model_combo': 'Models with weights only; read the card below',
            'method': 'tta: test-time augmentation; mc_dropout: dropout left on at inference',
            'samples': 'Number of model runs (more: smoother estimate, slower)',
            'map_combo': 'Uncertainty measure shown as the heatmap',
            'run_button': 'Run the model several times in the background',
            'review': 'Places to review, most uncertain first; click to jump there',
        })

    def run(self) -> bool:
        image = self.image_combo.layer()
        if image is None:
            self.runner.status.setText("open an image first")
            return False
        if not self.card_panel.ready():
            self.runner.status.setText("read the model's warnings and tick the acknowledgement first")
            return False
        volume = volume_from_layer(image)
        kind = self.map_combo.currentText()

        def prepare(result: Any) -> tuple:  # worker thread
            res = result[0]
            labels = labels_layer_data(res.segmentation, name=f"segmentation ({res.method})")
            heat = probability_layer_data(res.map(kind), name="uncertainty",
                                          contrast_limits=(0.0, 0.25 if kind == "variance" else 1.0))
            return result, labels, make_layer(labels), heat, make_layer(heat)

        return self.runner.start(_run_uncertainty, volume, self.method.currentText(), self.samples.value(),
                                 self.model_combo.currentText(), self._models, prepare=prepare,
                                 label=f"{self.method.currentText()} uncertainty", on_done=self._show)

    def _show(self, prepared: tuple) -> Iterator[None]:
        """GUI steps (one layer each, see :class:`TaskRunner`): labels, heatmap, review list."""
        result, labels, labels_layer, heat, heat_layer = prepared
        self.result, self.items = result
        self.labels_layer = show_layer(self.viewer, self.labels_layer, labels, labels_layer)
        yield
        self.heatmap_layer = show_layer(self.viewer, self.heatmap_layer, heat, heat_layer)
        yield
        self.review.blockSignals(True)
        self.review.clear()
        affine = self.result.segmentation.affine
        for it in self.items:
            # the number napari's axial slider shows there (the array's k runs the other way)
            world = index_to_world(affine, tuple(it.centre_kji))
            number = slider_position(self.viewer, (*[0.0] * (self.viewer.dims.ndim - 3), *world),
                                     self.viewer.dims.ndim - 3)
            self.review.addItem(f"{it.rank}. {it.name} — slice {number} ({it.uncertain_ml:.1f} mL uncertain)")
        self.review.blockSignals(False)
        self.runner.status.setText(f"{len(self.items)} places to review")

    def _show_map(self, kind: str) -> None:
        if self.result is None or self.heatmap_layer is None or self.heatmap_layer not in self.viewer.layers:
            return
        self.heatmap_layer.data = self.result.map(kind).array
        self.heatmap_layer.contrast_limits = (0.0, 0.25 if kind == "variance" else 1.0)

    def jump(self, row: int) -> Optional[np.ndarray]:
        """Go to review item ``row``: its slice, centred on its uncertain region."""
        if self.result is None or not 0 <= row < len(self.items):
            return None
        item = self.items[row]
        return jump_to(self.viewer, self.result.segmentation.affine, tuple(item.centre_kji))


# -- QA report -----------------------------------------------------------------------------------
_QA_COLUMNS = ["name", "dice", "iou", "hd95_mm", "surface_dice", "volume_reference_ml",
               "volume_prediction_ml", "volume_difference_pct"]


def _run_qa(ref_state: tuple, pred_state: tuple, tolerance: float, folder: Optional[str], *,
            progress: Any = None, cancel: Any = None) -> Any:
    from medseg.analysis.evaluate import evaluate, write_report

    ref, pred = _seg(ref_state), _seg(pred_state)
    report = evaluate(ref, pred, tolerance_mm=tolerance, progress=progress, cancel=cancel)
    errors = np.zeros(ref.array.shape, np.uint8)
    errors[(ref.array != pred.array) & (ref.array > 0)] = 1  # missed / wrong class in the reference
    errors[(ref.array != pred.array) & (ref.array == 0)] = 2  # false positive
    paths = write_report(report, folder, reference=ref, prediction=pred) if folder else {}
    return report, ref.label_map.with_array(errors), paths


class QAWidget(QWidget):
    """Score a labels layer against a gold-standard labels layer; optional report folder."""

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.report: Any = None
        self.paths: dict = {}
        self.error_layer: Any = None
        self.reference_combo = LayerCombo(napari_viewer, "labels")
        self.prediction_combo = LayerCombo(napari_viewer, "labels")
        self.tolerance = QDoubleSpinBox(suffix=" mm", minimum=0.0, maximum=50.0, value=2.0)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("report folder (optional): JSON, CSV, PNG")
        self.run_button = QPushButton("Evaluate")
        self.run_button.clicked.connect(self.run)
        self.summary = QLabel("")
        self.table = QTableWidget(0, len(_QA_COLUMNS))
        self.runner = TaskRunner()
        form = QFormLayout()
        form.addRow("gold standard", self.reference_combo)
        form.addRow("prediction", self.prediction_combo)
        form.addRow("surface tolerance", self.tolerance)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        form.addRow("report", row)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.run_button)
        lay.addWidget(self.runner)
        lay.addWidget(self.summary)
        lay.addWidget(self.table, 1)
        guide(self, "Pick a reference and a prediction labels layer and Evaluate: Dice, IoU, HD95 and surface "
              "Dice per label, and an error layer (1 missed, 2 false positive). Give a folder to save the report.", {
            'reference_combo': 'Reference (ground truth) labels layer',
            'prediction_combo': 'Labels layer to evaluate',
            'tolerance': 'Surface Dice tolerance (mm)',
            'folder_edit': 'Optional folder for the HTML/CSV report',
            'run_button': 'Compare the two layers in the background',
            'summary': 'Where the report was written',
            'table': 'Metrics per label',
        })

    def run(self) -> bool:
        ref, pred = self.reference_combo.layer(), self.prediction_combo.layer()
        if ref is None or pred is None or ref is pred:
            self.runner.status.setText("choose two different labels layers")
            return False
        folder = self.folder_edit.text().strip() or None
        return self.runner.start(_run_qa, _state(ref), _state(pred), self.tolerance.value(), folder,
                                 process=True, prepare=_qa_layers, label="evaluating", on_done=self._show)

    def _show(self, prepared: tuple) -> Iterator[None]:
        """GUI steps (see :class:`TaskRunner`): table and summary, then the error layer."""
        self.report, self.paths, errors, layer = prepared
        _fill_table(self.table, self.report.per_class, _QA_COLUMNS)
        lesions = "; ".join(f"{k}: {v.summary()}" for k, v in self.report.lesions.items())
        self.summary.setText(f"mean Dice {self.report.mean_dice:.3f}, mIoU {self.report.mean_iou:.3f}"
                             + (f"\nlesions {lesions}" if lesions else ""))
        yield
        self.error_layer = show_layer(self.viewer, self.error_layer, errors, layer)
        if self.paths:
            self.runner.status.setText(f"report written to {Path(next(iter(self.paths.values()))).parent}")


def _qa_layers(result: Any) -> tuple:
    """Worker thread: the error labels layer (missed / false positive) of a QA result."""
    from medseg.core.labels import Label, LabelTable
    from medseg.core.segmentation import Segmentation

    report, errors, paths = result
    table = LabelTable((Label(1, "missed", (255, 60, 60)), Label(2, "false positive", (60, 140, 255))))
    data, kw, kind = labels_layer_data(Segmentation(errors, table), name="QA errors", opacity=0.7)
    kw["metadata"][METADATA_KEY]["report"] = {k: str(v) for k, v in paths.items()}
    return report, paths, (data, kw, kind), make_layer((data, kw, kind))
