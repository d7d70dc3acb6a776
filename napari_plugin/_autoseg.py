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
from medseg_napari._worker import LayerCombo, TaskRunner

log = logging.getLogger(__name__)

__all__ = ["AutoSegmentWidget", "source_metadata"]


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
        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_combo)
        form.addRow("device", self.device_combo)
        form.addRow("", self.probabilities)
        form.addRow("overlay opacity", self.opacity)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.run_button)
        lay.addWidget(self.runner)
        lay.addStretch(1)
        install_shortcuts(napari_viewer, autoseg=self)

    @staticmethod
    def _model_names() -> list[str]:
        from medseg.models import DEFAULT_MODEL

        try:
            from medseg.models import list_models

            names = [m.name for m in list_models() if "interactive" not in m.name]
        except Exception as exc:  # noqa: BLE001 - a broken config must not hide the default model
            log.warning("cannot list models: %s", exc)
            names = []
        return sorted(set(names) | {DEFAULT_MODEL}, key=lambda n: (n != DEFAULT_MODEL, n))

    def _set_opacity(self, value: int) -> None:
        if self.result_layer is not None and self.result_layer in self.viewer.layers:
            self.result_layer.opacity = value / 100.0

    def run(self) -> bool:
        """Start segmenting the chosen image; returns False when nothing was started."""
        image = self.image_combo.layer()
        if image is None:
            self.runner.status.setText("open an image first")
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
