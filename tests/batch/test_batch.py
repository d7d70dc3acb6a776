"""Batch runs: fault injection, resume, selection, atomic outputs and the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import time

import numpy as np
import pytest

from medseg.batch import BatchConfig, SegmenterSpec, SelectionRule, discover_series, run_batch, threshold_segment
from medseg.core.errors import InputError

ALL = ("nifti", "seg", "rtstruct", "stl", "stats")
THRESHOLD = SegmenterSpec("threshold")


def _fault_study(study):
    """Add a corrupt file, a non-image DICOM object, a series with a missing slice, an unreadable NIfTI."""
    from pydicom.data import get_testdata_file

    from medseg.io.dicom_write import write_dicom_series
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    misc = study / "misc"
    misc.mkdir()
    good = sorted((study / "patient0" / "study" / "ct").iterdir())[0]
    (misc / "corrupt.dcm").write_bytes(good.read_bytes()[:400])  # truncated DICOM
    shutil.copy(get_testdata_file("rtstruct.dcm"), misc / "structures.dcm")  # not an image
    image, _ = make_phantom(shape=(12, 40, 40), affine=default_phantom_affine((12, 40, 40), (10.0, 8.0, 8.0)), seed=5)
    files = write_dicom_series(image, study / "patient5" / "gap", seed="gap", series_description="CT with gap")
    files[5].unlink()  # a missing slice in the middle
    (study / "nifti" / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not a NIfTI file")
    return study


def test_fault_injection(study, tmp_path, tree_hashes):
    _fault_study(study)
    before = tree_hashes(study)
    out = tmp_path / "out"
    summary = run_batch(study, out, config=BatchConfig(formats=ALL, segmenter=THRESHOLD))
    by_status = {}
    for r in summary["series"]:
        by_status.setdefault(r["status"], []).append(r)
    assert len(by_status["ok"]) == 3  # two DICOM series and the good NIfTI
    failed = {r["source"]["description"]: r["error"] for r in by_status["failed"]}
    assert set(failed) == {"CT with gap", "broken.nii.gz"}
    assert "slice" in failed["CT with gap"].lower()
    assert "FileFormatError" in failed["broken.nii.gz"]
    skipped = {s["path"].split("/")[-1]: s for s in summary["skipped"]}
    assert set(skipped) == {"corrupt.dcm", "structures.dcm"}
    assert all(s["reason"] and s["status"] == "not_an_image" for s in skipped.values())
    assert summary["counts"] == {"ok": 3, "failed": 2, "not_an_image": 2}
    for r in by_status["ok"]:
        folder = out / r["id"]
        expected = {"labels.nii.gz", "stats.json"} | ({"seg.dcm", "rtstruct.dcm"} if r["source"]["kind"] == "dicom" else set())
        assert expected <= {p.name for p in folder.iterdir()}
        assert (folder / "meshes" / "1_body.stl").is_file()
        assert json.loads((folder / "record.json").read_text())["status"] == "ok"
        assert r["label_volumes_ml"]["body"] > 1000
    for r in by_status["failed"]:
        assert [p.name for p in (out / r["id"]).iterdir()] == ["record.json"]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted(r["status"] for r in rows) == ["failed"] * 2 + ["not_an_image"] * 2 + ["ok"] * 3
    assert all(r["error"] for r in rows if r["status"] != "ok")
    assert float(next(r for r in rows if r["status"] == "ok")["volume_ml:body"]) > 1000
    assert tree_hashes(study) == before  # sources untouched
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]
    # rerun: finished series skipped, failures retried (and fail again), same statuses
    again = run_batch(study, out, config=BatchConfig(formats=ALL, segmenter=THRESHOLD))
    assert sorted(r["id"] for r in again["series"] if r["resumed"]) == sorted(r["id"] for r in by_status["ok"])
    assert again["counts"] == summary["counts"]
    # resampling the gap (non-strict) makes that series succeed, minus the DICOM exports
    rel = run_batch(study, tmp_path / "out2", config=BatchConfig(
        formats=("nifti", "seg"), segmenter=THRESHOLD, strict_geometry=False,
        selection=SelectionRule(description="gap")))
    (gap,) = rel["series"]
    assert gap["status"] == "failed" and "interpolated" in gap["error"]
    rel = run_batch(study, tmp_path / "out3", config=BatchConfig(
        formats=("nifti",), segmenter=THRESHOLD, strict_geometry=False, selection=SelectionRule(description="gap")))
    assert rel["series"][0]["status"] == "ok" and rel["series"][0]["warnings"]


def test_selection_rule(study):
    from medseg.io import write_segmentation
    from medseg.samples.phantom import make_phantom

    _, seg = make_phantom(shape=(8, 16, 16), seed=1)
    write_segmentation(seg, study / "nifti" / "reference_labels.nii.gz")
    found = discover_series(study)
    assert len(found.tasks) == 3
    assert [s.reason for s in found.skipped] == ["a label map (it has a .labels.json table), not an image"]
    found = discover_series(study, rule=SelectionRule(modalities=("MR",)))
    assert [t.kind for t in found.tasks] == ["file"]  # files have no modality: they pass
    assert {s.status for s in found.skipped} == {"excluded"}
    found = discover_series(study, rule=SelectionRule(min_slices=13))
    assert found.tasks == [] and all("slices < minimum 13" in s.reason for s in found.skipped if s.series)
    assert len([s for s in found.skipped if s.series]) == 3
    found = discover_series(study, rule=SelectionRule(modalities=("ct",), description="abdomen 1$"))
    assert [t.description for t in found.tasks] == ["CT abdomen 1"]
    with pytest.raises(InputError, match="not a valid regular expression"):
        SelectionRule(description="(")
    with pytest.raises(InputError, match="min_slices must be"):
        SelectionRule(min_slices=0)


def test_config_and_folder_errors(study, tmp_path):
    with pytest.raises(InputError, match="workers must be"):
        BatchConfig(workers=0)
    with pytest.raises(InputError, match="seg_type must be"):
        BatchConfig(seg_type="x")
    with pytest.raises(InputError, match="unknown export format"):
        BatchConfig(formats=("nifti", "obj"))
    with pytest.raises(InputError, match="must differ from the study folder"):
        run_batch(study, study)
    with pytest.raises(FileNotFoundError, match="study folder not found"):
        run_batch(tmp_path / "nope", tmp_path / "o")
    with pytest.raises(InputError, match="only runs in this process"):
        run_batch(study, tmp_path / "o", config=BatchConfig(workers=2), segmenter=threshold_segment)


def test_output_inside_study_is_not_rediscovered_and_lock(study, tmp_path):
    from medseg.batch.runner import _locked

    out = study / "results"
    s1 = run_batch(study, out, config=BatchConfig(formats=("nifti",), segmenter=THRESHOLD))
    s2 = run_batch(study, out, config=BatchConfig(formats=("nifti",), segmenter=THRESHOLD))
    assert len(s1["series"]) == len(s2["series"]) == 3 and all(r["resumed"] for r in s2["series"])
    with _locked(out):  # a second batch on the same folder is refused
        with pytest.raises(InputError, match="another medseg batch"):
            run_batch(study, out, config=BatchConfig(formats=("nifti",), segmenter=THRESHOLD))


def test_changed_formats_rerun_the_series(study, tmp_path):
    out = tmp_path / "out"
    run_batch(study, out, config=BatchConfig(formats=("stats",), segmenter=THRESHOLD))
    s = run_batch(study, out, config=BatchConfig(formats=("stats", "nifti"), segmenter=THRESHOLD))
    assert not any(r["resumed"] for r in s["series"])
    assert all((out / r["id"] / "labels.nii.gz").is_file() for r in s["series"])


def test_threshold_segmenter_is_deterministic(phantom):
    image, _ = phantom
    a, b = threshold_segment(image), threshold_segment(image)
    assert np.array_equal(a.array, b.array)
    assert set(np.unique(a.array)) == {0, 1, 2}
    hu = image.array
    assert hu[a.array == 2].min() >= 250 and hu[a.array == 0].mean() < -500


def test_cli_batch_and_export(study, tmp_path, capsys):
    from medseg.cli import main

    out = tmp_path / "out"
    rc = main(["batch", str(study), str(out), "--model", "threshold", "--formats", "nifti,seg,stats",
               "--modality", "CT", "--min-slices", "5"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ok: 3" in text
    series = next(p for p in out.iterdir() if p.name.startswith("CT_"))
    dicom_dir = json.loads((series / "record.json").read_text())["source"]["path"]
    rc = main(["export", str(series / "labels.nii.gz"), str(tmp_path / "exp"), "--image", dicom_dir,
               "--formats", "rtstruct,stl,stats", "--algorithm", "threshold"])
    assert rc == 0
    assert (tmp_path / "exp" / "rtstruct.dcm").is_file() and (tmp_path / "exp" / "stats.csv").is_file()
    # failures give exit code 3
    (study / "nifti" / "broken.nii.gz").write_bytes(b"broken")
    assert main(["batch", str(study), str(tmp_path / "out2"), "--model", "threshold"]) == 3


def test_progress_and_cancel(study, tmp_path):
    from medseg.core.errors import CancelledError

    batch, per_series = [], []
    run_batch(study, tmp_path / "a", config=BatchConfig(formats=("nifti",), segmenter=THRESHOLD),
              progress=lambda d, t, m: batch.append((d, t)), series_progress=lambda *a: per_series.append(a))
    assert batch[0] == (0, 3) and batch[-1] == (3, 3)
    stages = {}
    for sid, done, total, message in per_series:
        stages.setdefault(sid, []).append(message)
    assert len(stages) == 3 and all(m == ["reading", "segmenting", "exporting", "ok"] for m in stages.values())
    pooled = []
    run_batch(study, tmp_path / "b", config=BatchConfig(formats=("nifti",), segmenter=THRESHOLD, workers=2),
              series_progress=lambda *a: pooled.append(a))
    assert {a[0] for a in pooled} == set(stages) and {a[3] for a in pooled} >= {"reading", "ok"}
    def cancel():  # the user cancels once the first series is published
        out = tmp_path / "c"
        return out.exists() and any(p.is_dir() and not p.name.startswith(".") for p in out.iterdir())

    with pytest.raises(CancelledError, match="batch cancelled"):
        run_batch(study, tmp_path / "c", config=BatchConfig(formats=("nifti",), segmenter=THRESHOLD), cancel=cancel)
    done = [p for p in (tmp_path / "c").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(done) == 1 and (done[0] / "record.json").is_file()
    resumed = run_batch(study, tmp_path / "c", config=BatchConfig(formats=("nifti",), segmenter=THRESHOLD))
    assert sum(r["resumed"] for r in resumed["series"]) == 1 and resumed["counts"] == {"ok": 3}


def test_cancelled_multi_worker_batch_raises_cancelled(study, tmp_path):
    """A pooled batch the user cancels must raise CancelledError and never report itself complete:
    the series finished before the cancel stay published, and summary.json says "interrupted" and
    lists exactly the series not run."""
    from medseg.core.errors import CancelledError

    out = tmp_path / "out"

    def cancel():  # once the first series is published
        return out.exists() and any(p.is_dir() and not p.name.startswith(".") for p in out.iterdir())

    with pytest.raises(CancelledError, match="batch cancelled"):
        run_batch(study, out, config=BatchConfig(formats=("nifti",), segmenter=THRESHOLD, workers=2), cancel=cancel)
    done = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert 1 <= len(done) <= 3 and all((p / "record.json").is_file() for p in done)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    reported = {r["id"] for r in summary["series"]}
    assert reported  # the series published before the cancel (on a fast run, possibly all three)
    assert reported.isdisjoint(summary["not_run"]) and len(reported | set(summary["not_run"])) == 3


def test_cancel_while_the_study_is_scanned_still_records_published_series(study, tmp_path):
    """Series start in the pool while the DICOM headers are still read (NIfTI files first). A cancel
    that comes during that scan is a batch cancel: the series already published are recorded in
    summary.json (not listed as not run), and nothing unfinished stays."""
    from medseg.core.errors import CancelledError

    out = tmp_path / "out"

    def published():
        return [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")] if out.exists() else []

    def cancel():  # first called by the DICOM header scan: wait there until the NIfTI series is out
        deadline = time.monotonic() + 120
        while not published() and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    with pytest.raises(CancelledError, match="batch cancelled"):
        run_batch(study, out, config=BatchConfig(formats=("nifti",), segmenter=THRESHOLD, workers=2), cancel=cancel)
    done = {p.name for p in published()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and len(done) == 1
    assert {r["id"] for r in summary["series"]} == done and all(r["status"] == "ok" for r in summary["series"])
    assert done.isdisjoint(summary["not_run"])
    assert not any(p.name.startswith(".partial") for p in out.iterdir())


def test_summary_names_the_study_and_output_folders(study, tmp_path):
    out = tmp_path / "results"
    summary = run_batch(study, out, config=BatchConfig(formats=("stats",), segmenter=THRESHOLD))
    on_disk = json.loads((out / "summary.json").read_text())
    for s in (summary, on_disk):
        assert s["study_dir"] == str(study.resolve()) and s["out_dir"] == str(out.resolve())
        assert s["config"]["formats"] == ["stats"] and s["config"]["model"] == "threshold"
        assert s["config"]["workers"] == 1 and s["counts"] == {"ok": 3}
        assert len(s["series"]) == 3 and all(r["status"] == "ok" for r in s["series"])
    assert on_disk["series"] == json.loads(json.dumps(summary["series"], default=str))
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in summary["series"])
    assert all(r["status"] == "ok" and r["resumed"] == "False" for r in rows)


def test_stale_partial_files_are_removed(study, tmp_path):
    """Leftovers of an interrupted run (hidden .partial files and folders) are removed; the
    user's own files in the output folder are kept."""
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".summary.json.abc.partial.json", out / ".x.partial.nii.gz"]
    for p in stale:
        p.write_text("half")
    (out / ".partial-CT_1").mkdir()
    (out / ".partial-CT_1" / "labels.nii.gz").write_text("half")
    (out / ".trash-CT_2").mkdir()
    keep = [out / "notes.partial.txt", out / ".hidden_notes", out / "mine.json"]
    for p in keep:
        p.write_text("user")
    (out / "folder.partial").mkdir()
    run_batch(study, out, config=BatchConfig(formats=("stats",), segmenter=THRESHOLD))
    names = {p.name for p in out.iterdir()}
    assert not names & {p.name for p in stale} and not names & {".partial-CT_1", ".trash-CT_2"}
    assert {p.name for p in keep} | {"folder.partial", "summary.json", "summary.csv"} <= names
    assert all(p.read_text() == "user" for p in keep)


