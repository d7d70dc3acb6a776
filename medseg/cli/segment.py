"""``medseg segment IN OUT``: automatic segmentation with a model (default: the bundled one)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment a scan with a model (CPU or CUDA)",
                       description="Segment IN (DICOM folder, NIfTI, NRRD, MHA) and write the label map to OUT "
                                   "(with a .labels.json sidecar) on the input grid.")
    p.add_argument("input", help="DICOM folder or file, .nii[.gz], .nrrd, .mha")
    p.add_argument("output", help="label map .nii[.gz], .nrrd or .mha")
    p.add_argument("--model", default=None, help="bundled model name (medseg models), model .yaml, training output "
                                                 "folder, .safetensors checkpoint or MONAI bundle folder")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--probabilities", action="store_true",
                   help="also write per-class probabilities (C, Z, Y, X) beside OUT as <name>.probabilities.nii.gz")
    p.add_argument("--series", help="SeriesInstanceUID when the DICOM folder holds several")
    p.add_argument("--no-postprocess", action="store_true", help="skip the model's per-label clean-up")
    p.add_argument("--allow-code", action="store_true",
                   help="let a MONAI bundle's config run code ($ expressions, any _target_); only for bundles you trust")
    from medseg.cli._output import add_overwrite

    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medseg.cli._progress import tqdm_progress
    from medseg.inference import segment
    from medseg.io import read_volume, write_segmentation, write_volume
    from medseg.io.atomic import full_suffix
    from medseg.io import sidecar_path
    from medseg.io.output_policy import check_output_file, protect_inputs
    from medseg.models import load_model

    out = Path(args.output)
    suffix = full_suffix(out)
    ppath = out.with_name(out.name[: len(out.name) - len(suffix)] + ".probabilities" + suffix)
    model_path = args.model if args.model and Path(args.model).exists() else None
    with protect_inputs([args.input, model_path]):
        for path in [out, sidecar_path(out)] + ([ppath] if args.probabilities else []):
            check_output_file(path, overwrite=args.overwrite)
        with tqdm_progress("reading") as progress:
            volume = read_volume(args.input, series_uid=args.series, progress=progress)
        model = load_model(args.model, device=args.device, allow_code=args.allow_code)
        _print_card(model, volume)
        with tqdm_progress("segmenting") as progress:
            seg = segment(volume, model=model, probabilities=args.probabilities,
                          postprocess=not args.no_postprocess, progress=progress)
        write_segmentation(seg, out, overwrite=args.overwrite)
        if seg.probabilities is not None:
            write_volume(seg.probabilities, ppath, overwrite=args.overwrite)
            log.info("wrote %s", ppath)
    vols = seg.volumes_ml()
    log.info("volumes (mL): %s", ", ".join(f"{seg.labels[i].name} {v:.1f}" for i, v in vols.items()))
    print(args.output)
    return 0


def _print_card(model, volume) -> None:
    """Print the model's card (training data, modality, intended use) and warn when the scan
    is outside what the model saw (demonstration model, other modality, intensities, FOV)."""
    import sys

    from medseg.models.card import card_for, domain_warnings

    try:
        card = card_for(model)
    except Exception as exc:  # noqa: BLE001 - a card is information, never a reason to fail
        log.warning("no model card: %s", exc)
        return
    print(card.summary(), file=sys.stderr)
    for warning in domain_warnings(volume, card):
        log.warning("WARNING: %s", warning)
