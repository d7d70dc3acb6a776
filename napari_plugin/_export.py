"""Export dock widget: a labels layer → NIfTI / NRRD / DICOM SEG / RTSTRUCT, plus per-label statistics.

The accepted labels are chosen by default (never the click widget's "current object" preview);
the default file lies next to the source scan (or in the last folder used), an existing file is
only replaced after a confirmation, and the status shows the full path with an "Open folder"
button. Statistics are a sortable table (click a column header).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Optional

from qtpy.QtCore import Qt, QUrl
from qtpy.QtGui import QDesktopServices
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medseg_napari._worker import LayerCombo, TaskRunner, guide

log = logging.getLogger(__name__)

__all__ = ["ExportWidget", "label_statistics_rows", "FORMATS"]

#: format name → file suffix
FORMATS = {"NIfTI (.nii.gz)": ".nii.gz", "NRRD (.nrrd)": ".nrrd", "DICOM SEG (.dcm)": ".dcm",
           "DICOM RTSTRUCT (.dcm)": ".rtstruct.dcm"}
_COLUMNS = ["index", "name", "voxels", "volume_ml", "mean", "std", "instances"]
_HEADERS = ["index", "name", "voxels", "volume (mL)", "mean", "SD", "pieces"]
#: the folder of the last export (default folder of the next one), for the session
_LAST_FOLDER: list[Optional[Path]] = [None]


def default_export_path(layer: Any, suffix: str) -> Path:
    """``<folder>/<layer name><suffix>``: next to the layer's source scan, else the last folder used, else home.

    The source is the layer's own medseg metadata (``meta["source"]`` of a file, the DICOM
    folder) or that of the image it was derived from (``metadata["medseg"]["source"]``).
    """
    from medseg.export import safe_name

    from medseg_napari._layers import METADATA_KEY

    md = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY) or {}
    src = md.get("source") if isinstance(md.get("source"), dict) else {}
    folder: Optional[Path] = None
    for meta in (md.get("meta") or {}, (src or {}).get("meta") or {}):
        for key in ("dicom_folder", "source"):
            value = meta.get(key)
            p = Path(str(value)) if value else None
            if p is not None and p.is_absolute() and p.exists():
                folder = p if p.is_dir() else p.parent
                break
        files = meta.get("files")
        if folder is None and files and files[0] is not None and Path(str(files[0])).is_file():
            folder = Path(str(files[0])).parent
        if folder is not None:
            break
    for candidate in (md.get("dicom_folder"), (src or {}).get("dicom_folder")):
        if folder is None and candidate:
            folder = Path(str(candidate))
    if folder is None or not folder.is_dir():
        folder = _LAST_FOLDER[0] or Path.home()
    return folder / (safe_name(getattr(layer, "name", "segmentation")) + suffix)


class _NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number (not its text)."""

    def __init__(self, value: Any) -> None:
        super().__init__("" if value is None else str(value))
        self.value = float(value) if isinstance(value, (int, float)) else float("-inf")
        self.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))

    def __lt__(self, other: Any) -> bool:
        if isinstance(other, _NumberItem):
            return self.value < other.value
        return super().__lt__(other)


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
    elif fmt == ".rtstruct.dcm":
        from medseg_napari._writer import write_rtstruct_layer

        written = write_rtstruct_layer(path, data, meta)
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
        self.path_edit = QLineEdit()
        self.path_edit.textEdited.connect(lambda *_: setattr(self, "_path_typed", True))
        self._path_typed = False  # a path the user typed (or browsed to) is kept
        browse = QPushButton("…")
        browse.setToolTip("Choose the output file")
        browse.clicked.connect(self._browse)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        self.stats_button = QPushButton("Statistics")
        self.stats_button.clicked.connect(self.statistics)
        self.csv_button = QPushButton("Save CSV")
        self.csv_button.clicked.connect(lambda: self.save_csv())
        self.open_folder_button = QPushButton("Open folder")
        self.open_folder_button.setEnabled(False)
        self.open_folder_button.clicked.connect(self.open_folder)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(_HEADERS)
        self.table.setSortingEnabled(True)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
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
        mrow = QHBoxLayout()
        mrow.addWidget(self.message, 1)
        mrow.addWidget(self.open_folder_button)
        lay.addLayout(mrow)
        lay.addWidget(self.table, 1)
        self.labels_combo.currentTextChanged.connect(self._default_path)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._prefer_accepted)
        self._prefer_accepted()
        self._default_path()
        guide(self, "The accepted labels are chosen by default. Pick a format and a file (next to the scan by "
              "default) and Export; an existing file is only replaced after you confirm. Statistics gives "
              "volumes and intensities per label (click a column to sort).", {
            'labels_combo': 'Labels layer to export',
            'image_combo': 'Image for intensity statistics (mean, SD in HU for CT)',
            'format_combo': 'NIfTI/NRRD with a .labels.json of names; DICOM SEG or RTSTRUCT referencing the source series',
            'path_edit': 'Output file; an existing file is replaced only after a confirmation',
            'export_button': 'Write the labels layer, then show its statistics',
            'stats_button': 'Compute per-label statistics without writing',
            'csv_button': 'Save the statistics table as CSV next to the export',
            'open_folder_button': 'Open the folder of the last export',
            'message': 'Full path of what was written',
            'table': 'Per-label statistics; click a column header to sort',
        })

    def _prefer_accepted(self, *_: Any) -> None:
        """Choose accepted labels over the click widget's preview ("current object") by default."""
        from medseg_napari._interactive import PREVIEW_NAME

        layer = self.labels_combo.layer()
        if layer is None or layer.name != PREVIEW_NAME:
            return
        others = [l for l in self.labels_combo.layers() if l.name != PREVIEW_NAME]
        objects = [l for l in others if l.name.endswith(" objects")]
        if others:
            self.labels_combo.setCurrentText((objects or others)[-1].name)

    def _default_path(self, *_: Any) -> None:
        """The default file of the chosen layer (unless the user typed or browsed to one)."""
        layer = self.labels_combo.layer()
        if self._path_typed and self.path_edit.text():
            return
        if layer is None:
            self.path_edit.setText(str((_LAST_FOLDER[0] or Path.home()) / ("segmentation" + self.suffix)))
            return
        self.path_edit.setText(str(default_export_path(layer, self.suffix)))

    @property
    def suffix(self) -> str:
        return FORMATS[self.format_combo.currentText()]

    def _fix_suffix(self, *_: Any) -> None:
        p = self.path_edit.text()
        for s in sorted(FORMATS.values(), key=len, reverse=True):
            if p.endswith(s):
                p = p[: -len(s)]
                break
        self.path_edit.setText(p + self.suffix)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export labels", self.path_edit.text(), f"*{self.suffix}")
        if path:
            self._path_typed = True
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

        path = str(Path(self.path_edit.text()).expanduser().resolve())
        if Path(path).exists() and not self.confirm_overwrite(path):
            self.runner.status.setText("not exported: the file exists and was kept")
            return False
        data, meta, _ = layer.as_layer_data_tuple()
        meta = portable_state(meta)
        # in the helper process: np.bincount in the statistics holds the GIL for ~0.2 s on a
        # 512 x 512 x 300 volume; the arrays travel through shared memory, not pickles
        return self.runner.start(_export, data, meta, path, self.suffix, self._image_volume(),
                                 process=True, label=f"exporting {layer.name}", on_done=self._exported)

    def confirm_overwrite(self, path: str) -> bool:
        """Ask before replacing an existing file (a modal Yes/No box; No is the default)."""
        box = QMessageBox(QMessageBox.Icon.Warning, "Replace file?",
                          f"{path}\nalready exists. Replace it?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        return box.exec() == QMessageBox.StandardButton.Yes

    def _exported(self, result: Any) -> None:
        self.written, rows = result
        self._fill(rows)
        if self.written:
            _LAST_FOLDER[0] = Path(self.written[0]).parent
        text = "wrote " + ", ".join(str(Path(p)) for p in self.written)
        self.runner.status.setText(text)
        self.message.setText(text)
        self.open_folder_button.setEnabled(bool(self.written))
        self.open_folder_button.setToolTip(str(_LAST_FOLDER[0]))

    def open_folder(self) -> bool:
        """Open the folder of the last export in the system's file manager."""
        if not self.written:
            return False
        return bool(QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(self.written[0]).parent))))

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
        self.table.setSortingEnabled(False)  # Qt re-sorts while filling otherwise
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, col in enumerate(_COLUMNS):
                value = row.get(col)
                item = QTableWidgetItem(str(value)) if col == "name" else _NumberItem(value)
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)
        self.table.resizeColumnsToContents()

    def save_csv(self, path: Optional[str] = None) -> Optional[Path]:
        """Write the statistics table as CSV (beside the export by default)."""
        if not self.rows:
            return None
        if path is None:
            base = self.path_edit.text()
            for s in sorted(FORMATS.values(), key=len, reverse=True):
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
