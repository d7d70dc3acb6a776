"""What keeps the GUI thread free: staged GUI steps of a task, shared-memory transport to the helper.

No timings here (those are in benchmarks/gui_responsiveness.py); these tests check the behaviour
that the figures rely on.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from medseg_napari import _layers as L

pytestmark = pytest.mark.gui


def _shm_blocks() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")} if os.path.isdir("/dev/shm") else set()


def test_shared_pickle_round_trip_copies_and_unlinks():
    from medseg_napari._process import SHARE_MIN_BYTES, dumps_shared, loads_shared, release

    big = np.arange(SHARE_MIN_BYTES // 4 * 3, dtype=np.int32).reshape(3, -1)
    small = np.arange(10)
    before = _shm_blocks()
    data, blocks = dumps_shared({"a": big, "again": big, "small": small, "text": "x"})
    assert len(blocks) == 1  # the large array once (pickle memo), the small one inline
    assert len(data) < 10_000
    view, held = loads_shared(data, copy=False)
    assert view["a"] is view["again"] and np.array_equal(view["a"], big)
    del view
    release(held, unlink=False)
    out, held = loads_shared(data, copy=True)
    assert held == [] and out["a"].flags.owndata and np.array_equal(out["a"], big)
    assert np.array_equal(out["small"], small) and out["text"] == "x"
    with pytest.raises(FileNotFoundError):  # copying out unlinked the block
        loads_shared(data, copy=True)
    release(blocks, unlink=True)
    assert _shm_blocks() == before


def test_statistics_in_the_helper_process_match_the_thread(phantom):
    from medseg_napari._export import _stats
    from medseg_napari._process import SHARE_MIN_BYTES, run_in_process
    from medseg_napari._writer import portable_state

    from medseg.segmentation import Segmentation
    from medseg.volume import Volume

    image, seg = phantom
    # 8x the slices: over SHARE_MIN_BYTES, so both arrays go through shared memory
    big_seg = Segmentation(Volume(np.repeat(seg.array, 8, axis=0), seg.affine), seg.labels)
    big_image = Volume(np.repeat(image.array, 8, axis=0), image.affine, dict(image.meta))
    big, meta, _ = L.labels_layer_data(big_seg, name="ref")
    state = portable_state(meta)
    assert min(big.nbytes, big_image.array.nbytes) >= SHARE_MIN_BYTES
    before = _shm_blocks()
    in_thread = _stats(big, state, big_image)
    in_process = run_in_process(_stats, big, state, big_image)
    assert in_process == in_thread
    assert sum(r["voxels"] for r in in_process) == int(np.count_nonzero(big))
    assert _shm_blocks() == before  # inputs and results unlinked


def test_task_runner_runs_generator_steps_in_separate_event_loop_turns(qtbot):
    from qtpy.QtCore import QTimer

    from medseg_napari._worker import TaskRunner

    r = TaskRunner()
    qtbot.addWidget(r)
    seen: list = []
    ticks = [0]
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.__setitem__(0, ticks[0] + 1))
    timer.start(0)

    def steps(result):
        seen.append(("step 1", result, ticks[0]))
        yield
        seen.append(("step 2", result, ticks[0]))
        yield
        seen.append(("step 3", result, ticks[0]))

    finished = []
    r.finished.connect(lambda: finished.append(len(seen)))
    assert r.start(lambda x, progress=None, cancel=None: x * 2, 21, on_done=steps)
    assert not r.start(lambda progress=None, cancel=None: None)  # busy
    qtbot.waitUntil(lambda: not r.busy, timeout=10_000)
    timer.stop()
    assert [s[:2] for s in seen] == [("step 1", 42), ("step 2", 42), ("step 3", 42)]
    assert seen[0][2] < seen[1][2] < seen[2][2]  # the event loop ran (a timer fired) between steps
    assert finished == [3]  # finished only after the last step
    assert r.last_error is None


def test_task_runner_reports_an_error_in_a_step(qtbot):
    from medseg.errors import InputError

    from medseg_napari._worker import TaskRunner

    r = TaskRunner()
    qtbot.addWidget(r)

    def steps(_):
        yield
        raise InputError("bad step")

    assert r.start(lambda progress=None, cancel=None: 1, label="job", on_done=steps)
    qtbot.waitUntil(lambda: not r.busy, timeout=10_000)
    assert isinstance(r.last_error, InputError)
    assert "bad step" in r.status.text()


def test_qa_rerun_reuses_the_error_layer(qtbot, make_napari_viewer, phantom):
    from medseg.segmentation import Segmentation

    from medseg_napari._review import QAWidget

    _, seg = phantom
    viewer = make_napari_viewer()
    ref = L.add_layer_data(viewer, L.labels_layer_data(seg, name="gold"))
    pred_arr = seg.array.copy()
    pred_arr[seg.array == 2] = 0
    pred = L.add_layer_data(viewer, L.labels_layer_data(
        Segmentation(seg.label_map.with_array(pred_arr), seg.labels), name="pred"))
    w = QAWidget(viewer)
    w.reference_combo.set_layer(ref)
    w.prediction_combo.set_layer(pred)
    assert w.run()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=180_000)
    assert w.runner.last_error is None, w.runner.last_error
    first = w.error_layer
    assert np.array_equal(first.data == 1, seg.array == 2)
    n_layers = len(viewer.layers)
    pred.data = seg.array.copy()  # now a perfect prediction
    assert w.run()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=180_000)
    assert w.runner.last_error is None, w.runner.last_error
    assert w.error_layer is first and len(viewer.layers) == n_layers
    assert not first.data.any()
