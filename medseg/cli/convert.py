"""``medseg convert IN OUT``: convert an image or label map between formats."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a DICOM series / NIfTI / NRRD / MHA to NIfTI, NRRD or MHA",
                       description="Convert an image (or, with --labels, a label map) keeping its geometry exactly.")
    p.add_argument("input", help="DICOM folder or file, .nii[.gz], .nrrd, .mha; a DICOM SEG or RTSTRUCT file is "
                                 "written as a label map on the grid of its source series (next to it)")
    p.add_argument("output", help="output .nii[.gz], .nrrd or .mha")
    p.add_argument("--series", help="SeriesInstanceUID to convert when the folder holds several")
    p.add_argument("--labels", action="store_true", help="treat the input as a label map (keeps its .labels.json)")
    from medseg.cli._output import add_overwrite

    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.cli._progress import tqdm_progress
    from medseg.export.reopen import dicom_object_kind, read_dicom_labels
    from medseg.io import read_segmentation, read_volume, sidecar_path, write_segmentation, write_volume
    from medseg.io.output_policy import check_output_file, protect_inputs

    labels_out = args.labels or bool(dicom_object_kind(args.input))
    with protect_inputs([args.input] + ([sidecar_path(args.input)] if args.labels else [])):
        for path in [args.output] + ([sidecar_path(args.output)] if labels_out else []):
            check_output_file(path, overwrite=args.overwrite)
        if dicom_object_kind(args.input):  # a DICOM SEG / RTSTRUCT: onto its source series' grid
            write_segmentation(read_dicom_labels(args.input), args.output, overwrite=args.overwrite)
        elif args.labels:
            write_segmentation(read_segmentation(args.input), args.output, overwrite=args.overwrite)
        else:
            with tqdm_progress("reading") as progress:
                volume = read_volume(args.input, series_uid=args.series, progress=progress)
            write_volume(volume, args.output, overwrite=args.overwrite)
    log.info("wrote %s", args.output)
    print(args.output)
    return 0
