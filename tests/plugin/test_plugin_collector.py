"""The garbage-collector policy of the plugin (``medseg_napari._collector``).

Full collections freeze what survived them, so that the next full collection (which stops the
GUI thread) walks only objects made since; a layer removed from the viewer must still be freed,
and closing the last medseg widget restores Python's defaults. No timings here (see
benchmarks/gui_responsiveness.py).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from medseg_napari import _collector

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    from medseg_napari._review import ConsensusWidget

    viewer = make_napari_viewer()
    w = ConsensusWidget(viewer)
    yield viewer, w
    gc.unfreeze()  # leave no frozen objects to the tests that follow


def test_a_full_collection_freezes_its_survivors(widget):
    viewer, _w = widget
    assert _collector.is_active()
    gc.collect()
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # napari, Qt and the viewer
    # the next full collection walks only the objects made since
    assert len(gc.get_objects()) < frozen // 20


def test_a_removed_layer_is_freed_although_it_was_frozen(widget):
    viewer, _w = widget
    layer = viewer.add_labels(np.zeros((4, 64, 64), np.uint8), name="to remove")
    ref = weakref.ref(layer)
    gc.collect()
    assert gc.get_freeze_count() > 0
    viewer.layers.remove(layer)
    del layer
    gc.collect()
    assert ref() is None, "a layer removed from the viewer stayed in the frozen generation"


def test_closing_the_last_widget_restores_the_defaults(widget, qtbot):
    viewer, w = widget
    gc.collect()
    assert gc.get_freeze_count() > 0
    w.deleteLater()
    qtbot.waitUntil(lambda: not _collector.is_active(), timeout=2000)
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gc.get_freeze_count() == 0


def test_the_switch_leaves_the_collector_alone(make_napari_viewer, monkeypatch):
    from medseg_napari._export import ExportWidget

    assert not _collector.is_active()  # no medseg widget left from another test
    monkeypatch.setenv(_collector.ENV_SWITCH, "0")
    viewer = make_napari_viewer()
    ExportWidget(viewer)
    assert not _collector.is_active()
    gc.collect()
    assert gc.get_freeze_count() == 0


def test_a_task_ends_with_a_short_full_collection(widget, qtbot):
    from medseg_napari._worker import TaskRunner

    viewer, _w = widget
    gc.collect()
    frozen = gc.get_freeze_count()
    made = [[i] for i in range(20_000)]  # objects (tracked by the collector) an action made and keeps
    r = TaskRunner()
    qtbot.addWidget(r)
    assert r.start(lambda progress=None, cancel=None: 1)
    qtbot.waitUntil(lambda: not r.busy, timeout=10_000)


    def made_is_frozen() -> bool:  # tracked, but in none of the collector's generations
        young = {id(o) for o in gc.get_objects()}
        return all(gc.is_tracked(m) and id(m) not in young for m in made)

    qtbot.waitUntil(made_is_frozen, timeout=2000)
    assert gc.get_freeze_count() > frozen


def test_no_collection_of_everything_after_a_removal(widget):
    viewer, _w = widget
    layer = viewer.add_labels(np.zeros((4, 16, 16), np.uint8))
    gc.collect()
    assert _collector.collect_young()  # only the young objects: allowed
    viewer.layers.remove(layer)
    assert gc.get_freeze_count() == 0
    assert not _collector.collect_young()  # it would walk every object: left to Python
