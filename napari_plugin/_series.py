"""DICOM series picker and display presets dock widget.

Scan a folder (worker thread), list its series with the default one (the rule of
:func:`medseg.io.dicom.select_series`) pre-selected, open any of them; set a CT window preset
or MR auto-contrast on the selected image layer (also Alt-1..4 / Alt-0).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from medseg_napari._shortcuts import apply_window, install_shortcuts
from medseg_napari._worker import LayerCombo, TaskRunner, guide

log = logging.getLogger(__name__)

__all__ = ["SeriesWidget"]


def _scan(folder: str, *, progress: Any = None, cancel: Any = None) -> Any:
    from medseg_napari._reader import list_series

    return list_series(folder, progress=progress, cancel=cancel)


def _open(folder: str, uid: Optional[str], *, progress: Any = None, cancel: Any = None) -> Any:
    from medseg_napari._reader import read_dicom_series

    return read_dicom_series(folder, uid, progress=progress, cancel=cancel)


class SeriesWidget(QWidget):
    """Pick and open one series of a DICOM folder; window/level presets."""

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.series: list[dict] = []
        self.default_uid: Optional[str] = None
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("DICOM folder")
        browse = QPushButton("…")
        browse.setToolTip("Browse for the DICOM folder")
        browse.clicked.connect(self._browse)
        self.scan_button = QPushButton("Scan")
        self.scan_button.clicked.connect(self.scan)
        self.list = QListWidget()
        self.open_button = QPushButton("Open selected series")
        self.open_button.clicked.connect(self.open_selected)
        self.image_combo = LayerCombo(napari_viewer, "image")
        self.window_combo = QComboBox()
        self.window_combo.addItems(["soft tissue (Alt-1)", "lung (Alt-2)", "bone (Alt-3)", "brain (Alt-4)",
                                    "auto (MR, Alt-0)"])
        self.window_button = QPushButton("Apply window")
        self.window_button.clicked.connect(self.apply_window)
        self.runner = TaskRunner()
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        row.addWidget(self.scan_button)
        lay.addLayout(row)
        lay.addWidget(self.list, 1)
        lay.addWidget(self.open_button)
        lay.addWidget(self.runner)
        lay.addWidget(QLabel("display"))
        wrow = QHBoxLayout()
        wrow.addWidget(self.image_combo, 1)
        wrow.addWidget(self.window_combo)
        wrow.addWidget(self.window_button)
        lay.addLayout(wrow)
        install_shortcuts(napari_viewer)
        guide(self, "Choose a DICOM folder and Scan: its series are listed (the default one selected). Open the "
              "selected series as an image layer, then pick a window (CT presets or auto for MR).", {
            'folder_edit': 'Folder holding the DICOM files (sub-folders are searched too)',
            'scan_button': 'List the series found in the folder',
            'list': 'Series in the folder: modality, description, number of slices; the default is selected',
            'open_button': 'Open the selected series as an image layer with its physical geometry',
            'image_combo': 'Image layer the window applies to',
            'window_combo': 'CT window preset, or auto-contrast (percentiles) for MR',
            'window_button': 'Apply the chosen window to the image layer',
        })

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "DICOM folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)
            self.scan()

    def scan(self) -> bool:
        """List the series of the folder (worker thread)."""
        folder = self.folder_edit.text().strip()
        if not folder:
            self.runner.status.setText("choose a DICOM folder")
            return False
        return self.runner.start(_scan, folder, label="scanning", on_done=self._listed)

    def _listed(self, result: Any) -> None:
        self.series, self.default_uid = result
        self.list.clear()
        for s in self.series:
            mark = "  [default]" if s["uid"] == self.default_uid else ""
            self.list.addItem(s["label"] + mark)
        uids = [s["uid"] for s in self.series]
        if self.default_uid in uids:
            self.list.setCurrentRow(uids.index(self.default_uid))
        self.runner.status.setText(f"{len(self.series)} series")

    def open_selected(self) -> bool:
        """Open the highlighted series (worker thread) as an image layer."""
        row = self.list.currentRow()
        if row < 0 or row >= len(self.series):
            self.runner.status.setText("scan a folder and pick a series")
            return False
        from medseg_napari._layers import METADATA_KEY, add_layer_data, make_layer

        uid = self.series[row]["uid"]
        series = self.series

        def prepare(layers: list) -> list:  # worker thread: the napari layers, ready to add
            for ld in layers:
                ld[1]["metadata"][METADATA_KEY].update(series=series, series_uid=uid)
            return [make_layer(ld) for ld in layers]

        def done(layers: list) -> Iterator[None]:  # one layer per event-loop turn
            for i, layer in enumerate(layers):
                if i:
                    yield
                add_layer_data(self.viewer, layer)

        return self.runner.start(_open, self.folder_edit.text().strip(), uid, prepare=prepare,
                                 label="opening series", on_done=done)

    def apply_window(self) -> Optional[tuple[float, float]]:
        layer = self.image_combo.layer()
        if layer is None:
            return None
        preset = self.window_combo.currentText().split(" (")[0]
        return apply_window(layer, preset)
