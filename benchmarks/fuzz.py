"""Mutation fuzzing of medseg's inputs for N minutes (issue 18).

Feeds seeded mutations of real DICOM slices (``../shared/data/real/ct_dicom_series``, pydicom's
test files), NIfTI / NRRD / MHA headers, label-table JSON, model YAML and MONAI bundle configs to
the readers, ``medseg info``, ``convert``, ``segment`` (a tiny untrained model), ``export`` and
``batch``, in this process, and prints: inputs tried, successes, named errors, crashes (an
exception that is not one of medseg's named errors), writes outside the output folder, changed
inputs, MemoryErrors and peak RSS. Every input runs under a 64 MiB volume limit
(``medseg.io.limits``); a run "above the memory limit" is one whose peak RSS grows by more than
8 x that limit.

    .venv/bin/python benchmarks/fuzz.py --minutes 20 [--seed 0] [--real-data ../shared/data/real]

Exit code 1 when any input failed the oracle (the failing kind, target and seed are printed:
``Fuzzer.run_one(kind, seed)`` reproduces it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import signal
import sys
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from safety.fuzzing import FUZZ_LIMIT_BYTES, Fuzzer  # noqa: E402


def _rss_mb(pid: int) -> float:
    """Current (not peak) resident set size of process ``pid``, in MB, from /proc (Linux)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**2


def _watch(pid: int, limit_mb: float, label_file: str) -> None:
    """Runs in its own process: kills ``pid`` and names the input in flight (``label_file``) when
    ``pid``'s resident set passes ``limit_mb``.

    A thread cannot do this: a memory bomb inside a C call that holds the GIL grows the process
    to the kernel's OOM killer without letting a Python thread run (seen: 24 GB in one input).
    """
    while True:
        try:
            rss = _rss_mb(pid)
        except OSError:
            return  # the fuzzer ended
        if rss > limit_mb:
            os.kill(pid, signal.SIGKILL)
            label = Path(label_file).read_text()
            print(f"FAIL memory bomb: {rss:.0f} MB resident (> {limit_mb:.0f} MB) while running {label}",
                  flush=True)
            return
        time.sleep(0.01)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heavy-share", type=float, default=0.03, help="share of inputs sent to segment/batch")
    ap.add_argument("--real-data", default=str(ROOT.parent / "shared" / "data" / "real"))
    args = ap.parse_args()
    real = Path(args.real_data)
    with tempfile.TemporaryDirectory(prefix="medseg-fuzz-") as work:
        t0 = time.perf_counter()
        fuzzer = Fuzzer(Path(work), real if (real / "ct_dicom_series").is_dir() else None,
                        heavy_share=args.heavy_share)
        print(f"seeds ready in {time.perf_counter() - t0:.1f} s ({', '.join(fuzzer.kinds())})", flush=True)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # hard stop well above the per-input budget (16 x the volume limit over the baseline)
        label_file = Path(work) / "in-flight.txt"
        label_file.write_text("(seeds)")
        watchdog = multiprocessing.get_context("spawn").Process(
            target=_watch, args=(os.getpid(), _rss_mb(os.getpid()) + 16 * FUZZ_LIMIT_BYTES / 1024**2, str(label_file)),
            daemon=True)
        watchdog.start()
        rng = random.Random(args.seed)
        kinds = fuzzer.kinds()
        t0 = time.perf_counter()
        deadline = t0 + args.minutes * 60
        over_memory = 0
        last_report = t0
        while time.perf_counter() < deadline:
            kind, seed = rng.choice(kinds), rng.randrange(2**31)
            label_file.write_text(f"kind={kind} seed={seed} (Fuzzer.run_one({kind!r}, {seed}))")
            outcome = fuzzer.run_one(kind, seed)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if rss - rss0 > 8 * FUZZ_LIMIT_BYTES / 1024**2:
                over_memory += 1
                rss0 = rss  # count each new excursion once
            if not outcome.good:
                print(f"FAIL {outcome.status} kind={kind} target={outcome.target} seed={seed}: "
                      f"{outcome.detail[:400]}", flush=True)
            if time.perf_counter() - last_report > 60:
                last_report = time.perf_counter()
                s = fuzzer.stats
                print(f"  {s.tried} inputs after {last_report - t0:.0f} s, {len(s.failures)} failures", flush=True)
        wall = time.perf_counter() - t0
        s = fuzzer.stats
        by_status: dict[str, int] = {}
        for f in s.failures:
            by_status[f.status] = by_status.get(f.status, 0) + 1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"inputs tried      {s.tried} in {wall:.0f} s ({s.tried / wall:.1f}/s)")
        print(f"succeeded         {s.ok}")
        print(f"named errors      {s.named}")
        print(f"crashes           {by_status.get('crash', 0)}")
        print(f"writes outside    {by_status.get('stray_write', 0)}")
        print(f"inputs changed    {by_status.get('input_changed', 0)}")
        print(f"memory errors     {by_status.get('memory', 0)}; runs above the memory limit {over_memory}")
        print(f"peak RSS          {peak:.0f} MB (volume limit per input {FUZZ_LIMIT_BYTES / 1024**2:.0f} MiB)")
        print(f"by target         {dict(sorted(s.by_target.items()))}")
        return 1 if s.failures or over_memory else 0


if __name__ == "__main__":
    sys.exit(main())
