"""Batch throughput: series per minute with 1 vs 2 local workers; DICOM SEG write time vs labels.

Usage::

    python benchmarks/batch.py [--series 6] [--shape 48 160 160] [--model threshold]
                               [--formats nifti,seg,rtstruct,stl,stats] [--repeat 1]
                               [--threads-baseline] [--fresh] [--ceiling] [--labels 10 50 100]

Generates a study of phantom CT series written as DICOM, runs ``run_batch`` with 1 and then 2
workers (fresh output folders, same study, same run) and prints series/minute and the ratio.

What is compared: *one worker with one thread* against *two workers with one thread each*.
``workers=1`` runs in the calling process; the threshold model is single-threaded and learned
models get ``threads=1`` (torch intra-op threads), so the 1-worker run uses one core (measured:
no CPU time outside its main thread) and the ratio measures process parallelism, the goal of
the batch issue. ``--threads-baseline`` adds a learned-model run with one worker and torch's
default thread count (all cores): processes vs threads, what a user choosing ``--workers``
compares.

By default the runs share this process (the 1-worker run imports the I/O and export libraries,
which later runs then find imported; the 2-worker pool imports them again in its fork server).
``--fresh`` runs each batch in a new interpreter timed from its start, as ``medseg batch`` runs:
every run pays its own interpreter start and imports.

``--ceiling`` first measures what two processes can gain on this machine at all: the same warm
series processed by one process alone, then by two processes at once (no pool, start-up or
discovery). Shared caches, memory bandwidth and virtual CPUs keep this below 2.0x; a 2-worker
batch cannot beat it.

Each run also prints where the time went: discovery (until the series count is known), the
span from then to the last finished series, and the tail (pool shutdown and summary). Then
``write_dicom_seg`` is timed (binary and labelmap encodings) for label maps with many labels
(highdicom #202: 98 segments took > 8 min there). The machine is shared: read ratios measured
in the same run, not absolute times, and check the load average printed with each ratio and
the CPU time other processes used during each run (a quiet run shows ~0 s there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np


def make_study(root: Path, n: int, shape: tuple[int, int, int]) -> None:
    from medseg.io.dicom_write import write_dicom_series
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    for s in range(n):
        image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (5.0, 2.2, 2.2)), seed=s)
        write_dicom_series(image, root / f"p{s}", seed=f"bench{s}", series_description=f"CT {s}")


def _busy_cpu_s() -> float:
    """CPU seconds all processes of the machine have used (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process, of its reaped children and of the multiprocessing fork server
    with the workers it has reaped (the fork server is ours but never reaped during a run)."""
    def stat_cpu(pid) -> float:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(v) for v in f[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime

    total = stat_cpu("self")
    for child in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split():
        try:
            if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                total += stat_cpu(child)
        except OSError:
            pass
    return total


def _timed_run(study: Path, out: Path, args, spec, workers: int) -> dict:
    from medseg.batch import BatchConfig, run_batch

    marks: dict = {}
    busy0, own0 = _busy_cpu_s(), _own_cpu_s()
    t0 = time.perf_counter()

    def progress(done, total, message):
        now = time.perf_counter() - t0
        marks.setdefault("discovered", now)  # the first call comes when discovery has ended
        if done:
            marks["last_series"] = now
            marks.setdefault("done_times", []).append(now)

    s = run_batch(study, out, config=BatchConfig(formats=tuple(args.formats.split(",")), segmenter=spec,
                                                 workers=workers), progress=progress)
    wall = time.perf_counter() - t0
    own = _own_cpu_s() - own0
    others = max(0.0, _busy_cpu_s() - busy0 - own)
    assert s["counts"] == {"ok": args.series}, s["counts"]
    return {"wall": wall, "rate": args.series / wall * 60, "own_cpu": own, "others_cpu": others, **marks}


def _fresh_run(study: Path, out: Path, args, threads: Optional[int], workers: int) -> dict:
    """The same run in a new interpreter (as ``medseg batch`` runs): imports and start-up included."""
    busy0 = _busy_cpu_s()
    t_abs = time.time()
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--run-once", str(study), str(out), "--model", args.model, "--formats",
           args.formats, "--workers", str(workers), "--threads", str(threads or 0)]
    # timed until the command returns (as a shell sees it), not until every process holding its output
    # ends: the multiprocessing fork server finishes its own exit after the batch process has gone
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        proc.wait()
        wall = time.perf_counter() - t0
        time.sleep(1.0)  # let the fork server exit before the next run
        log.seek(0)
        text = log.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text}")
    child = json.loads(next(line for line in reversed(text.splitlines()) if line.startswith('{"marks"')))
    assert child["counts"] == {"ok": args.series}, child["counts"]
    marks = {k: ([t - t_abs for t in v] if isinstance(v, list) else v - t_abs) for k, v in child["marks"].items()}
    others = max(0.0, _busy_cpu_s() - busy0 - child["own_cpu"])
    return {"wall": wall, "rate": args.series / wall * 60, "own_cpu": child["own_cpu"], "others_cpu": others, **marks}


def _run_once(args) -> None:
    """Child of :func:`_fresh_run`: one batch, then a JSON line (absolute marks, own CPU, counts)."""
    from medseg.batch import BatchConfig, SegmenterSpec, run_batch

    marks: dict = {}

    def progress(done, total, message):
        marks.setdefault("discovered", time.time())
        if done:
            marks["last_series"] = time.time()
            marks.setdefault("done_times", []).append(time.time())

    spec = SegmenterSpec(None if args.model == "default" else args.model, "cpu", threads=args.threads or None)
    study, out = args.run_once
    s = run_batch(study, out, config=BatchConfig(formats=tuple(args.formats.split(",")), segmenter=spec,
                                                 workers=args.workers), progress=progress)
    print(json.dumps({"marks": marks, "own_cpu": _own_cpu_s(), "counts": s["counts"]}))


def _ceiling_worker(study: str, out: str, args_model: str, formats: str, n: int, barrier, results) -> None:
    """Process ``n`` series of the study serially in this process, after the others are ready."""
    from medseg.batch import BatchConfig, SegmenterSpec, discover_series
    from medseg.batch.series import process_series

    spec = SegmenterSpec(None if args_model == "default" else args_model, "cpu",
                         threads=1 if args_model != "threshold" else None)
    seg = spec.build()
    options = BatchConfig(formats=tuple(formats.split(",")), segmenter=spec).series_options
    tasks = discover_series(study).tasks
    Path(out).mkdir(parents=True)
    process_series(tasks[0], out, options, seg)  # warm: imports and first-call caches
    barrier.wait()
    t0 = time.perf_counter()
    for i in range(n):
        process_series(tasks[i % len(tasks)], out, options, seg)
    results.put(time.perf_counter() - t0)


def bench_ceiling(study: Path, tmp: Path, args) -> float:
    """What two processes can gain on this machine: the same series, warm, in 1 process alone vs in
    2 processes at once (no pool, no start-up, no discovery): the best ratio a 2-worker batch can reach."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    n = max(2, args.series // 2)
    import resource

    times = {}
    busy0 = _busy_cpu_s()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for procs in (1, 2):
        barrier, results = ctx.Barrier(procs), ctx.Queue()
        ps = [ctx.Process(target=_ceiling_worker, args=(str(study), str(tmp / f"ceil{procs}_{i}"), args.model,
                                                        args.formats, n, barrier, results)) for i in range(procs)]
        for p in ps:
            p.start()
        times[procs] = [results.get() for _ in ps]
        for p in ps:
            p.join()
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    others = max(0.0, _busy_cpu_s() - busy0 - own)
    alone, together = times[1][0], max(times[2])
    ceiling = 2 * alone / together
    print(f"machine ceiling: {n} warm series in {alone:.1f} s alone, in {together:.1f} s each with 2 processes at once "
          f"-> at most {ceiling:.2f}x for 2 workers (load average 1 min {os.getloadavg()[0]:.2f}; other processes "
          f"used {others:.1f} CPU s meanwhile)")
    return ceiling


def _steady_rate(done_times: list, workers: int) -> float:
    """Series per minute between the ``workers``-th finished series and the last one."""
    t = sorted(done_times)
    if len(t) <= workers or t[-1] <= t[workers - 1]:
        return float("nan")
    return (len(t) - workers) / (t[-1] - t[workers - 1]) * 60


def bench_workers(study: Path, tmp: Path, args) -> None:
    from medseg.batch import SegmenterSpec
    from medseg.batch.pool import available_cores

    cores = available_cores()

    model = None if args.model == "default" else args.model  # "default": the bundled default model
    # one thread per worker in every run: the ratio measures process parallelism
    spec = SegmenterSpec(model, "cpu", threads=1 if args.model != "threshold" else None)
    runs = [("1 worker, 1 thread", spec, 1), ("2 workers, 1 thread each", spec, 2)]
    if args.threads_baseline and args.model != "threshold":
        runs.append((f"1 worker, {cores} threads", SegmenterSpec(model, "cpu", threads=cores), 1))
    print(f"{args.series} series {tuple(args.shape)}, model {args.model}, formats {args.formats}, "
          f"{cores} cores, " + ("each run in a new interpreter (as `medseg batch`)" if args.fresh else
                                "runs in this process (later runs find modules imported)"))
    for rep in range(args.repeat):
        res = {}
        load_before = os.getloadavg()
        for i, (name, sp, workers) in enumerate(runs):
            if args.fresh:
                r = res[i] = _fresh_run(study, tmp / f"out{rep}_{i}", args, sp.threads, workers)
            else:
                r = res[i] = _timed_run(study, tmp / f"out{rep}_{i}", args, sp, workers)
            print(f"  {name:26s}: {r['wall']:6.1f} s -> {r['rate']:6.2f} series/min  (discovery until "
                  f"{r['discovered']:.1f} s, last series done at {r['last_series']:.1f} s, end {r['wall']:.1f} s; "
                  f"CPU: this run {r['own_cpu']:.1f} s, other processes {r['others_cpu']:.1f} s)")
        load_after = os.getloadavg()
        steady = {i: _steady_rate(r["done_times"], workers) for i, (r, (_, _, workers)) in
                  enumerate(zip(res.values(), runs))}
        print(f"  steady state (after each worker's first series, start-up excluded): "
              + ", ".join(f"{runs[i][0]} {v:.2f}" for i, v in steady.items()) + " series/min -> "
              f"{steady[1] / steady[0]:.2f}x")
        line = f"run {rep + 1}: speed-up 2 vs 1 workers: {res[1]['rate'] / res[0]['rate']:.2f}x"
        if len(runs) > 2:
            line += f"; 2 workers vs 1 worker with {cores} threads: {res[1]['rate'] / res[2]['rate']:.2f}x"
        print(f"{line} (goal >= 1.8x where CPU-bound; load average 1 min {load_before[0]:.2f} before, "
              f"{load_after[0]:.2f} after)")


def bench_seg(tmp: Path, args) -> None:
    from medseg.export import read_dicom_seg, write_dicom_seg
    from medseg.io import read_volume
    from medseg.io.dicom_write import write_dicom_series
    from medseg.core.labels import LabelTable
    from medseg.samples.phantom import default_phantom_affine, make_phantom
    from medseg.core.segmentation import Segmentation

    shape = (64, 256, 256)
    image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (4.0, 1.4, 1.4)), seed=1)
    write_dicom_series(image, tmp / "segsrc", seed="segsrc")
    vol = read_volume(tmp / "segsrc")
    rng = np.random.default_rng(0)
    for n in args.labels:
        # n blobs spread through the volume (Voronoi cells of random seeds inside a central box)
        seeds = rng.uniform([4, 30, 30], [60, 226, 226], size=(n, 3))
        zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij", sparse=True)
        best = np.full(shape, np.inf, np.float32)
        lab = np.zeros(shape, np.uint16)
        for i, c in enumerate(seeds, start=1):
            d = ((zz - c[0]) * 4) ** 2 + ((yy - c[1]) * 1.4) ** 2 + ((xx - c[2]) * 1.4) ** 2
            take = (d < best) & (d < 40.0 ** 2)
            lab[take] = i
            best = np.where(take, d, best)
        seg = Segmentation(vol.with_array(lab), LabelTable.from_names([f"structure_{i}" for i in range(1, n + 1)]))
        for kind in ("binary", "labelmap"):
            t0 = time.perf_counter()
            p = write_dicom_seg(seg, tmp / f"seg_{n}_{kind}.dcm", source=vol, segmentation_type=kind)
            tw = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = read_dicom_seg(p, source=vol, segmentation=seg)
            tr = time.perf_counter() - t0
            ok = np.array_equal(back, lab)
            print(f"SEG {kind:8s} {n:4d} labels on {shape}: write {tw:6.1f} s, read back {tr:6.1f} s, "
                  f"{p.stat().st_size / 1e6:6.1f} MB, exact={ok}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=6)
    ap.add_argument("--shape", type=int, nargs=3, default=(48, 160, 160))
    ap.add_argument("--model", default="threshold", help="'threshold', 'default' (bundled model) or a model name/path")
    ap.add_argument("--formats", default="nifti,seg,rtstruct,stl,stats")
    ap.add_argument("--labels", type=int, nargs="*", default=[10, 50, 100])
    ap.add_argument("--repeat", type=int, default=1, help="repeat the 1 vs 2 workers comparison")
    ap.add_argument("--threads-baseline", action="store_true",
                    help="also run 1 worker with torch's default threads (learned models)")
    ap.add_argument("--fresh", action="store_true",
                    help="run each batch in a new interpreter, timed from its start (what `medseg batch` users see)")
    ap.add_argument("--ceiling", action="store_true",
                    help="first measure what 2 processes gain on this machine (same warm series, 1 vs 2 at once)")
    ap.add_argument("--skip-workers", action="store_true")
    ap.add_argument("--run-once", nargs=2, metavar=("STUDY", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_once:
        _run_once(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="medseg-bench-batch-"))
    try:
        if not args.skip_workers:
            make_study(tmp / "study", args.series, tuple(args.shape))
            if args.ceiling:
                bench_ceiling(tmp / "study", tmp, args)
            bench_workers(tmp / "study", tmp, args)
        if args.labels:
            bench_seg(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
