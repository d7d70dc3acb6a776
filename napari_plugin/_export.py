"""Export dock widget: a labels layer → NIfTI / NRRD / DICOM SEG, plus per-label statistics."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Optional

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medseg_napari._worker import LayerCombo, TaskRunner

log = logging.getLogger(__name__)

__all__ = ["ExportWidget", "label_statistics_rows", "FORMATS"]

#: format name → file suffix
FORMATS = {"NIfTI (.nii.gz)": ".nii.gz", "NRRD (.nrrd)": ".nrrd", "DICOM SEG (.dcm)": ".dcm"}
_COLUMNS = ["index", "name", "voxels", "volume_ml", "mean", "std", "instances"]


def label_statistics_rows(segmentation: Any, image: Any = None, *, progress: Any = None, cancel: Any = None) -> list[dict]:
    """One row per label from :func:`medseg.export.label_statistics`.

    Keys: ``index``, ``name``, ``voxels``, ``volume_ml``, ``mean``, ``std``, ``min``, ``max``
    (intensities of ``image`` inside the label, ``None`` without an image) and ``instances``
    (number of connected components).
    """
    from medseg.export import label_statistics

    stats = label_statistics(segmentation, image)
    rows = []
    for row in stats["labels"]:
        flat = {k: v for k, v in row.items() if k != "instances"}
        flat["instances"] = (row.get("instances") or {}).get("count")
        for k in ("volume_ml", "mean", "std"):
            if isinstance(flat.get(k), float):
                flat[k] = round(flat[k], 3)
        rows.append(flat)
    return rows


def _export(data: Any, meta: dict, path: str, fmt: str, image: Any, *, progress: Any = None, cancel: Any = None) -> Any:
    from medseg_napari._writer import segmentation_from_state, write_dicom_seg_layer, write_labels

    if progress:
        progress(0, 2, f"writing {Path(path).name}")
    if fmt == ".dcm":
        written = write_dicom_seg_layer(path, data, meta)
    else:
        written = write_labels(path, data, meta)
    if progress:
        progress(1, 2, "statistics")
    rows = label_statistics_rows(segmentation_from_state(data, meta), image)
    return written, rows


def _stats(data: Any, meta: dict, image: Any, *, progress: Any = None, cancel: Any = None) -> list[dict]:
    from medseg_napari._writer import segmentation_from_state

    return label_statistics_rows(segmentation_from_state(data, meta), image)


class ExportWidget(QWidget):
    """Save a labels layer and show (and save) per-label volume statistics."""

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.rows: list[dict] = []
        self.written: list[str] = []
        self.labels_combo = LayerCombo(napari_viewer, "labels")
        self.image_combo = LayerCombo(napari_viewer, "image")
        self.format_combo = QComboBox()
        self.format_combo.addItems(list(FORMATS))
        self.format_combo.currentTextChanged.connect(self._fix_suffix)
        self.path_edit = QLineEdit(str(Path.home() / "segmentation.nii.gz"))
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        self.stats_button = QPushButton("Statistics")
        self.stats_button.clicked.connect(self.statistics)
        self.csv_button = QPushButton("Save CSV")
        self.csv_button.clicked.connect(lambda: self.save_csv())
        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(_COLUMNS)
        self.runner = TaskRunner()
        form = QFormLayout()
        form.addRow("labels", self.labels_combo)
        form.addRow("image (for HU stats)", self.image_combo)
        form.addRow("format", self.format_combo)
        prow = QHBoxLayout()
        prow.addWidget(self.path_edit, 1)
        prow.addWidget(browse)
        form.addRow("file", prow)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        brow = QHBoxLayout()
        for b in (self.export_button, self.stats_button, self.csv_button):
            brow.addWidget(b)
        lay.addLayout(brow)
        lay.addWidget(self.runner)
        lay.addWidget(self.table, 1)

    @property
    def suffix(self) -> str:
        return FORMATS[self.format_combo.currentText()]

    def _fix_suffix(self, *_: Any) -> None:
        p = self.path_edit.text()
        for s in FORMATS.values():
            if p.endswith(s):
                p = p[: -len(s)]
                break
        self.path_edit.setText(p + self.suffix)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export labels", self.path_edit.text(), f"*{self.suffix}")
        if path:
            self.path_edit.setText(path)
            self._fix_suffix()

    def _image_volume(self) -> Any:
        from medseg_napari._layers import volume_from_layer

        labels, image = self.labels_combo.layer(), self.image_combo.layer()
        if image is None or labels is None or image.data.shape != labels.data.shape:
            return None
        return volume_from_layer(image)

    def export(self) -> bool:
        """Write the chosen labels layer in the chosen format (worker thread)."""
        layer = self.labels_combo.layer()
        if layer is None:
            self.runner.status.setText("no labels layer")
            return False
        from medseg_napari._writer import portable_state

        data, meta, _ = layer.as_layer_data_tuple()
        meta = portable_state(meta)
        path = self.path_edit.text()
        # in the helper process: np.bincount in the statistics holds the GIL for ~0.2 s on a
        # 512 x 512 x 300 volume; the arrays travel through shared memory, not pickles
        return self.runner.start(_export, data, meta, path, self.suffix, self._image_volume(),
                                 process=True, label=f"exporting {layer.name}", on_done=self._exported)

    def _exported(self, result: Any) -> None:
        self.written, rows = result
        self._fill(rows)
        self.runner.status.setText("wrote " + ", ".join(Path(p).name for p in self.written))

    def statistics(self) -> bool:
        layer = self.labels_combo.layer()
        if layer is None:
            return False
        from medseg_napari._writer import portable_state

        data, meta, _ = layer.as_layer_data_tuple()
        meta = portable_state(meta)
        return self.runner.start(_stats, data, meta, self._image_volume(), process=True,
                                 label="statistics", on_done=self._fill)

    def _fill(self, rows: list[dict]) -> None:
        self.rows = rows
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, col in enumerate(_COLUMNS):
                self.table.setItem(r, c, QTableWidgetItem("" if row.get(col) is None else str(row.get(col))))

    def save_csv(self, path: Optional[str] = None) -> Optional[Path]:
        """Write the statistics table as CSV (beside the export by default)."""
        if not self.rows:
            return None
        if path is None:
            base = self.path_edit.text()
            for s in FORMATS.values():
                if base.endswith(s):
                    base = base[: -len(s)]
            path = base + "_statistics.csv"
        out = Path(path)
        cols = list(dict.fromkeys(k for row in self.rows for k in row))
        with open(out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(self.rows)
        self.runner.status.setText(f"wrote {out.name}")
        return out
