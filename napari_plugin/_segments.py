"""Segment list dock widget: the segments of a labels layer by name, colour, visibility and lock.

Like a segment editor's list: one row per label of the layer's table (``metadata["medseg"]``,
see :mod:`._layers`), with its colour, a visibility box (hidden segments are drawn transparent
through the layer's colormap), a lock box (locked segments are kept by Correct boundaries and
by the click widget, which reads the layer's table) and its name, renamed in place. Selecting
a row makes it the layer's selected label, so napari's brush paints it; the brush size is set
in millimetres (napari's world units here are LPS millimetres).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QColorDialog,
    QDoubleSpinBox,
    QHBoxLayout,
    QPushButton,
    QFormLayout,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medseg_napari._layers import METADATA_KEY, label_colormap, label_features, labels_from_layer
from medseg_napari._worker import LayerCombo, TaskRunner, guide

log = logging.getLogger(__name__)

__all__ = ["SegmentListWidget", "locked_of"]

_COLS = ["", "show", "lock", "index", "name"]


def locked_of(layer: Any) -> tuple[int, ...]:
    """Label indices locked in a labels layer's segment list (``metadata["medseg"]["locked"]``)."""
    md = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY) or {}
    return tuple(int(i) for i in md.get("locked", ()))


class SegmentListWidget(QWidget):
    """Name, colour, show/hide, lock and rename the segments of a labels layer; brush size in mm."""

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._layer: Any = None
        self._filling = False
        self.color_dialog: Optional[QColorDialog] = None  # the colour dialog last opened
        self.labels_combo = LayerCombo(napari_viewer, "labels")
        self.labels_combo.currentTextChanged.connect(self.refresh)
        self.table = QTableWidget(0, len(_COLS))
        self.table.setHorizontalHeaderLabels(_COLS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.itemChanged.connect(self._changed)
        self.table.currentCellChanged.connect(self._select_row)
        self.brush_mm = QDoubleSpinBox(suffix=" mm", minimum=0.5, maximum=100.0, value=5.0, singleStep=0.5)
        self.brush_mm.valueChanged.connect(self._set_brush)
        self.runner = TaskRunner()
        from medseg_napari._paint_range import IntensityLimit

        self.limit = IntensityLimit(on_change=self.runner.status.setText)
        self.limit_check = QCheckBox("paint only within")
        self.limit_low = QDoubleSpinBox(minimum=-5000.0, maximum=50000.0, value=-100.0, singleStep=10.0)
        self.limit_high = QDoubleSpinBox(minimum=-5000.0, maximum=50000.0, value=300.0, singleStep=10.0)
        self.limit_image = LayerCombo(napari_viewer, "image")
        for w in (self.limit_check,):
            w.toggled.connect(self._set_limit)
        for w in (self.limit_low, self.limit_high):
            w.valueChanged.connect(self._set_limit)
        self.limit_image.currentTextChanged.connect(self._set_limit)
        self.labels_combo.currentTextChanged.connect(self._set_limit)
        limit_row = QHBoxLayout()
        for w in (self.limit_check, self.limit_low, self.limit_high):
            limit_row.addWidget(w)
        form = QFormLayout()
        form.addRow("labels layer", self.labels_combo)
        form.addRow("brush size", self.brush_mm)
        form.addRow("intensity", limit_row)
        form.addRow("of image", self.limit_image)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.runner)
        guide(self, "Choose a labels layer: its segments are listed with their colour. Untick 'show' to hide "
                    "a segment, tick 'lock' to protect it from corrections and new objects, double-click a "
                    "name to rename it, click a colour to change it. Selecting a row makes napari's brush "
                    "paint that segment.", {
                        "labels_combo": "Labels layer whose segments are listed",
                        "table": "Segments: colour (click to change), show, lock, index, name (double-click "
                                 "the name to rename)",
                        "brush_mm": "napari's paint/erase brush diameter in millimetres",
                        "limit_check": "When on, a brush stroke paints only voxels whose image value (HU on CT) "
                                       "lies between the two values; erasing is not limited",
                        "limit_low": "Lowest intensity painted (HU on CT)",
                        "limit_high": "Highest intensity painted (HU on CT)",
                        "limit_image": "The image whose intensities limit painting (on the labels layer's grid)",
                    })
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self.refresh)
        self.refresh()

    # -- model ------------------------------------------------------------------------------
    def layer(self) -> Any:
        return self.labels_combo.layer()

    def _md(self) -> dict:
        return self.layer().metadata.setdefault(METADATA_KEY, {})

    def table_of_layer(self) -> Any:
        return labels_from_layer(self.layer())

    def refresh(self, *_: Any) -> None:
        """Fill the list from the chosen layer's label table."""
        layer = self.layer()
        if layer is not self._layer and self._layer is not None:
            try:
                self._layer.events.paint.disconnect(self.refresh)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._layer = layer
        self._filling = True
        try:
            if layer is None:
                self.table.setRowCount(0)
                return
            layer.events.paint.connect(self.refresh)
            self._set_limit()
            table = self.table_of_layer()
            hidden = set(self._md().get("hidden", ()))
            locked = set(locked_of(layer))
            self.table.setRowCount(len(table))
            for r, lab in enumerate(table):
                swatch = QTableWidgetItem("")
                swatch.setBackground(QColor(*lab.color))
                swatch.setFlags(Qt.ItemFlag.ItemIsEnabled)
                self.table.setItem(r, 0, swatch)
                self.table.setCellWidget(r, 0, self._color_button(lab.index, lab.color))
                for c, on in ((1, lab.index not in hidden), (2, lab.index in locked)):
                    box = QTableWidgetItem("")
                    box.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsSelectable)
                    box.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
                    self.table.setItem(r, c, box)
                idx = QTableWidgetItem(str(lab.index))
                idx.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                self.table.setItem(r, 3, idx)
                self.table.setItem(r, 4, QTableWidgetItem(lab.name))
            self.table.resizeColumnsToContents()
        finally:
            self._filling = False

    def _index_of_row(self, row: int) -> Optional[int]:
        item = self.table.item(row, 3)
        return int(item.text()) if item is not None else None

    # -- actions ----------------------------------------------------------------------------
    def _changed(self, item: QTableWidgetItem) -> None:
        if self._filling or self.layer() is None:
            return
        index = self._index_of_row(item.row())
        if index is None:
            return
        if item.column() == 4:
            self.rename(index, item.text().strip())
        elif item.column() == 1:
            self.set_visible(index, item.checkState() == Qt.CheckState.Checked)
        elif item.column() == 2:
            self.set_locked(index, item.checkState() == Qt.CheckState.Checked)

    def _write_table(self, table: Any) -> None:
        layer = self.layer()
        hidden = set(self._md().get("hidden", ()))
        self._md()["labels"] = table.to_dict()
        cmap = label_colormap(table)
        if hidden:
            colors = dict(cmap.color_dict)
            for i in hidden:
                colors[i] = [0.0, 0.0, 0.0, 0.0]
            from napari.utils.colormaps import DirectLabelColormap

            cmap = DirectLabelColormap(color_dict=colors)
        layer.colormap = cmap
        layer.features = label_features(table)

    def rename(self, index: int, name: str) -> bool:
        """Rename segment ``index`` (names stay unique; an empty or taken name is refused)."""
        from dataclasses import replace

        from medseg.core.labels import LabelTable

        table = self.table_of_layer()
        if not name or name in [l.name for l in table if l.index != index]:
            self.runner.status.setText(f"name {name!r} is empty or already used")
            self.refresh()
            return False
        self._write_table(LabelTable(tuple(replace(l, name=name, code=None, category=None)
                                           if l.index == index and l.name != name else l for l in table)))
        self.runner.status.setText(f"segment {index} renamed to {name}")
        return True

    def _color_button(self, index: int, color: tuple) -> QPushButton:
        button = QPushButton("")
        button.setToolTip(f"Change the colour of segment {index} (used on screen and in exports)")
        button.setStyleSheet("background-color: rgb(%d, %d, %d)" % tuple(color))
        button.clicked.connect(lambda *_: self.choose_color(index))
        return button

    def choose_color(self, index: int) -> QColorDialog:
        """Open Qt's colour dialog for segment ``index``; choosing a colour applies it."""
        table = self.table_of_layer()
        current = QColor(*table[index].color) if index in table else QColor(255, 255, 255)
        self.color_dialog = QColorDialog(current, self)
        self.color_dialog.colorSelected.connect(
            lambda c: self.set_color(index, (c.red(), c.green(), c.blue())))
        self.color_dialog.open()
        return self.color_dialog

    def set_color(self, index: int, color: tuple) -> None:
        """Colour segment ``index`` with ``color`` (3 ints 0-255): the layer's colormap and the
        label table that exports write (SEG's display colour, RTSTRUCT's ROI colour, sidecars)."""
        from dataclasses import replace

        from medseg.core.labels import LabelTable

        table = self.table_of_layer()
        rgb = tuple(int(c) for c in color)
        self._write_table(LabelTable(tuple(replace(l, color=rgb) if l.index == index else l for l in table)))
        self.refresh()
        self.runner.status.setText(f"segment {index} coloured {rgb}")

    def set_visible(self, index: int, visible: bool) -> None:
        """Show or hide segment ``index`` (hidden: drawn transparent; its voxels are kept)."""
        hidden = set(self._md().get("hidden", ()))
        (hidden.discard if visible else hidden.add)(index)
        self._md()["hidden"] = sorted(hidden)
        self._write_table(self.table_of_layer())

    def set_locked(self, index: int, locked: bool) -> None:
        """Lock or unlock segment ``index`` for Correct boundaries."""
        current = set(locked_of(self.layer()))
        (current.add if locked else current.discard)(index)
        self._md()["locked"] = sorted(current)

    def _select_row(self, row: int, *_: Any) -> None:
        index = self._index_of_row(row) if row >= 0 else None
        if index is not None and self.layer() is not None:
            self.layer().selected_label = index

    def _set_limit(self, *_: Any) -> None:
        """Apply the intensity-limit controls to the watched labels layer and image."""
        self.limit.enabled = self.limit_check.isChecked()
        self.limit.low, self.limit.high = sorted((self.limit_low.value(), self.limit_high.value()))
        self.limit.attach(self.layer(), self.limit_image.layer())

    def _set_brush(self, mm: float) -> None:
        layer = self.layer()
        if layer is not None:
            layer.brush_size = max(1, int(round(mm)))  # napari's brush is in world units: mm here
