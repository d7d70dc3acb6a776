"""What keeps the GUI thread free: staged GUI steps of a task, shared-memory transport to the helper,
layers built in the worker thread and output layers updated in place when an action is re-run.

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


def test_a_task_s_arguments_are_freed_by_the_time_the_runner_finishes(make_napari_viewer, qtbot):
    """A task's arguments (a click's session and its arrays) must not outlive it. napari's
    create_worker files every worker in the window's task list for good; superqt keeps a
    worker in its set of running workers until a signal queued after ``finished`` (a race,
    seen once in CI). The runner never lets the worker own them past the call."""
    import gc
    import weakref

    from medseg_napari._worker import TaskRunner

    make_napari_viewer()  # a current viewer: napari's wrapper would register the worker there

    class Payload:
        pass

    r = TaskRunner()
    qtbot.addWidget(r)
    payload = Payload()
    ref = weakref.ref(payload)
    at_finish = []
    r.finished.connect(lambda: (gc.collect(), at_finish.append(ref() is None)))
    assert r.start(lambda p, progress=None, cancel=None: 1, payload, on_done=lambda _: None)
    del payload
    qtbot.waitUntil(lambda: bool(at_finish), timeout=10_000)
    assert at_finish == [True], "the task's argument outlived the task"


def test_a_running_task_is_cancelled_when_its_runner_goes(qtbot):
    import time

    from medseg_napari._worker import TaskRunner

    seen = {"cancelled": False, "done": False}

    def slow(progress=None, cancel=None):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 10:
            if cancel():
                seen["cancelled"] = True
                break
            time.sleep(0.01)
        seen["done"] = True

    r = TaskRunner()
    assert r.start(slow)
    qtbot.wait(100)
    r.deleteLater()
    qtbot.waitUntil(lambda: seen["done"], timeout=5000)
    assert seen["cancelled"]


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


def test_task_runner_prepare_runs_in_the_worker_thread(qtbot):
    import threading

    from medseg_napari._worker import TaskRunner

    r = TaskRunner()
    qtbot.addWidget(r)
    seen: dict = {}

    def prepare(result):
        seen["thread"] = threading.get_ident()
        return ("prepared", result)

    r.start(lambda x, progress=None, cancel=None: x + 1, 1, prepare=prepare, on_done=lambda v: seen.update(value=v))
    qtbot.waitUntil(lambda: not r.busy, timeout=10_000)
    assert r.last_error is None, r.last_error
    assert seen["value"] == ("prepared", 2)
    assert seen["thread"] != threading.main_thread().ident


def test_task_runner_serves_due_timers_between_steps(qtbot):
    """Each GUI step is its own event-loop turn: a timer that fell due during a step fires
    before the next step (a 0 ms single shot, a posted event, would run first)."""
    import time

    from qtpy.QtCore import Qt, QTimer

    from medseg_napari._worker import TaskRunner

    r = TaskRunner()
    qtbot.addWidget(r)
    ticks = [0]
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.__setitem__(0, ticks[0] + 1))
    at_step: list[int] = []

    def steps(_):
        for _ in range(4):
            at_step.append(ticks[0])
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.03:  # a step longer than the timer interval
                pass
            yield

    timer.start()
    assert r.start(lambda progress=None, cancel=None: None, on_done=steps)
    qtbot.waitUntil(lambda: not r.busy, timeout=10_000)
    timer.stop()
    assert len(at_step) == 4
    assert all(b > a for a, b in zip(at_step, at_step[1:])), at_step


def test_a_step_never_follows_a_repaint_in_the_same_loop_pass(qtbot):
    """When other work runs between two steps (a repaint, here a 40 ms posted event), a timer
    that fell due meanwhile fires before the next step, so the two do not make one block."""
    import time

    from qtpy.QtCore import Qt, QTimer

    from medseg_napari._worker import TaskRunner

    r = TaskRunner()
    qtbot.addWidget(r)
    order: list[str] = []
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(lambda: order.append("tick"))

    def busy(seconds: float) -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pass

    def repaint() -> None:
        order.append("repaint")
        busy(0.04)

    def steps(_):
        for i in range(3):
            order.append(f"step {i}")
            QTimer.singleShot(0, repaint)  # posted: runs before the next step's timer
            yield

    timer.start()
    assert r.start(lambda progress=None, cancel=None: None, on_done=steps)
    qtbot.waitUntil(lambda: not r.busy, timeout=10_000)
    timer.stop()
    steps_and_repaints = [e for e in order if e != "tick"]
    assert steps_and_repaints[:6] == ["step 0", "repaint", "step 1", "repaint", "step 2", "repaint"], order
    for i in (1, 2):  # a tick between each repaint and the step after it
        k = order.index(f"step {i}")
        last_repaint = max(j for j in range(k) if order[j] == "repaint")
        assert "tick" in order[last_repaint + 1:k], order


def _grid_seg(seg, shape=None):
    from medseg.segmentation import Segmentation
    from medseg.volume import Volume

    if shape is None:
        return seg
    return Segmentation(Volume(np.zeros(shape, np.uint8), seg.affine), seg.labels)


def test_show_layer_updates_in_place_or_adds(make_napari_viewer, phantom):
    from medseg.labels import Label, LabelTable
    from medseg.segmentation import Segmentation

    _, seg = phantom
    viewer = make_napari_viewer()
    first = L.show_layer(viewer, None, L.labels_layer_data(seg, name="result"))
    assert first in viewer.layers and len(viewer.layers) == 1
    # same name, same grid: new voxels and a new label table in the same layer
    table = LabelTable((Label(1, "tumour", (10, 200, 30)),))
    other = Segmentation(seg.label_map.with_array((seg.array == 2).astype(np.uint8)), table)
    data = L.labels_layer_data(other, name="result")
    assert L.reusable_layer(viewer, first, data)
    assert L.show_layer(viewer, first, data) is first and len(viewer.layers) == 1
    assert np.array_equal(first.data, other.array)
    assert L.labels_from_layer(first).names == ["tumour"]
    assert np.allclose(first.colormap.map(np.array([1]))[0, :3], np.array([10, 200, 30]) / 255.0, atol=0.01)
    # another grid under the same name: the stale layer is replaced
    small = _grid_seg(seg, (8, 16, 16))
    second = L.show_layer(viewer, first, L.labels_layer_data(small, name="result"))
    assert second is not first and first not in viewer.layers and len(viewer.layers) == 1
    assert second.name == "result" and second.data.shape == (8, 16, 16)
    # a renamed result is kept: the next result gets a layer of its own
    second.name = "result v1"
    third = L.show_layer(viewer, second, L.labels_layer_data(small, name="result"))
    assert third is not second and second in viewer.layers and len(viewer.layers) == 2
    # an image heatmap keeps its contrast limits from the layer data
    heat = L.show_layer(viewer, None, L.probability_layer_data(
        seg.label_map.with_array(np.zeros(seg.array.shape, np.float32)), name="heat"))
    again = L.show_layer(viewer, heat, L.probability_layer_data(
        seg.label_map.with_array(np.ones(seg.array.shape, np.float32)), name="heat", contrast_limits=(0.0, 0.5)))
    assert again is heat and tuple(heat.contrast_limits) == (0.0, 0.5) and heat.data.min() == 1


def test_make_layer_in_a_worker_thread_then_add(make_napari_viewer, phantom):
    import threading

    _, seg = phantom
    viewer = make_napari_viewer()
    made: dict = {}
    t = threading.Thread(target=lambda: made.update(layer=L.make_layer(L.labels_layer_data(seg, name="made"))))
    t.start()
    t.join()
    layer = L.add_layer_data(viewer, made["layer"])
    assert layer is made["layer"] and layer in viewer.layers
    assert np.allclose(L.volume_from_layer(layer).affine, seg.affine)
    assert L.labels_from_layer(layer).names == seg.labels.names


def test_consensus_rerun_updates_its_layers(qtbot, make_napari_viewer, phantom):
    from medseg.segmentation import Segmentation

    from medseg_napari._review import ConsensusWidget

    _, seg = phantom
    viewer = make_napari_viewer()
    r1 = L.add_layer_data(viewer, L.labels_layer_data(seg, name="r1"))
    arr = seg.array.copy()
    arr[seg.array == 2] = 0
    L.add_layer_data(viewer, L.labels_layer_data(Segmentation(seg.label_map.with_array(arr), seg.labels), name="r2"))
    w = ConsensusWidget(viewer)
    w.set_checked(["r1", "r2"])
    w.method.setCurrentText("majority")
    assert w.run()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=180_000)
    assert w.runner.last_error is None, w.runner.last_error
    cons, dis, n = w.consensus_layer, w.disagreement_layer, len(viewer.layers)
    assert dis.data[seg.array == 2].max() > 0
    r1.data = arr  # the raters now agree
    assert w.run()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=180_000)
    assert w.runner.last_error is None, w.runner.last_error
    assert w.consensus_layer is cons and w.disagreement_layer is dis and len(viewer.layers) == n
    assert not dis.data.any() and np.array_equal(cons.data, arr)


def test_autoseg_rerun_updates_its_layers(qtbot, make_napari_viewer, phantom):
    from medseg.models import load_model

    from medseg_napari._autoseg import AutoSegmentWidget

    image, _ = phantom
    viewer = make_napari_viewer()
    img = L.add_layer_data(viewer, L.image_layer_data(image.with_array(image.array, Modality="CT"), name="ct"))
    w = AutoSegmentWidget(viewer)
    w.image_combo.set_layer(img)
    w.device_combo.setCurrentText("cpu")
    w.probabilities.setChecked(True)
    name = w.model_combo.currentText()
    try:
        load_model(name, device="cpu")
    except Exception:
        w._models[(name, "cpu")] = load_model(name, device="cpu", allow_untrained=True)

    def run():
        assert w.run()
        qtbot.waitUntil(lambda: not w.runner.busy, timeout=180_000)
        assert w.runner.last_error is None, w.runner.last_error

    run()
    result, heat, n = w.result_layer, w.heatmap_layer, len(viewer.layers)
    result.data = np.zeros_like(result.data)  # e.g. a user edit, replaced by the re-run
    run()
    assert w.result_layer is result and w.heatmap_layer is heat and len(viewer.layers) == n
    assert result.data.any() and result.name == "ct segmentation"
    result.name = "ct segmentation (kept)"  # renamed: kept, the next run adds a new layer
    run()
    assert w.result_layer is not result and result in viewer.layers
    assert w.result_layer.name == "ct segmentation" and len(viewer.layers) == n + 1


def test_interactive_restart_reuses_the_session_layers(qtbot, make_napari_viewer, phantom):
    from medseg_napari._interactive import InteractiveWidget

    image, seg = phantom
    viewer = make_napari_viewer()
    img = L.add_layer_data(viewer, L.image_layer_data(image.with_array(image.array, Modality="CT"), name="ct"))
    w = InteractiveWidget(viewer)
    w.image_combo.set_layer(img)

    def wait():
        qtbot.waitUntil(lambda: not w.runner.busy, timeout=120_000)
        assert w.runner.last_error is None, w.runner.last_error

    assert w.start()
    wait()
    layers, n = (w.objects_layer, w.preview_layer, w.points_layer), len(viewer.layers)
    idx = np.argwhere(seg.array == 1)
    w.add_world_point(L.index_to_world(image.affine, tuple(int(v) for v in idx[len(idx) // 2])))
    wait()
    w.name_edit.setText("liver")
    assert w.accept()
    wait()
    assert w.objects_layer.data.any() and len(w.points_layer.data) == 0
    w.add_world_point(L.index_to_world(image.affine, tuple(int(v) for v in idx[0])))
    wait()
    assert w.preview_layer.data.any() and len(w.points_layer.data) == 1
    assert w.start()  # a new session on the same image: same layers, emptied
    wait()
    assert (w.objects_layer, w.preview_layer, w.points_layer) == layers and len(viewer.layers) == n
    assert not w.objects_layer.data.any() and not w.preview_layer.data.any() and len(w.points_layer.data) == 0
    assert len(w.session.prompts) == 0 and L.labels_from_layer(w.objects_layer).names == []


def _drain(steps):
    """Run a generator of GUI steps to its end: (return value, number of yields)."""
    n = 0
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value, n
        n += 1


def _stages(viewer, steps, layer_name):
    """Run GUI steps to the end; the distinct states of the new layer seen after each step."""
    canvas = viewer.window._qt_viewer.canvas
    controls = viewer.window._qt_viewer.controls
    window = viewer.window._qt_window
    seen, n, result, done = [], 0, None, False
    while not done:
        try:
            next(steps)
            n += 1
        except StopIteration as stop:
            result, done = stop.value, True
        lay = viewer.layers[layer_name] if layer_name in viewer.layers else None
        state = (viewer.dims.ndim == 3, lay is not None, lay in canvas.layer_to_visual if lay else False,
                 lay in controls.widgets if lay else False, bool(lay and lay.visible),
                 viewer.layers.selection.active is lay if lay else False)
        if not seen or seen[-1][0] != state:
            seen.append((state, window.updatesEnabled() and canvas.native.updatesEnabled()))
    assert window.updatesEnabled() and canvas.native.updatesEnabled()  # painting is never left off
    return result, n, seen


def test_add_layer_steps_adds_in_stages_and_ends_as_add_layer(make_napari_viewer, phantom, monkeypatch):
    monkeypatch.setattr(L, "_DASH_PATTERNS_DONE", True)  # vispy's dash patterns: own test below
    image, seg = phantom
    viewer = make_napari_viewer()
    canvas = viewer.window._qt_viewer.canvas
    controls = viewer.window._qt_viewer.controls
    img, n, seen = _stages(viewer, L.add_layer_steps(viewer, L.image_layer_data(image, name="ct")), "ct")
    # (3D viewer, appended, vispy visual, controls, visible, active), one stage per turn
    assert [st for st, _ in seen] == [
        (True, False, False, False, False, False),  # an empty viewer gets its dimensions first
        (True, True, False, False, False, False),  # the layer, hidden, without visual and controls
        (True, True, True, False, False, False),  # napari's vispy visual
        (True, True, True, True, False, False),  # napari's layer controls
        (True, True, True, True, True, False),  # shown
        (True, True, True, True, True, True),  # made active, as napari's own add does
    ]
    # painting paused while the layer is appended, its visual and controls built, its first
    # draw prepared and it is made active, each repainted in the next turn (the dimensions'
    # model repaints little: left to paint in its own turn; the dimension sliders are built
    # painted apart in a turn between, see the test below)
    assert [painting for _, painting in seen] == [True, False, False, False, False, False]
    assert img is viewer.layers["ct"] and img.visible and viewer.layers.selection.active is img
    assert canvas.layer_to_visual[img].node.visible

    lab = L.make_layer(L.labels_layer_data(seg, name="reference"))
    shown = [k for k, ov in lab._overlays.items() if ov.visible]
    assert shown  # napari's labels overlays (polygon, brush stroke) are visible by default
    layer, n, seen = _stages(viewer, L.add_layer_steps(viewer, lab, select=False), "reference")
    assert [st[1:5] for st, _ in seen] == [(True, False, False, False), (True, True, False, False),
                                           (True, True, True, False), (True, True, True, True)]
    assert layer is lab and lab.mode == "pan_zoom"
    assert lab.visible and lab in canvas.layer_to_visual and lab in controls.widgets
    assert viewer.layers.selection.active is img  # select=False: the active layer is left alone
    # the overlays of the paint and polygon modes wait for their mode (pan-zoom now)
    assert not any(lab._overlays[k].visible for k in shown)
    built = canvas._layer_overlay_to_visual.get(lab, {})
    assert not any(lab._overlays[k] in built for k in shown)
    for mode, key in (("paint", "brush_stroke"), ("polygon", "polygon")):
        lab.mode = mode  # the mode's overlay is switched on and napari builds its visual
        assert lab._overlays[key].visible and lab._overlays[key].enabled
        assert lab._overlays[key] in canvas._layer_overlay_to_visual.get(lab, {})
    assert all(lab._overlays[k].visible for k in shown)  # as after napari's own add


def test_a_staged_layer_s_first_draw_is_prepared_before_its_paint_and_renders_as_napari_s(
        make_napari_viewer, phantom, qtbot):
    """The shader code of the image, labels and points visuals is built in the step that shows
    them, painting paused; the canvas then renders exactly what napari's own add renders."""
    image, seg = phantom
    viewer = make_napari_viewer(show=True)
    canvas = viewer.window._qt_viewer.canvas
    mid = image.shape[0] // 2
    viewer.dims.ndim = 3
    viewer.dims.set_point(0, float(L.index_to_world(image.affine, (mid, 0, 0))[0]))
    pts = np.array([L.index_to_world(image.affine, (mid, 20, 20)), L.index_to_world(image.affine, (mid, 40, 30))])
    made = (lambda: L.image_layer_data(image, name="ct"), lambda: L.labels_layer_data(seg, name="labels"),
            lambda: (pts, {"name": "prompts", "size": 12, "face_color": "lime"}, "points"))

    def programs(layer):  # the drawn leaf visuals' shader programs
        stack, out = [canvas.layer_to_visual[layer].node], []
        while stack:
            v = stack.pop()
            if v.visible and hasattr(v, "_subvisuals"):
                stack.extend(v._subvisuals)
            elif v.visible and hasattr(v, "_program"):
                out.append(v._program)
        return out

    for make in made:
        layer = L.make_layer(make())
        steps = L.add_layer_steps(viewer, layer)
        next(steps)  # appended hidden
        while not layer.visible:
            next(steps)
        assert not canvas.native.updatesEnabled()  # shown with painting paused: nothing drawn yet
        built = [p for p in programs(layer) if not p._need_build]
        assert built, f"{layer.name}: no shader code built before the first paint"
        _drain(steps)
    scene = getattr(viewer, "scene", None)  # napari >= 0.9 (viewer.camera before)
    camera = scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
    view = (tuple(camera.center), camera.zoom, tuple(viewer.dims.point))
    qtbot.wait(100)
    staged = viewer.screenshot(canvas_only=True, flash=False)
    assert len(np.unique(staged.reshape(-1, staged.shape[-1]), axis=0)) > 10  # not a blank canvas
    for name in ("prompts", "labels", "ct"):
        viewer.layers.remove(name)
    for make in made:
        viewer.add_layer(L.make_layer(make()))  # napari's own add, drawn the usual way
    camera.center, camera.zoom = view[:2]  # the same view for both pictures
    for axis, value in enumerate(view[2]):
        viewer.dims.set_point(axis, value)
    qtbot.wait(100)
    plain = viewer.screenshot(canvas_only=True, flash=False)
    assert staged.shape == plain.shape
    differ = np.any(staged != plain, axis=-1)
    assert not differ.any(), f"{int(differ.sum())} pixels differ from napari's own add"


