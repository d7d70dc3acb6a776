"""``medseg consensus RATER ... -o OUT``: STAPLE or majority-vote consensus of label maps."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "consensus", help="fuse several label maps (STAPLE / majority vote) and measure their agreement",
        description="Consensus of N label maps of one image: the fused label map, per-rater sensitivity and "
                    "specificity, soft probabilities, a disagreement map and pairwise agreement (Dice, IoU, "
                    "HD95, surface Dice per label).")
    p.add_argument("raters", nargs="+", help="label maps on one grid (.nii.gz, .nrrd, .mha)")
    p.add_argument("-o", "--output", required=True, help="consensus label map (.nii.gz, .nrrd, .mha)")
    p.add_argument("--method", choices=["staple", "majority"], default="staple")
    p.add_argument("--names", nargs="*", help="rater names (default: file names)")
    p.add_argument("--probabilities", help="write the (C, Z, Y, X) consensus probabilities here")
    p.add_argument("--disagreement", help="write the disagreement map (fraction of raters) here")
    p.add_argument("--report", help="write per-rater performance and agreement matrices as JSON here")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance in mm (default 2)")
    from medseg.cli._output import add_overwrite

    add_overwrite(p)
    p.set_defaults(func=run)


def _stem(path: str) -> str:
    name = Path(path).name
    for s in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(s):
            return name[: -len(s)]
    return name


def run(args: argparse.Namespace) -> int:
    from medseg.io import sidecar_path
    from medseg.io.output_policy import check_output_file, protect_inputs

    inputs = list(args.raters) + [sidecar_path(p) for p in args.raters]
    outputs = [args.output, sidecar_path(args.output), args.probabilities, args.disagreement, args.report]
    with protect_inputs(inputs):
        for path in filter(None, outputs):
            check_output_file(path, overwrite=args.overwrite)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from medseg.cli._progress import tqdm_progress
    from medseg.analysis.consensus import agreement_matrices, consensus
    from medseg.core.errors import InputError
    from medseg.analysis.evaluate import json_ready
    from medseg.io import read_segmentation, write_segmentation, write_volume
    from medseg.io.atomic import atomic_path

    segs = [read_segmentation(p) for p in args.raters]
    names = args.names or [_stem(p) for p in args.raters]
    if len(names) != len(segs):
        raise InputError(f"--names has {len(names)} entries for {len(segs)} label maps")
    with tqdm_progress(args.method) as progress:
        result = consensus(segs, method=args.method, names=names, probabilities=bool(args.probabilities),
                           progress=progress)
    write_segmentation(result.segmentation, args.output, overwrite=args.overwrite)
    if args.probabilities:
        write_volume(result.segmentation.probabilities, args.probabilities, overwrite=args.overwrite)
    if args.disagreement:
        write_volume(result.disagreement, args.disagreement, overwrite=args.overwrite)
    if args.report:
        with tqdm_progress("agreement") as progress:
            agreement = agreement_matrices(segs, spacing=segs[0].label_map.spacing, names=names,
                                           tolerance_mm=args.tolerance_mm, progress=progress)
        with atomic_path(args.report, overwrite=args.overwrite) as tmp:
            Path(tmp).write_text(json.dumps(json_ready(
                {"method": result.method, "raters": result.raters, "agreement": agreement.to_dict()}), indent=2) + "\n")
    for row in result.raters:
        log.info("rater %s", json.dumps(json_ready(row)))
    print(args.output)
    return 0
