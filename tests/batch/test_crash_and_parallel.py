"""SIGKILL mid-series then resume; local pool and Dask LocalCluster write what the serial path writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.batch import BatchConfig, SegmenterSpec, run_batch

ALL = ("nifti", "seg", "rtstruct", "stl", "stats")


def _kill_study(root: Path) -> Path:
    from medseg.io.dicom_write import write_dicom_series
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    shape = (24, 96, 96)
    for s in range(4):
        image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (6.0, 3.5, 3.5)), seed=s)
        write_dicom_series(image, root / f"p{s}", seed=f"kill{s}", series_description=f"CT {s}")
    return root


def _published(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")] if out.exists() else []


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_then_rerun(workers, tmp_path, tree_hashes):
    study = _kill_study(tmp_path / "study")
    before = tree_hashes(study)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "import sys; from medseg.cli import main; sys.exit(main(sys.argv[1:]))",
           "batch", str(study), str(out), "--model", "threshold", "--formats", ",".join(ALL), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    killed_mid_series = False
    while time.time() < deadline and proc.poll() is None:
        partial = [p for p in out.iterdir() if p.name.startswith(".partial-")] if out.exists() else []
        if _published(out) and partial:
            os.killpg(proc.pid, signal.SIGKILL)  # the batch and its workers, mid-series
            killed_mid_series = True
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed_mid_series, "the batch finished before it could be killed mid-series"
    done_before = {p.name: (p / "record.json").read_text() for p in _published(out)}
    assert 1 <= len(done_before) < 4
    for name, text in done_before.items():  # every visible folder is complete
        rec = json.loads(text)
        assert rec["status"] == "ok"
        for files in rec["outputs"].values():
            for f in files:
                assert (out / name / f).stat().st_size > 0
    assert tree_hashes(study) == before
    # rerun: completes, keeps finished series as they were, leaves nothing partial
    summary = run_batch(study, out, config=BatchConfig(formats=ALL, segmenter=SegmenterSpec("threshold")))
    assert summary["counts"] == {"ok": 4}
    resumed = {r["id"] for r in summary["series"] if r["resumed"]}
    assert resumed == set(done_before)
    for name, text in done_before.items():
        assert (out / name / "record.json").read_text() == text  # not redone
    assert not [p for p in out.iterdir() if p.name.startswith((".partial-", ".trash-"))]
    assert tree_hashes(study) == before


def _comparable(out: Path) -> dict:
    """Every output file of a batch, decoded, without timings, timestamps and worker names."""
    res = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.name.startswith("summary"):
            continue
        rel = str(p.relative_to(out))
        if p.name == "record.json":
            rec = json.loads(p.read_text())
            for k in ("timings_s", "started", "finished", "worker", "traceback"):
                rec.pop(k, None)
            res[rel] = rec
        elif p.suffix == ".dcm":
            ds = pydicom.dcmread(p)
            res[rel] = {e.keyword: e.value for e in ds.iterall() if e.keyword and not
                        any(w in e.keyword for w in ("Date", "Time")) and e.VR != "SQ"}
        elif p.name.endswith(".nii.gz"):
            import nibabel as nib

            img = nib.load(str(p))
            res[rel] = (np.asarray(img.dataobj).tobytes(), img.affine.tobytes())
        else:
            res[rel] = p.read_bytes()
    return res


def test_pool_and_dask_match_the_serial_path(tmp_path):
    from medseg.samples import sample_ct, sample_dicom_dir

    if not sample_dicom_dir().is_dir():
        pytest.skip("sample study not generated (python sample_data/generate.py)")
    study = tmp_path / "sample_study"
    shutil.copytree(sample_dicom_dir(), study / "dicom")
    shutil.copy(sample_ct(), study / "ct_phantom.nii.gz")
    spec = SegmenterSpec("threshold")
    serial = run_batch(study, tmp_path / "serial", config=BatchConfig(formats=ALL, segmenter=spec))
    pool = run_batch(study, tmp_path / "pool", config=BatchConfig(formats=ALL, segmenter=spec, workers=2))
    dask = run_batch(study, tmp_path / "dask", config=BatchConfig(formats=ALL, segmenter=spec, workers=2,
                                                                  scheduler="local"))
    assert serial["counts"] == pool["counts"] == dask["counts"] == {"ok": 2}
    ref = _comparable(tmp_path / "serial")
    assert len(ref) > 15
    assert _comparable(tmp_path / "pool") == ref
    assert _comparable(tmp_path / "dask") == ref
    workers = {r["worker"] for r in dask["series"]}
    assert all(":" in w for w in workers)


def test_existing_scheduler_address(study, tmp_path):
    """``scheduler=ADDRESS`` connects to a running cluster (here an in-process one) instead of starting one."""
    from dask.distributed import LocalCluster

    spec = SegmenterSpec("threshold")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        remote = run_batch(study, tmp_path / "remote", config=BatchConfig(
            formats=("nifti", "stats"), segmenter=spec, scheduler=cluster.scheduler_address))
        assert len(cluster.scheduler.workers) == 1  # the cluster survives the batch: it is not ours
    local = run_batch(study, tmp_path / "local", config=BatchConfig(formats=("nifti", "stats"), segmenter=spec))
    assert remote["counts"] == local["counts"] == {"ok": 3}
    assert _comparable(tmp_path / "remote") == _comparable(tmp_path / "local")