def test_two_workers_run_in_worker_processes(study, tmp_path):
    """workers=2 (no Dask) runs the series in the local pool's processes, workers=1 in this one."""
    import os

    me = os.getpid()
    pooled = run_batch(study, tmp_path / "pool", config=BatchConfig(formats=("stats",), segmenter=THRESHOLD, workers=2))
    pids = {int(r["worker"].rsplit(":", 1)[1]) for r in pooled["series"]}
    assert me not in pids and pooled["config"]["workers"] == 2 and pooled["counts"] == {"ok": 3}
    serial = run_batch(study, tmp_path / "one", config=BatchConfig(formats=("stats",), segmenter=THRESHOLD))
    assert {int(r["worker"].rsplit(":", 1)[1]) for r in serial["series"]} == {me}


@pytest.mark.parametrize("model", ["zz-another-model", "a-another-model"])
def test_series_done_by_another_model_are_rerun(study, tmp_path, model):
    """Resume only reuses a series segmented by the same model with the same formats."""
    out = tmp_path / "out"
    first = run_batch(study, out, config=BatchConfig(formats=("stats",), segmenter=THRESHOLD))
    for r in first["series"]:
        path = out / r["id"] / "record.json"
        rec = json.loads(path.read_text())
        assert rec["model"] == "threshold" and rec["status"] == "ok"
        rec["model"] = model
        path.write_text(json.dumps(rec))
    again = run_batch(study, out, config=BatchConfig(formats=("stats",), segmenter=THRESHOLD))
    assert not any(r["resumed"] for r in again["series"]) and again["counts"] == {"ok": 3}
    third = run_batch(study, out, config=BatchConfig(formats=("stats",), segmenter=THRESHOLD))
    assert all(r["resumed"] for r in third["series"])


