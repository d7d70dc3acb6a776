"""``medseg uncertainty IMAGE -o FOLDER``: segmentation plus uncertainty maps and a review list."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "uncertainty", help="segment with uncertainty: TTA, MC dropout or an ensemble → heatmaps, review list",
        description="Segment IMAGE several times (test-time augmentation, MC dropout or an ensemble of models) "
                    "and write the mean segmentation, entropy / mutual-information / variance maps on the input "
                    "grid, per-structure uncertainty scores and a ranked list of slices worth reviewing.")
    p.add_argument("image", help="DICOM folder or file, .nii[.gz], .nrrd, .mha")
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    p.add_argument("--method", choices=["tta", "mc_dropout", "ensemble"], default="tta")
    p.add_argument("--model", help="model name, .yaml, checkpoint or folder (default: bundled model)")
    p.add_argument("--models", nargs="+", help="for --method ensemble: two or more models or checkpoints")
    p.add_argument("--samples", type=int, default=8, help="TTA views (1-8) or dropout passes (default 8)")
    p.add_argument("--series", help="SeriesInstanceUID when the DICOM folder holds several")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--top", type=int, default=20, help="entries of the review list (default 20)")
    p.add_argument("--format", choices=[".nii.gz", ".nrrd", ".mha"], default=".nii.gz", help="output image format")
    from medseg.cli._output import add_overwrite

    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.cli._progress import tqdm_progress
    from medseg.io import read_volume
    from medseg.io.output_policy import check_output_dir, protect_inputs
    from medseg.inference import uncertainty_predictors
    from medseg.analysis.uncertainty import estimate_uncertainty, review_list, write_uncertainty

    with protect_inputs([args.image]):
        check_output_dir(args.output, overwrite=True)  # a file, an input? (existing outputs: at writing)
        with tqdm_progress("reading") as progress:
            volume = read_volume(args.image, series_uid=args.series, progress=progress)
        with tqdm_progress(args.method) as progress:
            predictors = uncertainty_predictors(args.method, args.model, args.models, device=args.device)
            result = estimate_uncertainty(volume, predictors, method=args.method, samples=args.samples,
                                          progress=progress)
        paths = write_uncertainty(result, args.output, suffix=args.format, top=args.top, overwrite=args.overwrite)
    for item in review_list(result, top=min(args.top, 5)):
        log.info("review #%d: %s on slice k=%d (%.1f mL uncertain)", item.rank, item.name, item.slice_index,
                 item.uncertain_ml)
    print(paths["json"])
    return 0
