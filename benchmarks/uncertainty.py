"""Benchmark: test-time augmentation (8 views) relative to one inference, and what the maps are worth.

Runs through medseg.models / medseg.inference (`model_predictor`). Uses the bundled default
model when it has weights, else trains the tests' tiny phantom UNet first (~10-40 s) and saves
it as a medseg model. Prints:

* time of one inference, TTA with 8 views and MC dropout with 8 passes, as ratios;
* on held-out phantoms: overall voxel error rate vs the error rate among the 10% most
  uncertain voxels (whole volume and inside the body), for TTA and MC dropout.

    python benchmarks/uncertainty.py [--model NAME_OR_PATH] [--seeds 100 101 102] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def enrichment(unc: np.ndarray, err: np.ndarray, top: float = 0.10) -> tuple[float, float, float]:
    unc, err = unc.ravel(), err.ravel()
    n = max(1, int(round(top * unc.size)))
    order = np.argsort(-unc, kind="stable")[:n]
    overall, top_rate = float(err.mean()), float(err[order].mean())
    return overall, top_rate, (top_rate / overall if overall else float("inf"))


def main() -> None:
    import torch

    from medseg.core.errors import ModelError
    from medseg.models import load_model
    from medseg.samples.phantom import make_phantom
    from medseg.inference import model_predictor
    from medseg.analysis.uncertainty import mc_dropout_uncertainty, tta_uncertainty

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--tiny", action="store_true", help="use the tests' tiny phantom UNet (trained here)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--timing-shape", type=int, nargs=3, default=[40, 128, 128],
                    help="phantom grid (z, y, x) for the timings (default phantom spacing 5 x 2.7 x 2.7 mm)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()
    model = args.model
    try:
        if args.tiny:
            raise ModelError("--tiny given")
        loaded = load_model(model, device=args.device)
        grid = {}  # default phantom grid (40, 128, 128)
    except ModelError as exc:
        if model is not None:
            raise
        print(f"bundled model not used ({exc}); training the tests' tiny phantom UNet")
        sys.path.insert(0, str(ROOT / "tests"))
        from qa import tiny_model as tm

        t = time.perf_counter()
        with tm.torch_threads(args.threads):
            net = tm.train_tiny_unet()
        print(f"trained in {time.perf_counter() - t:.1f} s")
        loaded = load_model(str(tm.save_as_medseg_model(net, tmp.name)), device=args.device)
        grid = {"shape": tm.SHAPE, "affine": tm.phantom(0)[0].affine}
    print(f"model {loaded.name} on {loaded.device}")
    plain = model_predictor(loaded)
    mc_pred = model_predictor(loaded, mc_dropout=True)

    from medseg.samples.phantom import default_phantom_affine

    tshape = tuple(args.timing_shape)
    image, _ = make_phantom(seed=args.seeds[0], shape=tshape,
                            affine=default_phantom_affine(tshape, (5.0 * 40 / tshape[0], 2.7 * 128 / tshape[1],
                                                                    2.7 * 128 / tshape[2])))
    plain(image)  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        plain(image)
        times.append(time.perf_counter() - t)
    one = float(np.median(times))
    t = time.perf_counter()
    tta_uncertainty(image, plain)
    tta_t = time.perf_counter() - t
    t = time.perf_counter()
    mc_dropout_uncertainty(image, mc_pred, samples=8)
    mc_t = time.perf_counter() - t
    print(f"grid {image.shape}: one inference {one:.2f} s (median of 3); TTA 8 views {tta_t:.2f} s = "
          f"{tta_t / one:.1f}x; MC dropout 8 passes {mc_t:.2f} s = {mc_t / one:.1f}x")

    print("held-out phantom  method      region  overall-error  top10%-error  ratio")
    ratios: dict[str, list[float]] = {"TTA": [], "MC dropout": []}
    for seed in args.seeds:
        image, truth = make_phantom(seed=seed, **grid)
        body = image.array > -500
        for name, res in (("TTA", tta_uncertainty(image, plain)),
                          ("MC dropout", mc_dropout_uncertainty(image, mc_pred, samples=8))):
            err = res.segmentation.array != truth.array
            ent = res.entropy.array
            for region, sel in (("volume", slice(None)), ("body", body)):
                o, tr, r = enrichment(ent[sel], err[sel])
                print(f"  seed {seed:<8d} {name:11s} {region:7s} {o:12.4f}  {tr:12.4f}  {r:5.1f}x")
                if region == "volume":
                    ratios[name].append(r)
    # do the per-structure scores point at the structures that are actually wrong?
    from medseg.analysis import metrics
    from medseg.analysis.uncertainty import review_list, structure_scores

    image, truth = make_phantom(seed=args.seeds[0], **grid)
    res = tta_uncertainty(image, plain)
    print(f"seed {args.seeds[0]} TTA structure scores vs the truth (most uncertain first):")
    for sc in structure_scores(res):
        d = metrics.dice(res.segmentation.array == sc.index, truth.array == sc.index)
        print(f"  {sc.name:14s} score {sc.score:5.3f}  volume CV {sc.volume_cv:5.3f}  true Dice {d:5.3f}")
    items = review_list(res, top=10)
    err = res.segmentation.array != truth.array
    on = sum(int(err[it.slice_index].sum()) for it in {it.slice_index: it for it in items}.values())
    print(f"top-10 review items cover {len({it.slice_index for it in items})} slices of {image.shape[0]} "
          f"holding {on / max(int(err.sum()), 1):.0%} of the wrong voxels")
    for name, rs in ratios.items():
        print(f"{name}: ratio (whole volume) min {min(rs):.1f}x, median {np.median(rs):.1f}x")
    tmp.cleanup()


if __name__ == "__main__":
    main()
