"""How long does each napari widget action block the GUI thread? (goal: ≤ 100 ms)

A 10 ms QTimer heartbeat runs on the GUI thread while each action of the medseg dock widgets
runs on a 512 × 512 × 300 CT-like volume (the phantom upsampled 4×); the longest gap between
two beats minus the timer interval is the longest the GUI thread was blocked. Worker-thread
time is printed too (wall time of the action).

Run under a display::

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python benchmarks/gui_responsiveness.py

Options: ``--shape Z Y X`` (default 300 512 512), ``--skip-model`` (skip the auto-segment and
uncertainty actions, which need the trained bundled model or use the untrained network).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_volume(shape):
    from medseg.phantom import default_phantom_affine, make_phantom
    from medseg.segmentation import Segmentation
    from medseg.volume import Volume

    f = 4
    small = tuple(max(8, s // f) for s in shape)
    spacing = (1.25, 0.7, 0.7)
    img, seg = make_phantom(shape=small, affine=default_phantom_affine(small, tuple(s * f for s in spacing)), seed=1)
    up = lambda a: np.repeat(np.repeat(np.repeat(a, f, 0), f, 1), f, 2)[: shape[0], : shape[1], : shape[2]]  # noqa: E731
    affine = default_phantom_affine(shape, spacing)
    image = Volume(np.ascontiguousarray(up(img.array)), affine, {"Modality": "CT"})
    labels = Segmentation(Volume(np.ascontiguousarray(up(seg.array)), affine), seg.labels)
    return image, labels


class Heartbeat:
    """Max gap between 10 ms timer ticks on the GUI thread."""

    def __init__(self, interval_ms: int = 10):
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000.0
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last = time.perf_counter()
        self.max_gap = 0.0

    def _tick(self):
        now = time.perf_counter()
        self.max_gap = max(self.max_gap, now - self.last)
        self.last = now

    def start(self):
        self.last = time.perf_counter()
        self.max_gap = 0.0
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        self._tick()
        return max(0.0, self.max_gap - self.interval)


def measure(app, beat, name, action, runner=None, timeout=1800.0):
    """Run ``action`` (which may start a worker) through the event loop; return (block s, wall s)."""
    from qtpy.QtCore import QTimer

    beat.start()
    t0 = time.perf_counter()
    QTimer.singleShot(20, action)  # the action itself runs inside the event loop, as a click would
    deadline = t0 + timeout
    app.processEvents()
    time.sleep(0.03)
    while time.perf_counter() < deadline:
        app.processEvents()
        if runner is None or not runner.busy:
            if time.perf_counter() - t0 > 0.2:
                break
        time.sleep(0.002)
    for _ in range(20):  # let queued results land in layers and repaint
        app.processEvents()
        time.sleep(0.005)
    block = beat.stop()
    wall = time.perf_counter() - t0
    err = getattr(runner, "last_error", None) if runner is not None else None
    flag = "OK " if block <= 0.1 else "SLOW"
    print(f"{flag} {name:<38s} GUI block {block * 1000:7.1f} ms   wall {wall:7.2f} s"
          + (f"   error: {err}" if err else ""), flush=True)
    return block, wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    p.add_argument("--skip-model", action="store_true")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from medseg_napari import _layers as L
    from medseg_napari._autoseg import AutoSegmentWidget
    from medseg_napari._editor import EditorWidget
    from medseg_napari._export import ExportWidget
    from medseg_napari._interactive import InteractiveWidget
    from medseg_napari._review import ConsensusWidget, QAWidget

    t = time.perf_counter()
    image, labels = make_volume(tuple(args.shape))
    print(f"volume {image.shape} {image.array.dtype}, spacing {tuple(round(s, 2) for s in image.spacing)} mm "
          f"(made in {time.perf_counter() - t:.1f} s)", flush=True)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    beat = Heartbeat()
    results = {}

    def add_image():
        results["img"] = L.add_layer_data(viewer, L.image_layer_data(image, name="ct"))

    def add_labels():
        results["lab"] = L.add_layer_data(viewer, L.labels_layer_data(labels, name="reference"))

    results["open image (add layer)"] = measure(app, beat, "open image (add layer)", add_image)
    results["open labels (add layer)"] = measure(app, beat, "open labels (add layer)", add_labels)
    img, lab = results["img"], results["lab"]

    def slider():
        for k in range(0, 300, 30):
            viewer.dims.set_current_step(0, k)
    measure(app, beat, "move slider x10 (re-slice)", slider)

    if not args.skip_model:
        from medseg.models import DEFAULT_MODEL, load_model

        auto = AutoSegmentWidget(viewer)
        auto.image_combo.set_layer(img)
        auto.device_combo.setCurrentText("cpu")
        try:
            load_model(DEFAULT_MODEL, device="cpu")
        except Exception:  # noqa: BLE001 - untrained: same network, same cost
            auto._models[(auto.model_combo.currentText(), "cpu")] = load_model(
                DEFAULT_MODEL, device="cpu", allow_untrained=True)
            print("(bundled model untrained: timing the untrained network)")
        auto.probabilities.setChecked(True)
        measure(app, beat, "auto-segment + probability heatmap", auto.run, auto.runner)

    inter = InteractiveWidget(viewer)
    inter.image_combo.set_layer(img)
    measure(app, beat, "click-to-segment: start session", inter.start, inter.runner)
    liver = np.argwhere(labels.array[150] == 1)
    target = (150, *(int(v) for v in liver[len(liver) // 2]))
    world = L.index_to_world(image.affine, target)
    measure(app, beat, "click-to-segment: positive click", lambda: inter.add_world_point(world), inter.runner)
    inter.name_edit.setText("liver")
    measure(app, beat, "click-to-segment: accept", inter.accept, inter.runner)
    measure(app, beat, "click-to-segment: undo", inter.undo, inter.runner)

    ed = EditorWidget(viewer)
    ed.labels_combo.set_layer(lab)
    ed.index.setValue(1)
    for op, kw in (("grow", {"margin": 3.0}), ("shrink", {"margin": 2.0}), ("smooth", {"sigma": 1.0}),
                   ("fill holes", {}), ("keep largest", {}), ("remove small islands", {}),
                   ("interpolate slices", {}), ("logical", {})):
        ed.operation.setCurrentText(op)
        if "margin" in kw:
            ed.margin.setValue(kw["margin"])
        if "sigma" in kw:
            ed.sigma.setValue(kw["sigma"])
        ed.other.setValue(6)
        measure(app, beat, f"edit: {op}", ed.apply, ed.runner)
    measure(app, beat, "edit: undo", ed.undo, ed.runner)

    ex = ExportWidget(viewer)
    ex.labels_combo.set_layer(lab)
    ex.image_combo.set_layer(img)
    with tempfile.TemporaryDirectory() as tmp:
        ex.path_edit.setText(str(Path(tmp) / "labels.nii.gz"))
        measure(app, beat, "export NIfTI + statistics", ex.export, ex.runner)

    qa = QAWidget(viewer)
    names = [l.name for l in viewer.layers if l._type_string == "labels"]
    qa.reference_combo.set_layer(lab)
    other = next(viewer.layers[n] for n in names if n != "reference" and viewer.layers[n].data.shape == lab.data.shape)
    qa.prediction_combo.set_layer(other)
    measure(app, beat, "QA report (evaluate)", qa.run, qa.runner)
    cons = ConsensusWidget(viewer)
    cons.set_checked(["reference", other.name])
    cons.method.setCurrentText("majority")
    measure(app, beat, "consensus (majority, 2 raters)", cons.run, cons.runner)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
