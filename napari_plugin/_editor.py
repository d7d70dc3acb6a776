"""Correct-boundaries dock widget: label edits from :mod:`medseg.core.editing`, with undo.

Paint and erase are napari's own tools. This widget adds smoothing, hole filling, island
removal / keep largest, grow / shrink by a margin in mm, logical operations between labels and
interpolation between slices, each applied to the selected label of a labels layer, with
locked labels left untouched. Work happens in a worker thread on the label's bounding box
(plus the margin the operation needs); the GUI thread writes the changed voxels through napari's
public ``Labels.data_setitem``, so every correction is one step of the layer's own undo history:
Ctrl-Z / Ctrl-Shift-Z (and this widget's Undo / Redo) walk through clicks accepted, brush strokes
and corrections in the order they were made.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from medseg_napari._layers import volume_from_layer
from medseg_napari._shortcuts import install_shortcuts
from medseg_napari._worker import LayerCombo, TaskRunner, guide

log = logging.getLogger(__name__)

__all__ = ["EditorWidget", "edit_region", "OPERATION_NAMES"]

OPERATION_NAMES = ["smooth", "fill holes", "remove small islands", "keep largest", "grow", "shrink",
                   "interpolate slices", "logical", "intensity range"]


def edit_region(
    label_map: np.ndarray,
    index: int,
    operation: str,
    *,
    spacing: tuple[float, float, float],
    params: dict,
    locked: tuple[int, ...] = (),
    image: Optional[np.ndarray] = None,
    progress: Any = None,
    cancel: Any = None,
) -> Optional[tuple[tuple[slice, ...], np.ndarray, np.ndarray, int]]:
    """Apply one operation to label ``index`` on its bounding box.

    ``"intensity range"`` keeps only the label's voxels whose ``image`` value (same (Z, Y, X)
    grid, e.g. HU) lies within ``params["intensity_range"]`` (painting limited to a range,
    applied to what was painted); the others become background.

    Returns ``(box, old, new, changed)`` (slices in array order, the box's old and new contents
    and the number of voxels changed), or
    ``None`` when the label (and, for logical operations, the other label) is absent.
    """
    from medseg.core import editing
    from medseg.core.errors import InputError
    from medseg.core.progress import check_cancel

    if progress:
        progress(0, 3, f"{operation}: finding label {index}")
    wanted = [index]
    other = int(params.get("other", 0))
    if operation == "logical":
        wanted.append(other)
    pad = [1, 1, 1]
    if operation == "grow":
        pad = [math.ceil(params.get("margin_mm", 2.0) / s) + 1 for s in spacing]
    elif operation == "smooth":
        pad = [math.ceil(3 * params.get("sigma_mm", 1.0) / s) + 1 for s in spacing]
    box = editing.label_bbox(label_map, wanted, margin_vox=pad)
    if box is None:
        return None
    check_cancel(cancel, operation)
    old = np.array(label_map[box], copy=True)
    mask = old == index
    if progress:
        progress(1, 3, f"{operation} on a {old.shape} box")
    if operation == "logical":
        if other == index:
            raise InputError(f"logical {params.get('op')}: choose another label than {index}")
        new_mask = editing.logical(mask, old == other, params.get("op", "union"))
    elif operation == "intensity range":
        if image is None or np.shape(image) != np.shape(label_map):
            raise InputError("intensity range: choose the image the labels were drawn on (same grid)")
        lo, hi = (float(v) for v in params.get("intensity_range", (-np.inf, np.inf)))
        values = np.asarray(image[box])
        new_mask = mask & (values >= lo) & (values <= hi)
    elif operation in editing.OPERATIONS:
        kw = {k: v for k, v in params.items() if k in ("sigma_mm", "min_volume_mm3", "margin_mm", "axis")}
        fn = editing.OPERATIONS[operation]
        import inspect

        accepted = set(inspect.signature(fn).parameters)
        new_mask = fn(mask, spacing, **{k: v for k, v in kw.items() if k in accepted})
    else:
        raise InputError(f"unknown operation {operation!r}; choose one of {OPERATION_NAMES}")
    check_cancel(cancel, operation)
    new = editing.apply_mask(old, index, new_mask, locked=locked)
    if progress:
        progress(3, 3, f"{operation} done")
    changed = int(np.count_nonzero(old != new))
    return box, old, new, changed


class EditorWidget(QWidget):
    """Edit the selected label of a labels layer; every edit can be undone."""

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._followed: Any = None  # the labels layer whose selected_label this widget follows
        self.labels_combo = LayerCombo(napari_viewer, "labels")
        self.labels_combo.currentTextChanged.connect(self._follow_layer)
        self.index = QSpinBox()
        self.index.setRange(1, 65535)
        self.operation = QComboBox()
        self.operation.addItems(OPERATION_NAMES)
        self.sigma = QDoubleSpinBox(suffix=" mm", minimum=0.0, maximum=50.0, value=1.0, singleStep=0.5)
        self.margin = QDoubleSpinBox(suffix=" mm", minimum=0.0, maximum=200.0, value=2.0, singleStep=0.5)
        self.min_volume = QDoubleSpinBox(suffix=" mm³", minimum=0.0, maximum=1e7, value=100.0)
        self.axis = QComboBox()
        self.axis.addItems(["0 (slices along z)", "1 (along y)", "2 (along x)"])
        self.logic_op = QComboBox()
        self.logic_op.addItems(["union", "intersect", "subtract", "xor"])
        self.other = QSpinBox()
        self.other.setRange(1, 65535)
        self.image_combo = LayerCombo(napari_viewer, "image")
        self.range_lo = QDoubleSpinBox(minimum=-1e6, maximum=1e6, value=-100.0, singleStep=10.0)
        self.range_hi = QDoubleSpinBox(minimum=-1e6, maximum=1e6, value=300.0, singleStep=10.0)
        self.locked = QLineEdit()
        self.locked.setPlaceholderText("locked labels, e.g. 1, 3")
        self.apply_button = QPushButton("Apply (Alt-E)")
        self.apply_button.clicked.connect(self.apply)
        self.undo_button = QPushButton("Undo (Alt-U)")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(self.redo)
        self.runner = TaskRunner()
        form = QFormLayout()
        form.addRow("labels layer", self.labels_combo)
        form.addRow("label", self.index)
        form.addRow("operation", self.operation)
        form.addRow("smoothing σ", self.sigma)
        form.addRow("margin", self.margin)
        form.addRow("min island", self.min_volume)
        form.addRow("interpolate across", self.axis)
        form.addRow("logical op", self.logic_op)
        form.addRow("with label", self.other)
        form.addRow("image (for range)", self.image_combo)
        rrow = QHBoxLayout()
        rrow.addWidget(self.range_lo)
        rrow.addWidget(self.range_hi)
        form.addRow("intensity range", rrow)
        form.addRow("locked", self.locked)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.apply_button)
        row.addWidget(self.undo_button)
        row.addWidget(self.redo_button)
        lay.addLayout(row)
        lay.addWidget(self.runner)
        lay.addStretch(1)
        self._follow_layer()
        install_shortcuts(napari_viewer, editor=self)
        guide(self, "Choose a labels layer and a label (or pick one with napari's label picker), then an "
              "operation and Apply. Every change is one step of the layer's own undo history: Ctrl-Z / "
              "Ctrl-Shift-Z (or Undo / Redo here). Locked labels are never changed.", {
            'labels_combo': 'Labels layer to correct',
            'index': "Label to edit (follows the layer's selected label)",
            'operation': 'Correction to apply to the label',
            'sigma': 'Smoothing strength (Gaussian sigma, mm)',
            'margin': 'Grow / shrink distance (mm)',
            'min_volume': 'Islands smaller than this are removed (mm³)',
            'axis': 'Axis along which missing slices are interpolated',
            'logic_op': "Logical operation between the label and 'with label'",
            'other': 'The second label of a logical operation',
            'image_combo': "Image whose intensities limit the label ('intensity range')",
            'range_lo': "Lowest intensity kept by 'intensity range' (HU for CT)",
            'range_hi': "Highest intensity kept by 'intensity range' (HU for CT)",
            'locked': 'Labels never changed by these operations, e.g. 1, 3',
            'apply_button': 'Apply the operation to the label (Alt-E)',
            'undo_button': "napari's undo of the layer: the same as Ctrl-Z (Alt-U)",
            'redo_button': "napari's redo of the layer: the same as Ctrl-Shift-Z",
        })

    def _follow_layer(self, *_: Any) -> None:
        """Follow the chosen layer's selected label (napari's label picker, its label spin box)."""
        layer = self.labels_combo.layer()
        if self._followed is not None and self._followed is not layer:
            self._followed.events.selected_label.disconnect(self._on_selected_label)
            self._followed = None
        if layer is not None:
            self.index.setValue(max(1, int(layer.selected_label)))
            if self._followed is None:
                layer.events.selected_label.connect(self._on_selected_label)
                self._followed = layer

    def _on_selected_label(self, event: Any = None) -> None:
        # the layer's property, not the event's payload: napari 0.9's selected_label event
        # carries no ``value`` (it did in older releases)
        layer = self._followed
        if layer is not None and int(layer.selected_label) > 0:
            self.index.setValue(int(layer.selected_label))

    def locked_labels(self) -> tuple[int, ...]:
        """Parse the locked-labels field (comma or space separated indices)."""
        from medseg.core.errors import InputError

        text = self.locked.text().replace(",", " ").split()
        from medseg_napari._segments import locked_of

        listed = locked_of(self.labels_combo.layer()) if self.labels_combo.layer() is not None else ()
        try:
            return tuple(sorted({int(t) for t in text} | set(listed)))
        except ValueError as exc:
            raise InputError(f"locked labels must be integers separated by commas, got {self.locked.text()!r}") from exc

    def params(self) -> dict:
        return {"sigma_mm": self.sigma.value(), "margin_mm": self.margin.value(),
                "min_volume_mm3": self.min_volume.value(), "axis": self.axis.currentIndex(),
                "op": self.logic_op.currentText(), "other": self.other.value(),
                "intensity_range": (self.range_lo.value(), self.range_hi.value())}

    def apply(self) -> bool:
        """Run the chosen operation on the chosen label in a worker thread."""
        layer = self.labels_combo.layer()
        if layer is None:
            self.runner.status.setText("no labels layer")
            return False
        try:
            locked = self.locked_labels()
        except ValueError as exc:
            self.runner.status.setText(str(exc))
            return False
        spacing = volume_from_layer(layer).spacing
        op, index = self.operation.currentText(), self.index.value()
        image = self.image_combo.layer()
        image = image.data if image is not None and op == "intensity range" else None
        return self.runner.start(
            edit_region, layer.data, index, op, spacing=spacing, params=self.params(), locked=locked, image=image,
            label=f"{op} on label {index}", on_done=lambda r: self._apply_result(layer, r, op, index))

    def _apply_result(self, layer: Any, result: Any, op: str, index: int) -> None:
        if result is None:
            self.runner.status.setText(f"label {index} is not in {layer.name}")
            return
        box, old, new, changed = result
        where = np.nonzero(old != new)
        if where[0].size:
            indices = tuple(ix + s.start for ix, s in zip(where, box))
            layer.data_setitem(indices, new[where])  # one step of napari's undo history
        self.runner.status.setText(f"{op} on label {index}: {changed} voxels changed (Ctrl-Z undoes it)")

    def undo(self) -> bool:
        """napari's undo of the chosen labels layer (the same history as Ctrl-Z)."""
        layer = self.labels_combo.layer()
        if layer is None or self.runner.busy:
            self.runner.status.setText("no labels layer" if layer is None else "busy")
            return False
        layer.undo()
        self.runner.status.setText(f"undid the last change of {layer.name!r}")
        return True

    def redo(self) -> bool:
        """napari's redo of the chosen labels layer (the same history as Ctrl-Shift-Z)."""
        layer = self.labels_combo.layer()
        if layer is None or self.runner.busy:
            return False
        layer.redo()
        self.runner.status.setText(f"redid the last undone change of {layer.name!r}")
        return True
