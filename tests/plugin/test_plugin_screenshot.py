"""Rendered pixels under Xvfb: the sample CT with an auto-segmentation overlay.

Set ``MEDSEG_WRITE_SCREENSHOT=1`` to also save the whole window to ``docs/screenshot.png``
(the README's screenshot).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medseg_napari import _layers as L

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[2]


def _coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels clearly not grey (a grey CT has R = G = B)."""
    rgb = rgb[..., :3].astype(int)
    return (rgb.max(-1) - rgb.min(-1)) > 30


def test_screenshot_shows_the_overlay_colours(qtbot, make_napari_viewer):
    from medseg.models import DEFAULT_MODEL, load_model

    from medseg_napari._autoseg import AutoSegmentWidget
    from medseg_napari._review import jump_to

    try:
        load_model(DEFAULT_MODEL, device="cpu")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"the bundled model has no trained weights yet ({exc})")
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1200, 800)
    (image,) = viewer.open_sample("medseg", "ct_image")
    w = AutoSegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Auto-segment", area="right")
    w.image_combo.set_layer(image)
    w.device_combo.setCurrentText("cpu")
    w.card_panel.acknowledge.setChecked(True)  # a demonstration model: acknowledged
    assert w.run()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=300_000)
    assert w.runner.last_error is None, w.runner.last_error
    seg = L.segmentation_from_layer(w.result_layer)
    liver = seg.labels.by_name("liver").index
    assert (seg.array == liver).sum() > 1000, "the model found no liver"
    # the axial slice with the most labelled voxels
    k = int(np.argmax((seg.array > 0).sum(axis=(1, 2))))
    jump_to(viewer, seg.affine, (k, seg.array.shape[1] // 2, seg.array.shape[2] // 2))
    viewer.reset_view()
    qtbot.wait(200)
    w.result_layer.visible = False
    bare = viewer.screenshot(canvas_only=True, flash=False)
    w.result_layer.visible = True
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.shape[0] > 200 and shot.shape[1] > 200
    assert shot[..., :3].std() > 10, "blank canvas"
    assert _coloured(bare).mean() < 0.001, "the CT alone should render grey"
    frac = _coloured(shot).mean()
    assert frac > 0.01, f"only {frac:.4f} of the canvas shows overlay colours"
    # the liver's own colour (220, 110, 70) blended over grey: red > green > blue
    rgb = shot[..., :3].astype(int)
    liver_like = (rgb[..., 0] - rgb[..., 2] > 40) & (rgb[..., 0] > rgb[..., 1]) & (rgb[..., 1] > rgb[..., 2])
    assert liver_like.sum() > 200, liver_like.sum()
    if os.environ.get("MEDSEG_WRITE_SCREENSHOT") == "1":
        from PIL import Image

        (ROOT / "docs").mkdir(exist_ok=True)
        Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(ROOT / "docs" / "screenshot.png")