@pytest.mark.parametrize("abandon", [False, True])
def test_an_empty_viewer_gets_its_dimensions_then_its_sliders(make_napari_viewer, phantom, abandon):
    image, _ = phantom
    reference = make_napari_viewer()
    reference.add_layer(L.make_layer(L.image_layer_data(image, name="ct")))  # napari's own add
    viewer = make_napari_viewer()
    qt_dims = viewer.window._qt_viewer.dims
    before = list(qt_dims.slider_widgets)
    steps = L.add_layer_steps(viewer, L.image_layer_data(image, name="ct"))
    next(steps)
    assert viewer.dims.ndim == 3
    assert qt_dims.slider_widgets == before  # napari's sliders are rebuilt in a later turn
    if abandon:
        steps.close()  # a later GUI step of the task failed: the sliders are rebuilt all the same
    else:
        _drain(steps)
    assert viewer.window._qt_window.updatesEnabled()
    ref = reference.window._qt_viewer.dims
    assert len(qt_dims.slider_widgets) == len(ref.slider_widgets) == 3
    assert qt_dims._displayed_sliders == ref._displayed_sliders == [True, False, False]
    # the sliders show the viewer's model (abandoned before the append: a 3D viewer without layers)
    assert [w.slider.maximum() for w in qt_dims.slider_widgets] == [n - 1 for n in viewer.dims.nsteps]
    if not abandon:
        assert [w.slider.maximum() for w in qt_dims.slider_widgets] == [w.slider.maximum() for w in ref.slider_widgets]
        assert qt_dims.slider_widgets[0].slider.maximum() == image.shape[0] - 1
        viewer.dims.set_current_step(0, 5)  # napari's reactions are connected again
        assert qt_dims.slider_widgets[0].slider.value() == 5
    viewer.add_layer(L.make_layer(L.image_layer_data(image, name="again")))
    assert qt_dims.slider_widgets[0].slider.maximum() == image.shape[0] - 1  # connected again


