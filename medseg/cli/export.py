"""``medseg export LABELS --image SRC --formats ... OUT_DIR``: export one segmentation."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a label map as NIfTI/NRRD, DICOM SEG, RTSTRUCT, STL meshes and statistics",
        description="Write LABELS (a label map with its .labels.json) in the requested formats into OUT_DIR. "
                    "DICOM SEG and RTSTRUCT need --image to be the source DICOM series folder; the label map "
                    "must lie on its grid.")
    p.add_argument("labels", help="label map (.nii.gz, .nrrd, .mha) with an optional .labels.json beside it")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--image", default=None, help="source image: DICOM folder (needed for seg/rtstruct) or file")
    p.add_argument("--series", default=None, help="SeriesInstanceUID of --image when the folder holds several")
    p.add_argument("--formats", default="nifti,stats", help="comma-separated: nifti,nrrd,seg,rtstruct,stl,stats")
    p.add_argument("--algorithm", default=None, help="name of the model that made the labels (SEG/RTSTRUCT)")
    p.add_argument("--seg-type", choices=("binary", "labelmap"), default="binary", help="DICOM SEG encoding")
    from medseg.cli._output import add_overwrite

    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.export import export_segmentation
    from medseg.io import read_segmentation, read_volume, sidecar_path
    from medseg.io.output_policy import check_output_dir, protect_inputs
    from medseg.core.segmentation import Segmentation

    with protect_inputs([args.labels, sidecar_path(args.labels), args.image]):
        # the files this export writes are checked by export_segmentation; here, before any
        # reading: the folder is not a file, not an input and holds no input
        check_output_dir(args.out_dir, overwrite=True)
        seg = read_segmentation(args.labels)
        image = None
        if args.image:
            image = read_volume(args.image, series_uid=args.series)
            image.require_same_grid(seg.label_map, what=f"label map {args.labels}", atol=0.01)
            # the label map file may carry rounding of the affine; place it exactly on the image grid
            seg = Segmentation(image.with_array(seg.array), seg.labels)
        result = export_segmentation(seg, args.out_dir, formats=args.formats, image=image, algorithm=args.algorithm,
                                     seg_type=args.seg_type, overwrite=args.overwrite)
    for fmt, files in result["files"].items():
        for f in files:
            print(f"{fmt}\t{args.out_dir}/{f}")
    for fmt, why in result["skipped"].items():
        log.warning("%s skipped: %s", fmt, why)
    return 0
