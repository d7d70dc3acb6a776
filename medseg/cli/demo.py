"""``medseg demo``: the main job on the bundled sample study.

Reads the sample DICOM series, segments it with the bundled default model, writes the label
map (NIfTI + label table), DICOM SEG, RTSTRUCT, STL meshes and statistics, and scores the
result against the sample's reference labels.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment and export the bundled sample CT study",
                       description=__doc__)
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.cli._progress import tqdm_progress
    from medseg.export import export_segmentation
    from medseg.inference import segment
    from medseg.io import read_segmentation, read_volume
    from medseg.analysis.metrics import dice
    from medseg.samples import sample_dicom_dir, sample_labels

    out = Path(args.out)
    with tqdm_progress("reading DICOM") as progress:
        image = read_volume(sample_dicom_dir(), progress=progress)
    print(f"image  {image}")
    with tqdm_progress("segmenting") as progress:
        seg = segment(image, device=args.device, progress=progress)
    # the demo folder is the demo's own: a rerun replaces its previous output
    written = export_segmentation(seg, out, image=image, formats=("nifti", "seg", "rtstruct", "stl", "stats"),
                                  overwrite=True)
    reference = read_segmentation(sample_labels())
    scores = {}
    for label in seg.labels:
        if label.index in reference.labels:
            scores[label.name] = round(float(dice(seg.array == label.index, reference.array == label.index)), 4)
    (out / "dice_vs_reference.json").write_text(json.dumps(scores, indent=2) + "\n")
    for kind, names in written.get("files", {}).items():
        print(f"{kind:9s} " + ", ".join(str(out / n) for n in names))
    for row in written.get("statistics", {}).get("labels", []):
        print(f"  {row['name']:14s} {row['volume_ml']:9.1f} mL  mean {row['mean']:7.1f} HU")
    print("Dice vs reference: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0