@pytest.mark.parametrize("meanwhile", ["remove", "select", "abandon"])
@pytest.mark.parametrize("after", ["append", "vispy layer made"])
def test_held_back_insert_work_catches_up(make_napari_viewer, phantom, monkeypatch, meanwhile, after):
    """The held-back visual and controls run before napari removes or selects the layer; the
    vispy layer made a turn ahead is the one napari maps, and napari never makes a second."""
    import napari._qt.qt_viewer as qt_viewer_module

    made: list = []
    napari_make = qt_viewer_module.create_vispy_layer
    monkeypatch.setattr(qt_viewer_module, "create_vispy_layer",
                        lambda layer, **kw: made.append((layer, napari_make(layer, **kw))) or made[-1][1])
    _, seg = phantom
    viewer = make_napari_viewer()
    canvas = viewer.window._qt_viewer.canvas
    controls = viewer.window._qt_viewer.controls
    viewer.add_layer(L.make_layer(L.labels_layer_data(seg, name="first")))
    lab = L.make_layer(L.labels_layer_data(seg, name="second"))
    steps = L.add_layer_steps(viewer, lab)
    next(steps)
    assert lab not in canvas.layer_to_visual and lab not in controls.widgets
    if after == "vispy layer made":
        next(steps)  # the append's repaint
        next(steps)  # napari's vispy layer, not in the scene yet
        assert [m[0] for m in made if m[0] is lab] == [lab]
        assert lab not in canvas.layer_to_visual and lab not in controls.widgets
    if meanwhile == "remove":
        viewer.layers.remove(lab)  # napari's removal needs the visual and the controls
        assert lab not in canvas.layer_to_visual and lab not in controls.widgets
        assert _drain(steps)[0] is lab and lab not in viewer.layers
        assert viewer.layers.selection.active is not lab
    elif meanwhile == "select":
        viewer.layers.selection.active = lab  # napari shows the layer's controls
        assert controls.currentWidget() is controls.widgets[lab]
        assert lab in canvas.layer_to_visual
        _drain(steps)
    else:
        steps.close()  # a later GUI step of the task failed
        assert viewer.window._qt_window.updatesEnabled()
    if meanwhile != "remove":
        assert lab in canvas.layer_to_visual and lab in controls.widgets and lab.visible
        assert canvas.layer_to_visual[lab] is [v for layer, v in made if layer is lab][0]
    assert len([m for m in made if m[0] is lab]) == 1  # napari made no second vispy layer
    # napari's events are back to normal: a later plain add builds everything at once
    again = L.make_layer(L.labels_layer_data(seg, name="third"))
    viewer.add_layer(again)
    assert again in canvas.layer_to_visual and again in controls.widgets


