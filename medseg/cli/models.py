"""``medseg models``: list the bundled model configs; export a model as a MONAI bundle."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list bundled models; export one as a MONAI bundle",
                       description="List bundled model configs (name, network, labels, trained or not). "
                                   "With --export-bundle, write MODEL as a MONAI bundle folder.")
    p.add_argument("--export-bundle", metavar="FOLDER", help="write the model as a MONAI bundle to FOLDER")
    p.add_argument("--model", default=None, help="model to export (default: the bundled default)")
    from medseg.cli._output import add_overwrite

    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.export_bundle:
        from medseg.models import load_model
        from medseg.io.output_policy import check_output_dir, protect_inputs
        from medseg.models.bundle import export_bundle

        model_path = args.model if args.model and Path(args.model).exists() else None
        with protect_inputs([model_path]):
            check_output_dir(args.export_bundle, overwrite=args.overwrite, will_write=("configs", "models", "docs"))
            out = export_bundle(load_model(args.model, device="cpu"), args.export_bundle)
        print(out)
        return 0
    from medseg.models import DEFAULT_MODEL, list_models

    for m in list_models():
        flag = "trained" if m.trained else "config only (train with `medseg train --config " + m.name + "`)"
        default = " [default]" if m.name == DEFAULT_MODEL else ""
        print(f"{m.name}{default}: {m.network} {m.spatial_dims}D, labels {', '.join(m.labels)}; {flag}")
        if m.description:
            print(f"    {m.description}")
    return 0
