"""Per-organ Dice of a model on held-out generated phantoms (the figures in the model card).

Held-out phantoms use seeds 5000+ (training used 1000–1039) and varied grids (spacing, flips,
oblique), segmented with ``medseg.inference.segment`` on their own grid::

    python benchmarks/default_model_dice.py [--model phantom_ct_unet] [--n 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import torch

    from medseg.inference import segment
    from medseg.analysis.metrics import dice
    from medseg.models import load_model
    from medseg.samples.phantom import make_phantom
    from medseg.training.phantom_dataset import random_phantom_grid

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--axis-aligned", choices=["config", "yes", "no"], default="config",
                    help="override the config's preprocessing.axis_aligned")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    if args.axis_aligned != "config":
        from dataclasses import replace

        pre = replace(model.config.preprocessing, axis_aligned=args.axis_aligned == "yes")
        model = replace(model, config=replace(model.config, preprocessing=pre))
    names = [model.config.labels[i] for i in sorted(model.config.labels)]
    scores = {n: [] for n in names}
    orient, times = [], []
    for c in range(args.n):
        s = args.seed + c
        shape, affine = random_phantom_grid(np.random.default_rng(10_000 + s))
        image, ref = make_phantom(shape=shape, affine=affine, seed=s)
        t0 = time.perf_counter()
        seg = segment(image, model=model)
        times.append(time.perf_counter() - t0)
        assert seg.label_map.same_grid(image)
        oblique = not np.allclose(np.abs(image.direction), np.round(np.abs(image.direction)), atol=1e-6)
        orient.append(image.orientation + (" oblique" if oblique else ""))
        for i, n in enumerate(names, start=1):
            if (ref.array == i).any():
                scores[n].append(float(dice(seg.array == i, ref.array == i)))
    print(f"model {model.name} (axis_aligned={model.config.preprocessing.axis_aligned}); {args.n} held-out phantoms (seeds {args.seed}..{args.seed + args.n - 1}); "
          f"grids: {', '.join(orient)}; segment time median {np.median(times):.2f} s")
    print("| structure | mean Dice | min Dice |\n| --- | --- | --- |")
    for n in names:
        v = scores[n]
        print(f"| {n} | {np.mean(v):.3f} | {np.min(v):.3f} |")


if __name__ == "__main__":
    main()
