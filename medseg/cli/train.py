"""``medseg train DATA OUT``: train or fine-tune a model on images and labels."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a segmentation model",
                       description="Train a model config on imagesTr/labelsTr (or a Decathlon dataset.json); "
                                   "writes best/last checkpoints, model.yaml and history.json to OUT. "
                                   "Segment with it: medseg segment IN SEG --model OUT")
    p.add_argument("data", nargs="?", help="dataset folder (imagesTr/ + labelsTr/, or dataset.json)")
    p.add_argument("output", nargs="?", help="output folder for checkpoints")
    p.add_argument("--config", default=None, help="model config: bundled name or .yaml (default: the default model's)")
    p.add_argument("--training-config", help="YAML with training settings (keys of TrainingConfig)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iterations", type=int, help="iterations per epoch")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="training crop on the model grid")
    p.add_argument("--val-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-minutes", type=float, help="stop after this much wall time")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in OUT")
    p.add_argument("--init", help="fine-tune: start from this checkpoint (.safetensors, or a model folder)")
    p.add_argument("--phantoms", type=int, metavar="N",
                   help="first write N generated phantoms (varied grids) into DATA, then train on them "
                        "(with --interactive: train on N generated phantoms)")
    p.add_argument("--phantom-seed", type=int, default=0)
    p.add_argument("--interactive", action="store_true",
                   help="train the learned click-guided model (medseg.interactive.learned) instead")
    from medseg.cli._output import add_overwrite

    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medseg.core.errors import InputError

    if not args.data or not args.output:
        raise InputError("medseg train needs DATA and OUTPUT folders: medseg train DATA OUT [--config NAME]")
    from medseg.core.errors import OutputError
    from medseg.io.output_policy import check_output_dir, is_inside, protect_inputs, same_path

    # the dataset folder may hold the run folder (its files have other names), but not be it or lie in it
    if same_path(args.output, args.data) or is_inside(args.data, args.output):
        raise OutputError(args.output, f"is or contains the dataset folder {args.data}",
                          "choose an output folder outside the dataset")
    inputs = [args.init, args.training_config, args.config if args.config and Path(args.config).exists() else None]
    with protect_inputs(inputs):
        # resuming continues the run in OUTPUT: its files are meant to be replaced
        check_output_dir(args.output, overwrite=args.overwrite or args.resume, will_write=TRAIN_OUTPUTS)
        return _run(args)


TRAIN_OUTPUTS = ("best.safetensors", "last.safetensors", "model.yaml", "history.json", "state.pt",
                 "interactive_model.safetensors")


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from medseg.cli._progress import tqdm_progress
    from medseg.core.errors import DependencyError, InputError

    if args.interactive:
        try:
            from medseg.interactive.learned import train_interactive
        except ImportError as exc:
            raise DependencyError(f"--interactive needs medseg.interactive.learned.train_interactive, which is not "
                                  f"available in this installation ({exc})") from exc
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        data = None if args.phantoms else (Path(args.data) / "imagesTr", Path(args.data) / "labelsTr")
        if data is not None and not all(d.is_dir() for d in data):
            raise InputError(f"{args.data}: --interactive needs imagesTr/ and labelsTr/ (or --phantoms N)")
        kwargs = {}
        if args.iterations:
            kwargs["iterations"] = args.iterations * (args.epochs or 1)
        if args.phantoms:
            kwargs["n_phantoms"] = args.phantoms
        if args.seed is not None:
            kwargs["seed"] = args.seed
        with tqdm_progress("training") as progress:
            result = train_interactive(data, out / "interactive_model.safetensors", progress=progress, **kwargs)
        print(result["config"])
        return 0

    from medseg.models import load_config
    from medseg.models.loader import find_config
    from medseg.training import TrainingConfig, load_training_config, train

    if args.phantoms:
        from medseg.training.phantom_dataset import write_phantom_dataset

        with tqdm_progress("phantoms") as progress:
            write_phantom_dataset(args.data, args.phantoms, args.phantom_seed, progress=progress)
    path = find_config(args.config)
    if path.is_dir():
        path = path / "model.yaml"
    config = load_config(path)
    tc = load_training_config(args.training_config) if args.training_config else TrainingConfig()
    overrides = {"epochs": args.epochs, "iterations_per_epoch": args.iterations, "batch_size": args.batch_size,
                 "learning_rate": args.lr, "val_every": args.val_every, "seed": args.seed,
                 "max_minutes": args.max_minutes, "device": args.device,
                 "patch_size": tuple(args.patch_size) if args.patch_size else None}
    tc = replace(tc, **{k: v for k, v in overrides.items() if v is not None})
    init = args.init
    if init and Path(init).is_dir():
        init = str(Path(init) / "best.safetensors")
    with tqdm_progress("training") as progress:
        result = train(args.data, args.output, config=config, training=tc, resume=args.resume, init=init,
                       progress=progress)
    last = next((h for h in reversed(result.history) if "dice" in h), None)
    if last:
        log.warning("validation Dice (epoch %d): %s", last["epoch"],
                    ", ".join(f"{k} {v:.3f}" for k, v in last["dice"].items()))
    print(result.model_yaml)
    return 0