def test_points_parts_are_built_one_per_step_and_text_waits_for_text(make_napari_viewer, phantom):
    _, seg = phantom
    viewer = make_napari_viewer()
    viewer.add_layer(L.make_layer(L.labels_layer_data(seg, name="labels")))
    pts = L.make_layer((np.array([[4.0, 8.0, 8.0]]), {"name": "prompts", "size": 5}, "points"))
    steps = L.add_layer_steps(viewer, pts)
    node = None
    seen = []
    while True:
        try:
            next(steps)
        except StopIteration:
            break
        node = viewer.window._qt_viewer.canvas.layer_to_visual.get(pts, None)
        if node is not None and pts.visible:
            seen.append(sum(v.visible for v in node.node._subvisuals))
    node = node.node
    assert seen[0] == 1 and seen[-1] == 3 and seen == sorted(seen)  # one more part per step
    assert node.points_markers.visible and not node.text.visible  # no text: no text shader
    pts.features = {"name": ["a"]}
    pts.text = "name"  # the layer gets text: napari's text visual is shown again
    assert node.text.visible


def test_dash_pattern_steps_fill_vispys_cache_once(monkeypatch):
    from vispy.visuals.line import dash_atlas

    monkeypatch.setattr(L, "_DASH_PATTERNS_DONE", False)
    dash_atlas._make_pattern.cache_clear()
    n = sum(1 for _ in L._dash_pattern_steps())
    assert n == dash_atlas._make_pattern.cache_info().misses >= 10  # one pattern per step
    dash_atlas.DashAtlas()  # what the first agg line of the process makes: all cached now
    info = dash_atlas._make_pattern.cache_info()
    assert info.misses == n and info.hits == n
    assert sum(1 for _ in L._dash_pattern_steps()) == 0  # once per process


