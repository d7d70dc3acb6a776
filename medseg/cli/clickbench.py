"""``medseg clickbench``: robot-user click benchmark on your own images and labels.

A simulated user clicks each labelled structure: first at its most interior voxel, then at
the most interior voxel of the largest error (positive for a miss, negative for a leak).
With ``--robot box`` the first prompt is instead the target's 2D box on its largest axial slice
(padded by 1 voxel). Reports Dice after 1/3/5 interactions, surface Dice at 2 mm and HD95 after 5 clicks, clicks to reach
Dice 0.9 and the latency per click.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clickbench", help="robot-user click-to-segment benchmark on images + labels",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", help="image file or folder (NIfTI, NRRD, MHA, DICOM)")
    p.add_argument("labels", help="label map file or folder (same file names as the images)")
    p.add_argument("--targets", nargs="*", default=None, help="label names or indices to test (default: all)")
    p.add_argument("--engine", default="classical",
                   help="'classical' (training-free, default), 'medsam' (LiteMedSAM), 'fused' (either, chosen per object; "
                        "Session's default when LiteMedSAM's weights are installed) or a learned model name/config path")
    p.add_argument("--robot", choices=["click", "box"], default="click",
                   help="first prompt: a click at the most interior voxel (default) or a 2D box")
    p.add_argument("--max-clicks", type=int, default=10, help="clicks per target (default 10; ≥ 5)")
    p.add_argument("--min-voxels", type=int, default=20, help="skip labels smaller than this")
    p.add_argument("--json", dest="json_out", default=None, help="write per-target figures to this JSON file")
    from medseg.cli._output import add_overwrite

    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.cli._progress import tqdm_progress
    from medseg.interactive.bench import find_cases, format_table, run_benchmark, summarise

    from medseg.io.atomic import atomic_path
    from medseg.io.output_policy import check_output_file, protect_inputs

    if args.json_out:
        with protect_inputs([args.images, args.labels]):
            check_output_file(args.json_out, overwrite=args.overwrite)
    cases = find_cases(args.images, args.labels, targets=args.targets, min_voxels=args.min_voxels)
    with tqdm_progress("clicking") as progress:
        rows = run_benchmark(cases, engine=args.engine, max_clicks=max(5, args.max_clicks), progress=progress,
                             first=args.robot)
    summary = summarise(rows)
    print(format_table(rows, summary))
    if args.json_out:
        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v
        data = {"summary": {k: clean(v) for k, v in summary.items()},
                "targets": [{k: clean(v) for k, v in r.items()} for r in rows]}
        with protect_inputs([args.images, args.labels]), atomic_path(args.json_out, overwrite=args.overwrite) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
    return 0
