"""Auto-segment dock widget: pick a model and a device, run, get a labels layer (and heatmap).

The output layers are built in the worker thread; re-running on the same image updates the
previous result (and heatmap) layer in place. Rename a result layer to keep it: the next run
then adds a new one.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from medseg_napari._layers import (
    METADATA_KEY,
    labels_layer_data,
    make_layer,
    probability_layer_data,
    show_layer,
    volume_from_layer,
)
from medseg_napari._shortcuts import install_shortcuts
from medseg_napari._worker import LayerCombo, TaskRunner, guide

log = logging.getLogger(__name__)

__all__ = ["AutoSegmentWidget", "ModelCardPanel", "source_metadata", "trained_model_names"]


def trained_model_names() -> list[str]:
    """Bundled segmentation models that have weights (a config alone cannot segment anything)."""
    from medseg.models import DEFAULT_MODEL, list_models

    try:
        names = [m.name for m in list_models() if "interactive" not in m.name and m.trained]
    except Exception as exc:  # noqa: BLE001 - a broken config must not hide the default model
        log.warning("cannot list models: %s", exc)
        names = [DEFAULT_MODEL]
    return sorted(set(names), key=lambda n: (n != DEFAULT_MODEL, n))


class ModelCardPanel(QWidget):
    """The chosen model's card, its warnings for the chosen image, and an acknowledgement box.

    A demonstration model, or an image outside the model's domain (another modality,
    intensities or field of view it never saw; :func:`medseg.models.card.domain_warnings`),
    needs the box ticked before the model runs (:meth:`ready`).
    """

    def __init__(self, model_combo: QComboBox, image_combo: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.model_combo, self.image_combo = model_combo, image_combo
        self.card: Any = None
        self.warnings: list[str] = []
        self._checked_for: Any = None  # (model name, image layer) the warnings were made for
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.TextFormat.PlainText)
        self.text.setToolTip("The model card: what the model was trained on and what it is for.")
        self.warning = QLabel()
        self.warning.setWordWrap(True)
        self.warning.setTextFormat(Qt.TextFormat.PlainText)
        self.warning.setStyleSheet("color: #ff9f40;")
        self.acknowledge = QCheckBox("I understand: this output is not a clinical segmentation")
        self.acknowledge.setToolTip("Needed before running a demonstration model or a model outside its "
                                    "domain (modality, intensities, field of view).")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.text)
        lay.addWidget(self.warning)
        lay.addWidget(self.acknowledge)
        model_combo.currentTextChanged.connect(self.refresh)
        image_combo.currentTextChanged.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Read the chosen model's card and check the chosen image against it."""
        from medseg.models.card import card_for, domain_warnings

        name = self.model_combo.currentText()
        self._checked_for = (name, self.image_combo.layer())
        self.acknowledge.setChecked(False)
        try:
            self.card = card_for(name or None)
        except Exception as exc:  # noqa: BLE001 - shown, never crash the widget
            self.card, self.warnings = None, [f"no model card: {exc}"]
        else:
            self.warnings = []
            layer = self.image_combo.layer()
            if layer is not None and getattr(layer.data, "ndim", 0) == 3:
                try:
                    self.warnings = domain_warnings(volume_from_layer(layer), self.card)
                except Exception as exc:  # noqa: BLE001
                    self.warnings = [f"domain not checked: {exc}"]
            elif self.card.demo:
                self.warnings = [f"{self.card.name} is a demonstration model: its output is not a "
                                 f"segmentation of a patient"]
        self.text.setText(self.card.summary() if self.card is not None else "")
        self.warning.setText("\n".join(f"⚠ {w}" for w in self.warnings))
        self.warning.setVisible(bool(self.warnings))
        self.acknowledge.setVisible(bool(self.warnings))

    def ready(self) -> bool:
        """Whether the model may run: no warning, or the warnings acknowledged.

        The warnings are made again (and the box cleared) when the model or the image changed
        since they were shown.
        """
        if self._checked_for != (self.model_combo.currentText(), self.image_combo.layer()):
            self.refresh()
        return not self.warnings or self.acknowledge.isChecked()


def source_metadata(image_layer: Any) -> dict:
    """What a derived labels layer keeps of its source image (for DICOM SEG export)."""
    md = image_layer.metadata.get(METADATA_KEY) or {}
    return {"layer": image_layer.name, "dicom_folder": md.get("dicom_folder"), "meta": md.get("meta") or {}}