def test_add_layer_steps_abandoned_leaves_the_layer_shown(make_napari_viewer, phantom):
    _, seg = phantom
    viewer = make_napari_viewer()
    viewer.add_layer(L.make_layer(L.labels_layer_data(seg, name="first")))
    lab = L.make_layer(L.labels_layer_data(seg, name="second"))
    shown = [k for k, ov in lab._overlays.items() if ov.visible]
    steps = L.add_layer_steps(viewer, lab)
    next(steps)
    steps.close()  # e.g. a later GUI step of the task failed
    assert lab in viewer.layers and lab.visible and all(lab._overlays[k].visible for k in shown)
    assert viewer.layers._activate_on_insert  # napari's own setting restored


def test_show_layer_steps_updates_in_place_in_one_step_painted_apart(make_napari_viewer, phantom):
    _, seg = phantom
    viewer = make_napari_viewer()
    data = L.labels_layer_data(seg, name="result")
    first, n = _drain(L.show_layer_steps(viewer, None, data))
    assert first in viewer.layers and n >= 1
    canvas = viewer.window._qt_viewer.canvas.native
    steps = L.show_layer_steps(viewer, first, L.labels_layer_data(seg, name="result"))
    next(steps)  # updated in place, the canvas's repaint held for the next turn
    assert not canvas.updatesEnabled() and viewer.window._qt_window.updatesEnabled()
    again, n = _drain(steps)
    assert again is first and n == 0 and len(viewer.layers) == 1 and canvas.updatesEnabled()
    small = _grid_seg(seg, (8, 16, 16))
    other, n = _drain(L.show_layer_steps(viewer, first, L.labels_layer_data(small, name="result")))
    assert other is not first and first not in viewer.layers and other.visible and len(viewer.layers) == 1


