"""End-to-end ``medseg.inference.segment`` vs raw MONAI ``sliding_window_inference``.

Same network (the bundled default model's), same input, same run. Each measurement runs in a
fresh subprocess so that peak RSS (``VmHWM``) belongs to that measurement only.

Baseline: after the imports and the model load, both sides run the network once on one
window of zeros (the model's patch size), give the allocator's free pages back to the OS
(:func:`medseg.core.memory.release_free_memory`) and reset the process's peak RSS
(``/proc/self/clear_refs``); the baseline is the resident set then, and the figures are the
peak above it. The warm-up takes out one-time runtime state that does not depend on the
volume: on the first forward pass MKL keeps about 41 MB of GEMM buffers for reuse
(``MKL_DISABLE_FAST_MM=1`` makes them go away) and the convolution kernels' code pages of the
torch/MKL libraries are faulted in (about 38 MB of file-backed RSS), for a 80 x 64 x 48 window
of the bundled model. Inside the measurement these were counted, and medseg's peak on the
same 256 x 256 x 128 same-grid input varied from run to run (148 to 178 MB over some twenty
runs, earlier 120 vs 146 MB; the allocator's resident free memory
differed between runs, 48.6 vs 74 MB on the same input: our reading, not traced allocation by
allocation, is that where the MKL buffers landed among the run's own buffers decided how much
freed memory the later windows could reuse); after the warm-up it stays within 2 MB
(105.6 to 107.5 MB; raw MONAI 361.9 MB in every run). Every run's figures go to stderr.
The network's own working memory is still counted on both sides: the warm-up's activations
are released before the baseline is taken.

* ``same-grid``: the model config's target spacing is set to the input's spacing, so the
  network sees as many voxels as the raw baseline: the ratio is medseg's overhead
  (conversion, orientation, in-place softmax, inverse mapping, argmax, postprocessing).
* ``default``: the bundled model as shipped (4 mm grid) on a 0.8 x 0.8 x 1.5 mm input; the
  baseline is raw sliding-window inference on the native grid, i.e. what you would run
  without resampling.

Usage::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/inference.py [--sizes 256x256x128 512x512x300] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace

log = logging.getLogger(__name__)


def _volume(size, spacing):
    import numpy as np

    from medseg.samples.phantom import default_phantom_affine, make_phantom

    x, y, z = size
    shape = (z, y, x)
    image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, spacing), seed=1, noise_hu=10)
    return image


def _model(same_grid_spacing=None):
    from medseg.models import load_model

    m = load_model(device="cpu")
    if same_grid_spacing is not None:
        pre = replace(m.config.preprocessing, target_spacing=tuple(same_grid_spacing))
        m = replace(m, config=replace(m.config, preprocessing=pre))
    return m


def _hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM; unlike ru_maxrss it is not inherited from the parent)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _baseline_mb(model) -> float:
    """Warm the network up on one window, release the free heap, reset the peak: the resident set then."""
    import torch

    from medseg.core.memory import release_free_memory

    cfg = model.config
    roi = list(cfg.inference.patch_size)[::-1]  # (z, y, x) -> MONAI's (x, y, z) for the RAS model grid
    model.network.eval()
    with torch.inference_mode():
        model.network(torch.zeros([1, cfg.in_channels] + roi, device=model.device))
    release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
    except OSError as exc:  # pragma: no cover - not Linux, or not allowed
        sys.stderr.write(f"cannot reset the peak RSS ({exc}): the baseline includes the warm-up's peak\n")
    return _hwm_mb()


def _spacing(mode):
    return (4.0, 4.0, 4.0) if mode == "same-grid" else (1.5, 0.8, 0.8)


def one(kind: str, size, mode: str, threads: int, path: str) -> dict:
    import numpy as np
    import torch

    from medseg.samples.phantom import default_phantom_affine
    from medseg.core.volume import Volume

    import monai.inferers  # noqa: F401  (imports count in the baseline, not in the measurement)

    import medseg.inference  # noqa: F401

    torch.set_num_threads(threads)
    spacing = _spacing(mode)
    model = _model(spacing if mode == "same-grid" else None)
    base_rss = _baseline_mb(model)
    arr = np.load(path)
    image = Volume(arr, default_phantom_affine(arr.shape, spacing), {"Modality": "CT"})
    cfg = model.config
    t0 = time.perf_counter()
    if kind == "medseg":
        from medseg.inference import segment

        seg = segment(image, model=model)
        n = int(seg.array.max())
    else:
        from monai.inferers import sliding_window_inference

        x = torch.as_tensor(image.array.transpose(2, 1, 0)[None, None].astype(np.float32))
        x = ((x - cfg.preprocessing.intensity.window[0]) /
             (cfg.preprocessing.intensity.window[1] - cfg.preprocessing.intensity.window[0])).clamp_(0, 1)
        roi = list(cfg.inference.patch_size)[::-1]
        with torch.inference_mode():
            out = sliding_window_inference(x, roi, cfg.inference.sw_batch_size, model.network,
                                           overlap=cfg.inference.overlap, mode=cfg.inference.blending)
            labels = out[0].argmax(0).to(torch.uint8)
        n = int(labels.max())
    dt = time.perf_counter() - t0
    peak = _hwm_mb()
    params = sum(p.numel() * p.element_size() for p in model.network.parameters()) / 2**20
    return {"kind": kind, "mode": mode, "size": size, "seconds": dt, "peak_rss_mb": peak,
            "rss_before_mb": base_rss, "input_f32_mb": np.prod(size) * 4 / 2**20, "model_mb": params, "max_label": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["256x256x128", "512x512x300"])
    ap.add_argument("--modes", nargs="+", default=["same-grid", "default"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--one", nargs=4, metavar=("KIND", "SIZE", "MODE", "NPY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # every run's figures
    if args.one:
        kind, size, mode, path = args.one
        print(json.dumps(one(kind, tuple(int(v) for v in size.split("x")), mode, args.threads, path)))
        return
    import tempfile
    from pathlib import Path

    import numpy as np

    tmp = Path(tempfile.gettempdir()) / "medseg-bench"
    tmp.mkdir(exist_ok=True)
    print(f"{'mode':10s} {'size (x,y,z)':14s} {'raw s':>8s} {'medseg s':>9s} {'ratio':>6s} "
          f"{'raw MB':>7s} {'medseg MB':>9s} {'4xin+model MB':>13s}")
    print("(MB: peak RSS above the process baseline after imports, model load and one warm-up window, "
          "before reading the input)")
    for mode in args.modes:
        for size in args.sizes:
            npy = tmp / f"{size}-{mode}.npy"
            if not npy.exists():
                np.save(npy.with_suffix(".partial.npy"), _volume(tuple(int(v) for v in size.split("x")), _spacing(mode)).array)
                npy.with_suffix(".partial.npy").rename(npy)
            res = {}
            for kind in ("raw", "medseg"):
                runs = []
                for _ in range(args.repeats):
                    out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--one", kind, size, mode, str(npy)],
                                         capture_output=True, text=True)
                    if out.returncode:
                        sys.stderr.write(out.stderr[-2000:])
                        raise SystemExit(1)
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                log.info("%s %s %s: seconds %s, MB %s", mode, size, kind, [round(r["seconds"], 2) for r in runs],
                         [round(r["peak_rss_mb"] - r["rss_before_mb"], 1) for r in runs])
                res[kind] = {"seconds": statistics.median(r["seconds"] for r in runs),
                             "peak_rss_mb": max(r["peak_rss_mb"] - r["rss_before_mb"] for r in runs), **{k: runs[0][k] for k in ("input_f32_mb", "model_mb")}}
            r, m = res["raw"], res["medseg"]
            budget = 4 * m["input_f32_mb"] + m["model_mb"]
            print(f"{mode:10s} {size:14s} {r['seconds']:8.2f} {m['seconds']:9.2f} {m['seconds'] / r['seconds']:6.2f} "
                  f"{r['peak_rss_mb']:7.0f} {m['peak_rss_mb']:9.0f} {budget:13.0f}", flush=True)


if __name__ == "__main__":
    main()
