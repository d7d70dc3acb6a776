"""Regenerate the README's plugin screenshots: each medseg widget on the real CT.

Run under a display from the project root (the real scans in ``../shared/data/real``)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_plugin_screenshots.py

Writes ``docs/plugin/<widget>.png`` (the whole napari window with that widget docked) after a
representative action: the liver and spleen clicked and accepted, a smoothing applied, an
export written, the segment list filled, the coronal view with the cursor in mm.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("MEDSEG_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))
LIVER, SPLEEN = (10, 280, 160), (10, 330, 370)


def wait(app, widget, timeout=300.0):
    end = time.time() + timeout
    while widget.runner.busy and time.time() < end:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "plugin"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from medseg.io import read_volume
    from medseg_napari import _layers as L
    from medseg_napari._editor import EditorWidget
    from medseg_napari._export import ExportWidget
    from medseg_napari._interactive import InteractiveWidget
    from medseg_napari._segments import SegmentListWidget
    from medseg_napari._view import ViewWidget

    vol = read_volume(REAL / "ct_dicom_series")
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    img = L.add_layer_data(viewer, L.image_layer_data(vol, name="ct"))
    viewer.dims.set_point(0, L.index_to_world(vol.affine, LIVER)[0])

    def shot(name: str, dock) -> None:
        for _ in range(30):
            app.processEvents()
            time.sleep(0.01)
        Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(out / f"{name}.png")
        viewer.window.remove_dock_widget(dock)
        print(out / f"{name}.png")

    inter = InteractiveWidget(viewer)
    dock = viewer.window.add_dock_widget(inter, name="Click to segment", area="right")
    inter.image_combo.set_layer(img)
    for kji, name in ((LIVER, "liver"), (SPLEEN, "spleen")):
        inter.add_world_point(L.index_to_world(vol.affine, kji))
        wait(app, inter)
        inter.name_edit.setText(name)
        inter.accept()
        wait(app, inter)
    inter.add_world_point(L.index_to_world(vol.affine, (10, 298, 265)))  # the aorta: a third object, not accepted yet
    wait(app, inter)
    shot("click_to_segment", dock)

    objects = inter.objects_layer
    ed = EditorWidget(viewer)
    dock = viewer.window.add_dock_widget(ed, name="Correct boundaries", area="right")
    ed.labels_combo.set_layer(objects)
    ed.index.setValue(1)
    ed.operation.setCurrentText("smooth")
    ed.apply()
    wait(app, ed)
    shot("correct_boundaries", dock)

    seg = SegmentListWidget(viewer)
    dock = viewer.window.add_dock_widget(seg, name="Segments", area="right")
    seg.labels_combo.set_layer(objects)
    shot("segments", dock)

    ex = ExportWidget(viewer)
    dock = viewer.window.add_dock_widget(ex, name="Export", area="right")
    with tempfile.TemporaryDirectory() as tmp:
        ex.path_edit.setText(str(Path(tmp) / "organs.nii.gz"))
        ex.image_combo.set_layer(img)
        ex.export()
        wait(app, ex)
        shot("export", dock)

    view = ViewWidget(viewer)
    dock = viewer.window.add_dock_widget(view, name="View", area="right")
    view.set_view("coronal")
    viewer.cursor.position = tuple(L.index_to_world(vol.affine, LIVER))
    shot("view", dock)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
