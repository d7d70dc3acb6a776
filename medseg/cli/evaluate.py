"""``medseg evaluate REFERENCE PREDICTION -o FOLDER``: gold-standard QA report."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score a segmentation against a gold standard (Dice, HD95, lesions, plots)",
        description="Per-class Dice, IoU, HD95, surface Dice, mIoU, confusion matrix, volume differences "
                    "and lesion detection of PREDICTION against REFERENCE, written as JSON, CSV and PNG.")
    p.add_argument("reference", help="gold-standard label map (.nii.gz, .nrrd, .mha; label table from .labels.json)")
    p.add_argument("prediction", help="label map to score, on the same grid")
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    p.add_argument("--image", help="image shown under the error overlays")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance in mm (default 2)")
    p.add_argument("--lesion-labels", type=int, nargs="*", default=None,
                   help="label indices scored per lesion (default: tumour/lesion labels of the table)")
    p.add_argument("--min-overlap", type=float, default=0.1,
                   help="share of a reference lesion to cover for a hit (default 0.1)")
    p.add_argument("--no-plots", action="store_true", help="write JSON and CSV only")
    from medseg.cli._output import add_overwrite

    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.cli._progress import tqdm_progress
    from medseg.analysis.evaluate import evaluate, write_report
    from medseg.io import read_segmentation, read_volume
    from medseg.io.output_policy import check_output_dir, protect_inputs

    with protect_inputs([args.reference, args.prediction, args.image]):
        check_output_dir(args.output, overwrite=True)
        reference = read_segmentation(args.reference)
        prediction = read_segmentation(args.prediction)
        image = read_volume(args.image) if args.image else None
        with tqdm_progress("evaluating") as progress:
            report = evaluate(reference, prediction, tolerance_mm=args.tolerance_mm, lesion_labels=args.lesion_labels,
                              lesion_min_overlap=args.min_overlap, progress=progress)
        paths = write_report(report, args.output, reference=reference, prediction=prediction, image=image,
                             plots=not args.no_plots, overwrite=args.overwrite)
    for row in report.per_class:
        log.info("%-20s Dice %.3f  HD95 %s mm", row["name"], row["dice"], f"{row['hd95_mm']:.1f}")
    print(f"mean Dice {report.mean_dice:.4f}  mIoU {report.mean_iou:.4f}  report {paths['json']}")
    return 0