def test_text_glyphs_are_rendered_ahead_only_for_a_layer_with_text(make_napari_viewer, phantom):
    _, seg = phantom
    viewer = make_napari_viewer()
    viewer.add_layer(L.make_layer(L.labels_layer_data(seg, name="labels")))
    plain = L.make_layer((np.array([[4.0, 8.0, 8.0]]), {"name": "plain", "size": 5}, "points"))
    _, n_plain = _drain(L.add_layer_steps(viewer, plain))
    texted = L.make_layer((np.array([[4.0, 8.0, 8.0]]), {
        "name": "texted", "size": 5, "features": {"name": ["a"]}, "text": "name"}, "points"))
    _, n_text = _drain(L.add_layer_steps(viewer, texted))
    glyphs = viewer.window._qt_viewer.canvas.layer_to_visual[texted].node.text._font._glyphs
    assert all(c in glyphs for c in L._TEXT_ALIGNMENT_GLYPHS)
    # the text part is drawn and its glyphs come one per step; the plain layer's text part waits
    assert n_text >= n_plain + 1 + len(set(L._TEXT_ALIGNMENT_GLYPHS))
    assert viewer.window._qt_viewer.canvas.layer_to_visual[texted].node.text.visible


def test_a_click_s_point_is_shown_at_once_and_painted_a_turn_later(make_napari_viewer, phantom, qtbot):
    from medseg_napari._interactive import InteractiveWidget

    image, seg = phantom
    viewer = make_napari_viewer()
    img = L.add_layer_data(viewer, L.image_layer_data(image, name="ct"))
    canvas = viewer.window._qt_viewer.canvas.native
    w = InteractiveWidget(viewer)
    qtbot.addWidget(w)
    w.image_combo.set_layer(img)
    assert w.start()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=60_000)
    idx = np.argwhere(seg.array == 1)
    target = tuple(int(v) for v in idx[len(idx) // 2])
    w.add_world_point(L.index_to_world(image.affine, target))
    assert len(w.points_layer.data) == 1  # in the layer at once
    assert not canvas.updatesEnabled()  # its repaint waits for a later turn
    qtbot.waitUntil(canvas.updatesEnabled, timeout=2_000)
    w.add_world_scribble([L.index_to_world(image.affine, (target[0], target[1], target[2] + d)) for d in range(3)])
    assert len(w.points_layer.data) == 4 and not canvas.updatesEnabled()
    qtbot.waitUntil(lambda: not w.runner.busy and canvas.updatesEnabled(), timeout=60_000)
    assert w.runner.last_error is None, w.runner.last_error
