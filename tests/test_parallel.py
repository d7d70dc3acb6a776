"""medseg.parallel: the one process pool (batch workers and the plugin's helper process)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from medseg.core.errors import CancelledError, ModelError
from medseg.parallel import (
    ProcessPool,
    WorkerStartError,
    run_in_process,
    shutdown_helper,
    worker_cancelled,
    worker_progress,
)


# -- task functions (module level: they are pickled to the workers) ------------------------------
def _record(marks: str, key: str, seconds: float = 0.0) -> int:
    """Append ``key`` to a file (one line per execution), report progress, return the pid."""
    worker_progress(key, "started")
    time.sleep(seconds)
    with open(Path(marks) / f"{key}.txt", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    worker_progress(key, "finished")
    return os.getpid()


def _die_midway(marks: str, key: str) -> None:
    worker_progress(key, "started")
    (Path(marks) / "crash-started").write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)  # what a segfault or the OOM killer does to a worker


def _ignore_cancel(seconds: float) -> int:
    time.sleep(seconds)  # never looks at the cancel flag
    return os.getpid()


def _cooperative(seconds: float) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if worker_cancelled():
            raise CancelledError("stopped at the cancel request")
        time.sleep(0.01)
    return os.getpid()


def _pid() -> int:
    return os.getpid()


_STATE: dict = {}


def _count_setup(marks: str) -> None:
    with open(Path(marks) / f"setup-{os.getpid()}.txt", "a") as fh:
        fh.write("x\n")
    _STATE["setup"] = _STATE.get("setup", 0) + 1


def _setups_here() -> int:
    return _STATE.get("setup", 0)


def _bad_setup() -> None:
    raise ModelError("no model 'nothing' here")


def _double(arr, *, progress=None, cancel=None):
    progress(1, 2, "halfway")
    return arr * 2


def _sleep_long(*, progress=None, cancel=None):
    time.sleep(120)  # ignores cancel; returns normally (no CancelledError) unless it is killed


def _pid_kw(*, progress=None, cancel=None):
    return os.getpid()


def _events(pool: ProcessPool) -> list:
    return [ev for ev in pool.events(poll_s=0.05) if ev is not None]


# -- tests --------------------------------------------------------------------------------------------
def test_a_worker_crash_costs_only_its_task_and_others_run_exactly_once(tmp_path):
    marks = str(tmp_path)
    pool = ProcessPool(2)
    try:
        keys = [f"t{i}" for i in range(8)]
        for k in keys[:3]:
            pool.submit(k, _record, marks, k, 0.2)
        pool.submit("crash", _die_midway, marks, "crash", priority=10)  # runs first
        for k in keys[3:]:
            pool.submit(k, _record, marks, k, 0.2)
        pool.close_inputs()
        events = _events(pool)
    finally:
        pool.shutdown(terminate=True)
    ends = [(ev.kind, ev.key) for ev in events if ev.kind != "progress"]
    assert sorted(ends) == sorted([("crashed", "crash")] + [("done", k) for k in keys])
    crashed = next(ev for ev in events if ev.kind == "crashed")
    dead_pid = int((tmp_path / "crash-started").read_text())
    assert f"worker process {dead_pid} killed by signal 9" in crashed.error
    for k in keys:  # every other task ran exactly once
        assert len((tmp_path / f"{k}.txt").read_text().splitlines()) == 1
    pids = {ev.result for ev in events if ev.kind == "done"}
    assert dead_pid not in pids and len(pids) >= 2  # a new worker took the dead one's place
    progress = [(ev.key, ev.progress[1]) for ev in events if ev.kind == "progress"]
    for k in keys:  # progress arrives in order, and before the task's result
        assert [m for key, m in progress if key == k] == ["started", "finished"]
    order = [(ev.kind, ev.key, ev.progress and ev.progress[1]) for ev in events]
    for k in keys:
        assert order.index(("progress", k, "finished")) < order.index(("done", k, None))


def test_setup_runs_once_per_worker(tmp_path):
    pool = ProcessPool(2, setup=_count_setup, setup_args=(str(tmp_path),))
    try:
        for i in range(6):
            pool.submit(i, _setups_here)
        pool.close_inputs()
        events = _events(pool)
    finally:
        pool.shutdown()
    assert sorted(ev.key for ev in events if ev.kind == "done") == list(range(6))
    assert {ev.result for ev in events if ev.kind == "done"} == {1}  # built once, kept for every task
    files = list(tmp_path.glob("setup-*.txt"))
    assert 1 <= len(files) <= 2 and all(f.read_text() == "x\n" for f in files)


def test_a_setup_error_is_raised_by_events():
    pool = ProcessPool(2, setup=_bad_setup)
    pool.submit("a", _pid)
    pool.close_inputs()
    try:
        with pytest.raises(ModelError, match="no model 'nothing'"):
            _events(pool)
    finally:
        pool.shutdown()


def test_no_worker_starting_is_a_named_error(tmp_path):
    pool = ProcessPool(1, setup=os._exit, setup_args=(3,))  # each worker dies during its setup
    pool.submit("a", _pid)
    pool.close_inputs()
    try:
        with pytest.raises(WorkerStartError, match="died before their setup ended"):
            _events(pool)
    finally:
        pool.shutdown()


def test_cancel_kills_a_task_that_ignores_it_and_the_pool_stays_usable():
    pool = ProcessPool(1)
    try:
        first = pool.call(_pid)
        t0 = time.monotonic()
        with pytest.raises(CancelledError):  # without the kill it would return its pid after 120 s
            pool.call(_ignore_cancel, 120.0, cancel=lambda: time.monotonic() - t0 > 0.3, grace_s=0.3)
        assert _zombie_or_gone(first)  # the worker was killed
        second = pool.call(_pid)
        assert second != first
        assert pool.call(sum, [1, 2, 3]) == 6
    finally:
        pool.shutdown()



def test_an_idle_worker_that_died_is_replaced():
    """A worker killed while idle (no task to fail) costs no task: the next task goes to a new worker,
    whether the pool sees the death before handing the task out or only when the task fails."""
    pool = ProcessPool(1)
    try:
        pid = pool.call(_pid)
        for wait in (False, True, False, True, False):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while wait and not _zombie_or_gone(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            new = pool.call(_pid)  # not WorkerCrashedError: the task never reached the dead worker
            assert new != pid
            pid = new
        assert pool.call(_pid) == pid
    finally:
        pool.shutdown()
    assert not pool.running
    with pytest.raises(RuntimeError, match="has ended"):
        pool.submit("late", _pid)

def _zombie_or_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_a_cooperative_task_stops_itself_and_keeps_its_worker():
    pool = ProcessPool(1)
    try:
        first = pool.call(_pid)
        t0 = time.monotonic()
        with pytest.raises(CancelledError, match="stopped at the cancel request"):
            pool.call(_cooperative, 120.0, cancel=lambda: time.monotonic() - t0 > 0.2, grace_s=30)
        assert pool.call(_pid) == first  # not killed: it stopped within the grace period
    finally:
        pool.shutdown()


def test_run_in_process_shares_large_arrays_and_cancel_stops_it():
    arr = np.arange(600_000, dtype=np.float32).reshape(60, 100, 100)  # 2.4 MB: shared memory
    seen = []
    try:
        out = run_in_process(_double, arr, progress=lambda *a: seen.append(a))
        np.testing.assert_array_equal(out, arr * 2)
        assert seen == [(1, 2, "halfway")]
        helper = run_in_process(_pid_kw)
        t0 = time.monotonic()
        with pytest.raises(CancelledError):
            run_in_process(_sleep_long, cancel=lambda: time.monotonic() - t0 > 0.3, grace_s=0.2)
        assert _zombie_or_gone(helper)  # the helper was stopped
        np.testing.assert_array_equal(run_in_process(_double, arr), arr * 2)  # usable after
        assert run_in_process(_pid_kw) != helper
    finally:
        shutdown_helper()


_ORPHAN_SCRIPT = """
import sys, time
from medseg.parallel import ProcessPool

def pid():
    import os
    return os.getpid()

def sleep_long():
    time.sleep(600)

if __name__ == "__main__":
    pool = ProcessPool(1)
    print(pool.call(pid), flush=True)
    pool.submit("long", sleep_long)  # the worker is busy when its caller is killed
    time.sleep(600)
"""


def test_workers_exit_when_their_caller_is_killed(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "caller.py"
    script.write_text(_ORPHAN_SCRIPT)
    # stderr dropped: the killed caller's resource tracker reports the semaphores it cleans up
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    worker = None
    try:
        worker = int(proc.stdout.readline())
        time.sleep(0.5)  # the long task has reached the worker
        assert not _zombie_or_gone(worker)
        proc.kill()  # SIGKILL: no clean-up code runs in the caller
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while not _zombie_or_gone(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _zombie_or_gone(worker), "the worker outlived its killed caller"
    finally:
        proc.kill()
        proc.stdout.close()
        if worker is not None and not _zombie_or_gone(worker):  # do not leave it running on failure
            os.kill(worker, signal.SIGKILL)
