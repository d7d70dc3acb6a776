"""View dock widget: standard planes, CT window buttons, the cursor in patient mm, a 3D surface.

Everything here goes through napari's public viewer API: ``viewer.dims`` (order, ndisplay,
axis labels), ``viewer.text_overlay`` and ``viewer.cursor`` (position), and a surface layer
made from the accepted labels with :func:`medseg.export.mesh` (marching cubes in the worker).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from medseg_napari._layers import (
    AXIS_LABELS,
    CT_PRESETS,
    VIEW_ORDERS,
    layer_transform_kwargs,
    patient_position_text,
    segmentation_from_layer,
)
from medseg_napari._shortcuts import apply_window, install_shortcuts
from medseg_napari._worker import LayerCombo, TaskRunner

log = logging.getLogger(__name__)

__all__ = ["ViewWidget", "apply_view", "anatomical_axes", "surface_layers", "with_patient_mm"]

HOWTO = ("Pick a plane (axial, coronal, sagittal) and a CT window. With 'cursor in mm' on, the "
         "canvas shows where the mouse points in patient millimetres (R/L, A/P, S/I). "
         "'3D surfaces' draws the accepted segments of the chosen labels layer as surfaces.")


def with_patient_mm(status: Any, world_point: Any, previous: Optional[str] = None) -> Any:
    """``status`` (napari's status: a text or, napari >= 0.5, a dict of parts) with the patient mm
    of ``world_point`` in its coordinates, in place of ``previous`` (the mm text added before);
    ``None`` when it already shows them or there is no 3D point."""
    if len(world_point) < 3:
        return None
    mm = patient_position_text(world_point)

    def join(text: str) -> str:
        if previous:
            text = text.replace(f"  |  {previous}", "").replace(previous, "")
        text = "" if text.strip() in ("", "Ready") else text
        return f"{text}  |  {mm}" if text else mm

    if isinstance(status, dict):
        coords = str(status.get("coordinates", ""))
        return None if coords.endswith(mm) else {**status, "coordinates": join(coords)}
    text = str(status or "")
    return None if text.endswith(mm) else join(text)


def anatomical_axes(viewer: Any) -> None:
    """Name the viewer's three spatial axes by the planes they step through (axial S→I, ...)."""
    if viewer.dims.ndim >= 3:
        labels = list(viewer.dims.axis_labels)
        labels[-3:] = AXIS_LABELS
        viewer.dims.axis_labels = tuple(labels)


def apply_view(viewer: Any, view: str) -> tuple:
    """Show the ``"axial"``, ``"coronal"`` or ``"sagittal"`` plane (2D); returns the new dims order."""
    if view not in VIEW_ORDERS:
        raise KeyError(f"unknown view {view!r}; choose one of {sorted(VIEW_ORDERS)}")
    ndim = viewer.dims.ndim
    lead = tuple(range(ndim - 3))
    order = lead + tuple(a + ndim - 3 for a in VIEW_ORDERS[view])
    viewer.dims.ndisplay = 2
    viewer.dims.order = order
    viewer.reset_view()
    return order


def surface_layers(segmentation: Any, *, progress: Any = None, cancel: Any = None) -> list[tuple]:
    """Worker thread: one napari surface layer tuple per label (marching cubes, in voxel indices).

    The vertices are voxel indices ``(k, j, i)`` placed with the label map's transform, so
    they overlay the image in 3D.
    """
    from skimage.measure import marching_cubes

    out = []
    arr = segmentation.array
    labels = list(segmentation.labels)
    for n, lab in enumerate(labels):
        if cancel is not None and cancel():
            break
        if progress:
            progress(n, len(labels), f"surface of {lab.name}")
        mask = arr == lab.index
        if mask.sum() < 8:
            continue
        padded = np.pad(mask, 1).astype(np.float32)
        verts, faces, _, _ = marching_cubes(padded, 0.5)
        verts -= 1.0
        color = np.array([*(c / 255.0 for c in lab.color), 1.0], np.float32)
        out.append(((verts.astype(np.float32), faces.astype(np.int32)),
                    {"name": f"{lab.name} surface", "opacity": 0.8, "blending": "translucent",
                     "vertex_colors": np.tile(color, (len(verts), 1)),
                     **layer_transform_kwargs(segmentation.affine)}, "surface"))
    return out


class ViewWidget(QWidget):
    """Plane switch, window buttons, cursor in patient mm, 3D surfaces of the accepted segments."""

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.surfaces: list = []
        howto = QLabel(HOWTO)
        howto.setWordWrap(True)
        howto.setObjectName("howto")
        self.view_buttons: dict[str, QPushButton] = {}
        vrow = QHBoxLayout()
        for view, tip in (("axial", "Slices across the body, seen from the feet (patient left on the right)"),
                          ("coronal", "Slices from the front, superior at the top"),
                          ("sagittal", "Slices from the side, superior at the top, anterior on the left")):
            b = QPushButton(view)
            b.setToolTip(tip)
            b.clicked.connect(lambda _=False, v=view: self.set_view(v))
            self.view_buttons[view] = b
            vrow.addWidget(b)
        self.window_buttons: dict[str, QPushButton] = {}
        wgrid = QGridLayout()
        keys = {"soft tissue": "Alt-1", "lung": "Alt-2", "bone": "Alt-3", "brain": "Alt-4", "auto": "Alt-0"}
        for n, preset in enumerate([*CT_PRESETS, "auto"]):
            b = QPushButton(preset)
            if preset == "auto":
                b.setToolTip(f"Contrast from the image's 0.5-99.5 percentiles, for MR ({keys[preset]})")
            else:
                level, width = CT_PRESETS[preset]
                b.setToolTip(f"CT window {preset}: level {level:.0f} HU, width {width:.0f} HU ({keys[preset]})")
            b.clicked.connect(lambda _=False, p=preset: self.set_window(p))
            self.window_buttons[preset] = b
            wgrid.addWidget(b, n // 3, n % 3)
        self._status_mm: Optional[str] = None  # the patient-mm text last added to viewer.status
        self.cursor_mm = QCheckBox("cursor in mm")
        self.cursor_mm.setToolTip("Show the mouse position in patient millimetres (LPS: R/L, A/P, S/I) on the "
                                  "canvas and in the status bar")
        self.cursor_mm.toggled.connect(self._set_cursor_overlay)
        self.labels_combo = LayerCombo(napari_viewer, "labels")
        self.labels_combo.setToolTip("Labels layer whose segments are drawn as 3D surfaces")
        from medseg_napari._interactive import PREVIEW_NAME

        preferred = [l.name for l in self.labels_combo.layers() if l.name != PREVIEW_NAME]
        if preferred and self.labels_combo.currentText() == PREVIEW_NAME:
            self.labels_combo.setCurrentText(preferred[-1])
        self.surface_button = QPushButton("3D surfaces")
        self.surface_button.setToolTip("Draw each segment of the chosen labels layer as a surface and switch to 3D")
        self.surface_button.clicked.connect(self.show_surfaces)
        self.runner = TaskRunner()
        lay = QVBoxLayout(self)
        lay.addWidget(howto)
        lay.addWidget(QLabel("plane"))
        lay.addLayout(vrow)
        lay.addWidget(QLabel("window"))
        lay.addLayout(wgrid)
        lay.addWidget(self.cursor_mm)
        srow = QHBoxLayout()
        srow.addWidget(self.labels_combo, 1)
        srow.addWidget(self.surface_button)
        lay.addLayout(srow)
        lay.addWidget(self.runner)
        lay.addStretch(1)
        install_shortcuts(napari_viewer)
        self.cursor_mm.setChecked(True)

    def set_view(self, view: str) -> tuple:
        """Switch to a standard plane (2D)."""
        anatomical_axes(self.viewer)
        return apply_view(self.viewer, view)

    def set_window(self, preset: str) -> Optional[tuple[float, float]]:
        """Apply a CT window (or ``"auto"``) to the selected (else the last) image layer."""
        from medseg_napari._shortcuts import selected_image

        layer = selected_image(self.viewer)
        if layer is None:
            self.runner.status.setText("open an image first")
            return None
        return apply_window(layer, preset)

    def _set_cursor_overlay(self, on: bool) -> None:
        overlay = self.viewer.text_overlay
        if on:
            self.viewer.cursor.events.position.connect(self._on_cursor)
            self.viewer.events.status.connect(self._on_status)
            overlay.visible = True
            self._on_cursor()
        else:
            self.viewer.cursor.events.position.disconnect(self._on_cursor)
            self.viewer.events.status.disconnect(self._on_status)
            overlay.visible = False
            if self._status_mm is not None:
                self.viewer.status = "Ready"  # napari's next update shows its own status only
                self._status_mm = None

    def _on_status(self, event: Any = None) -> None:
        """napari's status bar (``viewer.status``) gets the cursor in patient mm beside its own."""
        pos = self.viewer.cursor.position
        status = with_patient_mm(self.viewer.status, pos, self._status_mm)
        if status is not None:
            self._status_mm = patient_position_text(pos)
            self.viewer.status = status

    def _on_cursor(self, event: Any = None) -> None:
        pos = self.viewer.cursor.position
        if len(pos) >= 3:
            self.viewer.text_overlay.text = patient_position_text(pos)
            self._on_status()

    def show_surfaces(self) -> bool:
        """Build the chosen labels layer's surfaces in a worker thread, then show them in 3D."""
        layer = self.labels_combo.layer()
        if layer is None:
            self.runner.status.setText("no labels layer")
            return False
        seg = segmentation_from_layer(layer)

        def done(layers: list) -> None:
            for old in self.surfaces:
                if old in self.viewer.layers:
                    self.viewer.layers.remove(old)
            self.surfaces = [self.viewer.add_surface(data, **kw) for data, kw, _ in layers]
            self.viewer.dims.ndisplay = 3
            self.runner.status.setText(f"{len(self.surfaces)} surfaces")

        return self.runner.start(surface_layers, seg, label="surfaces", on_done=done)
