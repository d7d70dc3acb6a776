"""Batch under chaos (issue 18): a study with good, corrupt, vanishing, growing and duplicated series,
and the batch process killed (SIGKILL) or interrupted (SIGINT) at random moments, then resumed.

For each fixed-seed run: copy the study, start ``medseg batch`` (2 workers, threshold model), damage
the study while it runs (a series' files vanish, a NIfTI grows) and signal the batch at a random
moment; then rerun the same command until it completes. Checks, against one clean run:

* every good series is done exactly once (one ``ok`` record in the final summary) and its
  label map is byte-identical to the clean run's (``labels.nii.gz`` and ``labels.labels.json``);
* every bad series is reported (failed, with a reason, or skipped);
* the study's sources are byte-identical afterwards (apart from the damage the run itself made).

    .venv/bin/python benchmarks/batch_chaos.py [--runs 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CMD = [sys.executable, "-c", "import sys; from medseg.cli import main; sys.exit(main())"]


def make_study(root: Path) -> dict:
    """Good DICOM and NIfTI series, a corrupt one, one to vanish, one to grow, one duplicated."""
    from medseg.io import write_volume
    from medseg.io.dicom_write import write_dicom_series
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    shape = (12, 48, 48)
    aff = default_phantom_affine(shape, (10.0, 8.0, 8.0))
    for s in range(3):
        image, _ = make_phantom(shape=shape, affine=aff, seed=s)
        write_dicom_series(image, root / f"good{s}", seed=f"chaos{s}", series_description=f"good {s}")
    image, _ = make_phantom(shape=shape, affine=aff, seed=7)
    write_volume(image, root / "nifti" / "good.nii.gz")
    write_dicom_series(image, root / "vanish", seed="vanish", series_description="vanish")
    write_volume(image, root / "grow" / "grow.nii.gz")
    corrupt = root / "corrupt"
    write_dicom_series(image, corrupt, seed="corrupt", series_description="corrupt")
    for f in sorted(corrupt.iterdir())[::3]:
        f.write_bytes(f.read_bytes()[:600])  # truncated files
    shutil.copytree(root / "good0", root / "dup_of_good0")  # the same SOP instances twice
    return {"good_descriptions": ["good 0", "good 1", "good 2"], "good_files": ["good.nii.gz"]}


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_batch(study: Path, out: Path, *, timeout: float = 600) -> subprocess.Popen:
    return subprocess.Popen(CMD + ["batch", str(study), str(out), "--model", "threshold", "--workers", "2",
                                   "--formats", "nifti"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def label_digests(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    res = {}
    for r in summary["series"]:
        if r["status"] == "ok":
            key = r["source"]["description"]
            files = [out / r["id"] / "labels.nii.gz", out / r["id"] / "labels.labels.json"]
            res.setdefault(key, []).append(hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest())
    return res


def damage(study: Path, rng: random.Random, stop: threading.Event) -> None:
    """While the batch runs: half of 'vanish' disappears, 'grow' grows, at random moments."""
    time.sleep(rng.uniform(0.0, 3.0))
    for f in sorted((study / "vanish").iterdir())[::2]:
        f.unlink(missing_ok=True)
    time.sleep(rng.uniform(0.0, 2.0))
    g = study / "grow" / "grow.nii.gz"
    if not stop.is_set():
        with open(g, "ab") as fh:
            fh.write(b"\0" * 4096)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medseg-chaos-") as tmp:
        tmp = Path(tmp)
        base = tmp / "study"
        info = make_study(base)
        clean_study = tmp / "clean_study"
        shutil.copytree(base, clean_study)
        p = run_batch(clean_study, tmp / "clean_out")
        _, err = p.communicate()
        reference = label_digests(tmp / "clean_out")
        good = info["good_descriptions"] + info["good_files"]
        missing = [g for g in good if g not in reference]
        if missing:
            print(f"clean run did not produce {missing}: {err[-2000:]}")
            return 1
        problems = 0
        t_all = time.perf_counter()
        for run in range(args.runs):
            rng = random.Random(args.seed * 1000 + run)
            study = tmp / f"study{run}"
            shutil.copytree(base, study)
            before = tree(study)
            out = tmp / f"out{run}"
            stop = threading.Event()
            dmg = threading.Thread(target=damage, args=(study, rng, stop))
            proc = run_batch(study, out)
            dmg.start()
            sig = rng.choice([signal.SIGKILL, signal.SIGINT])
            time.sleep(rng.uniform(0.5, 8.0))
            if proc.poll() is None:
                proc.send_signal(sig)
            proc.communicate()
            stop.set()
            dmg.join()
            resumes = 0
            while True:  # rerun until it completes
                resumes += 1
                p2 = run_batch(study, out)
                _, err = p2.communicate()
                if p2.returncode in (0, 3) or resumes > 3:
                    break
            summary = json.loads((out / "summary.json").read_text())
            digests = label_digests(out)
            issues = []
            for g in good:
                got = digests.get(g, [])
                if len(got) != 1 or got[0] != reference[g][0]:
                    issues.append(f"good series {g!r}: {len(got)} ok record(s), identical={got == reference[g]}")
            reported = {r["source"]["description"]: r for r in summary["series"]}
            r = reported.get("corrupt")
            skipped = {Path(s["path"]).parent.name for s in summary["skipped"]}
            if (r is None or r["status"] == "ok") and "corrupt" not in skipped:
                issues.append("the corrupt series is not reported")
            # vanish / grow: failed ("series changed during the run") when damaged between discovery and
            # loading, ok when damaged before discovery (a smaller series) or after they finished
            fates = {k: (reported[k]["status"] if k in reported else "absent") for k in ("vanish", "grow.nii.gz")}
            after = tree(study)
            changed = [k for k in before if k in after and before[k] != after[k] and not k.startswith("grow/")]
            extra = [k for k in after if k not in before]
            if changed or extra:
                issues.append(f"sources changed: {changed[:3]} new: {extra[:3]}")
            if list(out.glob(".partial-*")):
                issues.append("a .partial folder is left")
            status = "ok" if not issues else "PROBLEM"
            print(f"run {run:2d}: {sig.name:7s} exit {proc.returncode:4d}, {resumes} resume(s), final exit "
                  f"{p2.returncode}, {summary['counts']}, damaged {fates}: {status} {'; '.join(issues)}", flush=True)
            problems += bool(issues)
        print(f"{args.runs} runs in {time.perf_counter() - t_all:.0f} s: {args.runs - problems} without problems, "
              f"{problems} with")
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