def _run_segment(volume: Any, model_name: str, device: str, probabilities: bool, cache: dict, *,
                 progress: Any = None, cancel: Any = None) -> Any:
    """Worker body: load (once) and run the model."""
    from medseg.inference import segment
    from medseg.models import load_model

    key = (model_name, device)
    if key not in cache:
        if progress:
            progress(0, None, f"loading model {model_name}")
        cache.clear()
        cache[key] = load_model(model_name or None, device=device)
    seg = segment(volume, model=cache[key], probabilities=probabilities, progress=progress, cancel=cancel)
    heat = None
    if probabilities and seg.probabilities is not None:
        p = seg.probabilities.array
        heat = seg.label_map.with_array(np.clip(1.0 - p[0], 0.0, 1.0).astype(np.float32))  # foreground probability
    return seg, heat


class AutoSegmentWidget(QWidget):
    """Segment the chosen image with a bundled or trained model (in a worker thread)."""

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._models: dict = {}
        self.result_layer: Any = None
        self.heatmap_layer: Any = None
        self.image_combo = LayerCombo(napari_viewer, "image")
        self.model_combo = QComboBox()
        self.model_combo.addItems(self._model_names())
        self.model_combo.setToolTip("Models with weights only. Read the model card below before running.")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.probabilities = QCheckBox("probability heatmap")
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(50)
        self.opacity.valueChanged.connect(self._set_opacity)
        self.run_button = QPushButton("Run (Alt-G)")
        self.run_button.clicked.connect(self.run)
        self.runner = TaskRunner()
        self.card_panel = ModelCardPanel(self.model_combo, self.image_combo)
        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_combo)
        form.addRow(self.card_panel)
        form.addRow("device", self.device_combo)
        form.addRow("", self.probabilities)
        form.addRow("overlay opacity", self.opacity)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.run_button)
        lay.addWidget(self.runner)
        lay.addStretch(1)
        install_shortcuts(napari_viewer, autoseg=self)
        guide(self, "Pick the image and a model; read its card (what it was trained on). Run segments the whole "
              "image in the background; the result is a labels layer you can correct with the brush or "
              "Correct boundaries, then export.", {
            'image_combo': 'Image layer to segment',
            'device_combo': 'Where the model runs: auto (CUDA when available), CPU or CUDA',
            'probabilities': 'Also show the foreground probability as a heatmap',
            'opacity': 'Opacity of the result labels layer',
            'run_button': 'Segment the chosen image with the chosen model (Alt-G)',
        })

    @staticmethod

    def _model_names() -> list[str]:
        return trained_model_names()

    def _set_opacity(self, value: int) -> None:
        if self.result_layer is not None and self.result_layer in self.viewer.layers:
            self.result_layer.opacity = value / 100.0

    def run(self) -> bool:
        """Start segmenting the chosen image; returns False when nothing was started."""
        image = self.image_combo.layer()
        if image is None:
            self.runner.status.setText("open an image first")
            return False
        if not self.card_panel.ready():
            self.runner.status.setText("read the model's warnings and tick the acknowledgement first")
            return False
        volume = volume_from_layer(image)
        name, opacity, source = image.name, self.opacity.value() / 100.0, source_metadata(image)

        def prepare(result: Any) -> tuple:  # worker thread: layer data and layer objects
            seg, heat = result
            labels = labels_layer_data(seg, name=f"{name} segmentation", opacity=opacity)
            labels[1]["metadata"][METADATA_KEY]["source"] = source
            out = [labels, make_layer(labels), None, None]
            if heat is not None:
                out[2] = probability_layer_data(heat, name=f"{name} probability")
                out[3] = make_layer(out[2])
            return tuple(out)

        return self.runner.start(
            _run_segment, volume, self.model_combo.currentText(), self.device_combo.currentText(),
            self.probabilities.isChecked(), self._models, label=f"segmenting {image.name}",
            prepare=prepare, on_done=self._show,
        )

    def _show(self, prepared: tuple) -> Iterator[None]:
        """GUI steps (see :class:`TaskRunner`): class map, then heatmap, then the selection."""
        labels, labels_layer, heat, heat_layer = prepared
        self.result_layer = show_layer(self.viewer, self.result_layer, labels, labels_layer, select=False)
        if heat is not None:
            yield
            self.heatmap_layer = show_layer(self.viewer, self.heatmap_layer, heat, heat_layer, select=False)
        yield
        if self.result_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.result_layer
