"""The local worker pool: a killed worker costs one series, model errors surface, discovery streams."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from medseg.batch import BatchConfig, SegmenterSpec, discover_series, run_batch

THRESHOLD = SegmenterSpec("threshold")
ALL = ("nifti", "seg", "rtstruct", "stl", "stats")


def _study(root: Path, n: int) -> Path:
    from medseg.io.dicom_write import write_dicom_series
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    shape = (24, 96, 96)
    for s in range(n):
        image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (6.0, 3.5, 3.5)), seed=s)
        write_dicom_series(image, root / f"p{s}", seed=f"pool{s}", series_description=f"CT {s}")
    return root


def _pool_workers() -> list:
    """This test process's batch workers: the children of its multiprocessing fork server."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            parent = child.parent()
            if parent is not None and any("forkserver" in part for part in parent.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def test_a_killed_worker_costs_only_its_series(tmp_path, tree_hashes):
    study = _study(tmp_path / "study", 6)
    before = tree_hashes(study)
    out = tmp_path / "out"
    killed: list[int] = []

    def killer():  # SIGKILL every worker once one series is published and another is in progress
        deadline = time.time() + 240
        while time.time() < deadline:
            names = [p.name for p in out.iterdir()] if out.exists() else []
            if any(n.startswith(".partial-") for n in names) and any(not n.startswith(".") for n in names):
                for w in _pool_workers():
                    os.kill(w.pid, signal.SIGKILL)
                    killed.append(w.pid)
                return
            time.sleep(0.005)

    t = threading.Thread(target=killer)
    t.start()
    summary = run_batch(study, out, config=BatchConfig(formats=ALL, segmenter=THRESHOLD, workers=2))
    t.join()
    assert killed, "no worker was killed"
    counts = summary["counts"]
    assert counts.get("ok", 0) + counts.get("failed", 0) == 6  # the batch went on with new workers
    failed = [r for r in summary["series"] if r["status"] == "failed"]
    assert 1 <= len(failed) <= 2
    for r in failed:  # reported, with a record and nothing else in the folder
        assert "worker process" in r["error"] and "killed by signal 9" in r["error"], r["error"]
        assert [p.name for p in (out / r["id"]).iterdir()] == ["record.json"]
    replacements = {r["worker"].rsplit(":", 1)[1] for r in summary["series"] if r["status"] == "ok"} - \
        {str(pid) for pid in killed}
    assert replacements  # new workers took over the series left
    assert not [p for p in out.iterdir() if p.name.startswith(".partial-")]
    again = run_batch(study, out, config=BatchConfig(formats=ALL, segmenter=THRESHOLD, workers=2))
    assert again["counts"] == {"ok": 6}
    assert sorted(r["id"] for r in again["series"] if not r["resumed"]) == sorted(r["id"] for r in failed)
    assert tree_hashes(study) == before


def test_model_error_in_the_workers_is_raised_as_in_process(study, tmp_path):
    from medseg.core.errors import ModelError

    spec = SegmenterSpec("no_such_model", "cpu")
    with pytest.raises(ModelError, match="no_such_model"):
        run_batch(study, tmp_path / "serial", config=BatchConfig(segmenter=spec))
    with pytest.raises(ModelError, match="no_such_model"):
        run_batch(study, tmp_path / "pool", config=BatchConfig(segmenter=spec, workers=2))
    assert not [p for p in (tmp_path / "pool").iterdir() if not p.name.startswith(".")]


def test_discovery_streams_selected_series_with_their_size(study):
    from medseg.io import write_volume
    from medseg.samples.phantom import make_phantom

    image, _ = make_phantom(shape=(10, 20, 30), seed=3)
    write_volume(image, study / "nifti" / "small.nii.gz")
    streamed = []
    found = discover_series(study, on_task=streamed.append)
    assert sorted(streamed, key=lambda t: t.id) == found.tasks and len(found.tasks) == 4
    assert [t.kind for t in streamed[:2]] == ["file", "file"]  # files come before the DICOM scan ends
    by_desc = {t.description: t for t in found.tasks}
    assert by_desc["small.nii.gz"].voxels == 10 * 20 * 30 and by_desc["small.nii.gz"].n_slices == 10
    dicom = [t for t in found.tasks if t.kind == "dicom"]
    assert all(t.voxels == math.prod((12, 40, 40)) for t in dicom)


def test_pool_records_match_the_serial_records(study, tmp_path):
    """Series streamed to two workers (largest first) give the records of the serial path."""
    serial = run_batch(study, tmp_path / "serial", config=BatchConfig(formats=("nifti", "stats"), segmenter=THRESHOLD))
    pool = run_batch(study, tmp_path / "pool", config=BatchConfig(formats=("nifti", "stats"), segmenter=THRESHOLD,
                                                                  workers=2))
    assert [r["id"] for r in pool["series"]] == [r["id"] for r in serial["series"]]

    def strip(rec):
        return {k: v for k, v in rec.items() if k not in ("timings_s", "started", "finished", "worker")}

    assert [strip(r) for r in pool["series"]] == [strip(r) for r in serial["series"]]
    assert json.loads((tmp_path / "pool" / "summary.json").read_text())["counts"] == {"ok": 3}
    assert len({r["worker"] for r in pool["series"]} - {r["worker"] for r in serial["series"]}) >= 1
