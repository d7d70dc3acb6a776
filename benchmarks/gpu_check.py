"""Short GPU check: CUDA + mixed-precision inference works and its speed-up over CPU.

Run on a machine with a GPU (never required by tests)::

    python benchmarks/gpu_check.py            # prints one line per device and the speed-up

Uses the bundled default model with its target spacing set to the input spacing (so the
network sees every voxel of a 512 x 512 x 128 volume), the same volume on both devices.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from medseg.inference import segment
from medseg.models import load_model
from medseg.samples.phantom import default_phantom_affine, make_phantom


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch; nothing to check")
    shape, spacing = (128, 512, 512), (2.0, 0.8, 0.8)
    image, ref = make_phantom(shape=shape, affine=default_phantom_affine(shape, spacing), seed=3)
    times, maps = {}, {}
    for device in ("cuda", "cpu"):
        model = load_model(device=device)
        pre = replace(model.config.preprocessing, target_spacing=spacing)
        model = replace(model, config=replace(model.config, preprocessing=pre))
        segment(image, model=model)  # warm-up (cuDNN autotune, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        seg = segment(image, model=model)
        if device == "cuda":
            torch.cuda.synchronize()
        times[device] = time.perf_counter() - t0
        maps[device] = seg.array
        print(f"{device}: {times[device]:.2f} s (autocast float16: {device == 'cuda'}); "
              f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}", flush=True)
    agree = float(np.mean(maps["cuda"] == maps["cpu"]))
    print(f"speed-up cuda/cpu: {times['cpu'] / times['cuda']:.1f}x; voxel agreement cuda vs cpu: {agree:.5f}")
    if torch.cuda.is_available():
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