def test_an_error_in_a_pooled_batch_kills_the_running_series(tmp_path):
    """An exception in the caller's callback stops a pooled batch at once: the worker busy with a
    series is killed (its unfinished output is never published and the next run cleans it up)
    instead of being left to finish."""
    from medseg.io.dicom_write import write_dicom_series
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    study = tmp_path / "study"
    shape = (24, 96, 96)  # large enough that exporting every format takes far longer than stopping
    for s in range(2):
        image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (6.0, 3.5, 3.5)), seed=s)
        write_dicom_series(image, study / f"p{s}", seed=f"err{s}", series_description=f"CT {s}")
    out = tmp_path / "out"
    busy = []

    def series_progress(series_id, done, total, message):
        if message == "segmenting":
            busy.append(series_id)
            raise RuntimeError("the caller's progress display failed")

    with pytest.raises(RuntimeError, match="progress display failed"):
        run_batch(study, out, config=BatchConfig(formats=ALL, segmenter=THRESHOLD, workers=2),
                  series_progress=series_progress)
    assert busy and not (out / busy[0]).exists()  # killed mid-series, never published
    assert not (out / "summary.json").exists()
    again = run_batch(study, out, config=BatchConfig(formats=ALL, segmenter=THRESHOLD, workers=2))
    assert again["counts"] == {"ok": 2} and not [p for p in out.iterdir() if p.name.startswith(".partial")]
