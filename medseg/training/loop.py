"""Train or fine-tune a model config on a folder of images and labels."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch
import yaml

from medseg.core.config import from_mapping, load_yaml
from medseg.core.errors import CheckpointError, ConfigError, InputError
from medseg.models.checkpoint import apply_weights, load_state_file, load_weights, save_state_file, save_weights
from medseg.models.config import ModelConfig, config_to_mapping
from medseg.models.registry import build_network
from medseg.core.progress import CancelCallback, ProgressCallback, check_cancel, report
from medseg.training.data import dataset_labels, find_cases, load_cases, split_cases

__all__ = ["TrainingConfig", "TrainResult", "train", "load_training_config", "evaluate_cases"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Training settings (YAML ``training:`` data or CLI flags).

    Parameters
    ----------
    epochs, iterations_per_epoch : int
        One iteration = one batch of random patches.
    batch_size : int
        Patches per iteration.
    learning_rate, weight_decay : float
    class_weights : "auto", "none" or a list
        Cross-entropy weights per channel (background first); ``auto`` = inverse square root of
        the class frequencies in the training set, normalised to mean 1. Up-weighting the
        foreground moves boundaries outwards (the bundled model painted organs ~10 % too large
        with ``auto``); fine-tune with ``none`` when volumes matter (see its model card).
    patch_size : (3,) ints, optional
        Training crop, array order ``(z, y, x)``; default (recommended) the inference patch:
        instance-normalised networks segment poorly with windows larger than their crops.
    folds, val_fold : int
        Validation = cases whose id hashes to ``val_fold`` of ``folds`` (stable as cases arrive).
    val_every : int
        Validate every N epochs (and after the last).
    seed : int
    augment : bool
        Random affine (small rotation/scale), intensity scale/shift and noise. No flips (they
        would swap left and right organs).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    max_minutes : float, optional
        Stop after the epoch during which this wall time is exceeded (validating then).
    """

    epochs: int = 50
    iterations_per_epoch: int = 20
    batch_size: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    class_weights: Union[Literal["auto", "none"], tuple[float, ...]] = "auto"
    patch_size: Optional[tuple[int, int, int]] = None
    folds: int = 5
    val_fold: int = 0
    val_every: int = 5
    seed: int = 0
    augment: bool = True
    device: str = "auto"
    max_minutes: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("epochs", "iterations_per_epoch", "batch_size", "val_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"training.learning_rate must be > 0, got {self.learning_rate}")


def load_training_config(path: str | Path) -> TrainingConfig:
    return from_mapping(TrainingConfig, load_yaml(path) or {}, source=str(path))


@dataclass
class TrainResult:
    """Paths and metrics of a training run."""

    output: Path
    best: Path
    last: Path
    model_yaml: Path
    best_score: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    train_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)


def _seed_all(seed: int) -> None:
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed)


def _auto_weights(items: list[dict], n: int) -> torch.Tensor:
    counts = torch.zeros(n, dtype=torch.float64)
    for it in items:
        counts += torch.bincount(it["label"].flatten().long(), minlength=n)[:n].double()
    w = 1.0 / torch.sqrt(counts.clamp(min=1.0))
    return (w / w.mean()).float()


def _train_transforms(config: ModelConfig, tc: TrainingConfig, roi: list[int]):
    from monai import transforms as T

    keys = ["image", "label"]
    ts = [T.SpatialPadd(keys, spatial_size=roi, mode="edge"),
          T.RandCropByPosNegLabeld(keys, "label", spatial_size=roi, pos=2, neg=1, num_samples=1, allow_smaller=True)]
    if tc.augment:
        dims = config.network.spatial_dims
        rot = (0.2, 0.2, 0.2) if dims == 3 else (0.2,)
        ts += [T.RandAffined(keys, prob=0.3, rotate_range=rot, scale_range=0.1, mode=("bilinear", "nearest"),
                             padding_mode="border"),
               T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
               T.RandShiftIntensityd("image", offsets=0.05, prob=0.5),
               T.RandGaussianNoised("image", prob=0.2, std=0.02)]
    return T.Compose(ts)


def _roi(config: ModelConfig, tc: TrainingConfig) -> tuple[list[int], Optional[int]]:
    """The training crop in MONAI's axis order and, for a 2D network, the axis squeezed away."""
    if tc.patch_size is not None and tuple(tc.patch_size) != tuple(config.inference.patch_size):
        log.warning("training patch %s differs from the inference patch %s; set inference.patch_size to the "
                    "training patch before segmenting with this model", tc.patch_size, config.inference.patch_size)
    from medseg.models.config import model_axes, slice_dim

    patch = tc.patch_size or config.inference.patch_size
    roi = [int(patch[a]) for a in model_axes(config.preprocessing)]
    axis = slice_dim(config)
    if axis is not None:
        roi[axis] = 1
    return roi, axis


def evaluate_cases(network: torch.nn.Module, config: ModelConfig, items: list[dict], *,
                   device: torch.device) -> dict:
    """Per-class Dice and IoU on model-grid cases (sliding window, argmax)."""
    from medseg.inference.segment import _roi_and_predictor
    from medseg.models.loader import LoadedModel
    from monai.inferers import sliding_window_inference

    lm = LoadedModel(config, network, device)
    roi, predictor, _ = _roi_and_predictor(lm)
    n = config.out_channels
    inter = np.zeros(n)
    sums = np.zeros(n)
    union = np.zeros(n)
    network.eval()
    with torch.inference_mode():
        for it in items:
            logits = sliding_window_inference(it["image"][None].to(device), roi, config.inference.sw_batch_size,
                                              predictor, overlap=config.inference.overlap,
                                              mode=config.inference.blending, padding_mode="replicate")
            pred = logits[0].argmax(0).cpu()
            ref = it["label"][0].long()
            for c in range(1, n):
                a, b = pred == c, ref == c
                i = int((a & b).sum())
                inter[c] += i
                sums[c] += int(a.sum()) + int(b.sum())
                union[c] += int((a | b).sum())
    names = config.labels
    dice = {names[c]: float(2 * inter[c] / sums[c]) if sums[c] else float("nan") for c in range(1, n)}
    iou = {names[c]: float(inter[c] / union[c]) if union[c] else float("nan") for c in range(1, n)}
    valid = [v for v in dice.values() if v == v]
    return {"dice": dice, "iou": iou, "mean_dice": float(np.mean(valid)) if valid else 0.0}


def _write_outputs(out: Path, network, config: ModelConfig, name: str) -> Path:
    cfg = replace(config, weights=name)
    return save_weights(network, out / name, metadata={"medseg_config": config_to_mapping(cfg)})


def train(
    data: str | Path,
    output: str | Path,
    *,
    config: ModelConfig,
    training: TrainingConfig = TrainingConfig(),
    resume: bool = False,
    init: Optional[str | Path] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> TrainResult:
    """Train ``config``'s network on ``data`` and write checkpoints to ``output``.

    Parameters
    ----------
    data : path
        Decathlon folder (``dataset.json``) or ``imagesTr/`` + ``labelsTr/`` (NIfTI, NRRD, MHA
        or DICOM series folders).
    output : path
        Receives ``best.safetensors``, ``last.safetensors`` (config embedded), ``model.yaml``
        (loadable with ``medseg segment --model OUTPUT``), ``state.pt`` (resume) and
        ``history.json`` (per-class validation Dice and IoU per validation).
    config : ModelConfig
    training : TrainingConfig
    resume : bool
        Continue from ``output/state.pt`` and ``output/last.safetensors``.
    init : path, optional
        Fine-tune: start from these weights (a checkpoint of the same network).
    progress, cancel : callables, optional
        Progress per iteration; cancel stops after the current iteration (checkpoints of the
        last finished epoch remain).
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    tc = training
    _seed_all(tc.seed)
    train_cases, val_cases, train_items, val_items = _load_split(data, config, tc, progress, cancel)

    from medseg.models.loader import resolve_device

    device = resolve_device(tc.device)
    network = build_network(config.network, in_channels=config.in_channels, out_channels=config.out_channels)
    if init is not None:
        apply_weights(network, load_weights(init), source=str(init))
        log.info("fine-tuning from %s", init)
    network.to(device)
    loss_fn = _loss(config, tc, train_items, device)
    opt = torch.optim.AdamW(network.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    total_iters = tc.epochs * tc.iterations_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 - min(it, total_iters - 1) / total_iters) ** 0.9)
    state = _resume(out, network, opt, sched) if resume else _RunState()

    roi, slice_dim = _roi(config, tc)
    step = _Step(network, loss_fn, opt, sched, _train_transforms(config, tc, roi), device, slice_dim,
                 random.Random(tc.seed + state.epoch))
    it_done = state.epoch * tc.iterations_per_epoch
    t0 = time.time()
    for epoch in range(state.epoch, tc.epochs):
        network.train()
        losses = []
        for _ in range(tc.iterations_per_epoch):
            check_cancel(cancel, "training")
            losses.append(step(train_items, tc.batch_size))
            it_done += 1
            report(progress, it_done, total_iters, f"epoch {epoch + 1}/{tc.epochs} loss {np.mean(losses):.3f}")
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "time_s": round(time.time() - t0, 1)}
        out_of_time = tc.max_minutes is not None and time.time() - t0 > 60 * tc.max_minutes
        if (epoch + 1) % tc.val_every == 0 or epoch + 1 == tc.epochs or out_of_time:
            _validate(network, config, val_items, device, record, state, out)
        state.epoch = epoch + 1
        state.history.append(record)
        _write_outputs(out, network, config, "last.safetensors")
        save_state_file({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": state.epoch,
                         "best_score": state.best_score, "best_epoch": state.best_epoch,
                         "history": json.dumps(state.history), "torch_rng": torch.get_rng_state()}, out / "state.pt")
        if out_of_time:
            log.warning("stopping after epoch %d: max_minutes=%s reached", epoch + 1, tc.max_minutes)
            break
    return _finish(out, network, config, state, train_cases, val_cases)


@dataclass
class _RunState:
    """Where a training run stands: epochs done, the best validation so far, the history."""

    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)


def _load_split(data, config: ModelConfig, tc: TrainingConfig, progress, cancel):
    """Cases of ``data`` split into training and validation folds, loaded and preprocessed."""
    ds_labels = dataset_labels(data)
    if ds_labels is not None and ds_labels != config.labels:
        raise InputError(f"{data}/dataset.json labels {ds_labels} differ from the config's {config.labels}; "
                         "make the config's `labels:` match the dataset")
    cases = find_cases(data)
    train_cases, val_cases = split_cases(cases, folds=tc.folds, val_fold=tc.val_fold)
    if not train_cases:
        raise InputError(f"{data}: all {len(cases)} cases fell into the validation fold; add cases or use more folds")
    log.info("%d training cases, %d validation cases", len(train_cases), len(val_cases))
    nl = len(config.labels)
    train_items = load_cases(train_cases, config.preprocessing, num_labels=nl, progress=progress, cancel=cancel)
    val_items = load_cases(val_cases, config.preprocessing, num_labels=nl, progress=progress, cancel=cancel)
    return train_cases, val_cases, train_items, val_items


def _loss(config: ModelConfig, tc: TrainingConfig, train_items: list[dict], device):
    """Dice + cross-entropy, with the configured class weights (``auto``: 1/sqrt(voxel count))."""
    from monai.losses import DiceCELoss

    n = config.out_channels
    if tc.class_weights == "auto":
        weights = _auto_weights(train_items, n)
    elif tc.class_weights == "none":
        weights = None
    else:
        if len(tc.class_weights) != n:
            raise ConfigError(f"training.class_weights needs {n} values (background + {len(config.labels)} "
                              f"labels), got {len(tc.class_weights)}")
        weights = torch.tensor(tc.class_weights, dtype=torch.float32)
    return DiceCELoss(to_onehot_y=True, softmax=True, weight=None if weights is None else weights.to(device))


def _resume(out: Path, network, opt, sched) -> _RunState:
    """Weights, optimiser, scheduler, RNG and history of ``out``'s last finished epoch."""
    state_path = out / "state.pt"
    if not state_path.is_file() or not (out / "last.safetensors").is_file():
        raise CheckpointError(f"{out}: nothing to resume (state.pt / last.safetensors missing); train without --resume")
    apply_weights(network, load_weights(out / "last.safetensors"), source=str(out / "last.safetensors"))
    st = load_state_file(state_path)
    opt.load_state_dict(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    state = _RunState(int(st["epoch"]), float(st["best_score"]), int(st["best_epoch"]), json.loads(st["history"]))
    torch.set_rng_state(st["torch_rng"])
    log.info("resuming at epoch %d (best %.4f at %d)", state.epoch, state.best_score, state.best_epoch)
    return state


@dataclass
class _Step:
    """One optimisation step on a batch of random training crops; returns the loss."""

    network: torch.nn.Module
    loss_fn: object
    opt: torch.optim.Optimizer
    sched: object
    transforms: object
    device: object
    slice_dim: Optional[int]
    rng: random.Random

    def __call__(self, items: list[dict], batch_size: int) -> float:
        batch = [self.transforms(items[self.rng.randrange(len(items))])[0] for _ in range(batch_size)]
        x = torch.stack([_tensor(b["image"]) for b in batch]).to(self.device)
        y = torch.stack([_tensor(b["label"]) for b in batch]).to(self.device)
        if self.slice_dim is not None:
            x, y = x.squeeze(2 + self.slice_dim), y.squeeze(2 + self.slice_dim)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.network(x), y.round())
        loss.backward()
        self.opt.step()
        self.sched.step()
        return float(loss.detach())


def _tensor(x):
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def _validate(network, config: ModelConfig, val_items: list[dict], device, record: dict, state: _RunState,
              out: Path) -> None:
    """Validation Dice into ``record``; a new best is written as ``best.safetensors``."""
    if val_items:
        metrics = evaluate_cases(network, config, val_items, device=device)
        record.update(metrics)
        score = metrics["mean_dice"]
    else:
        score = -record["loss"]
    if score > state.best_score:
        state.best_score, state.best_epoch = score, record["epoch"]
        _write_outputs(out, network, config, "best.safetensors")
    log.info("epoch %d: %s", record["epoch"], json.dumps(record))


def _finish(out: Path, network, config: ModelConfig, state: _RunState, train_cases, val_cases) -> TrainResult:
    """model.yaml and history.json next to the checkpoints."""
    if not (out / "best.safetensors").is_file():
        _write_outputs(out, network, config, "best.safetensors")
    model_yaml = out / "model.yaml"
    model_yaml.write_text(yaml.safe_dump(config_to_mapping(replace(config, weights="best.safetensors")), sort_keys=False))
    train_ids, val_ids = [c.case_id for c in train_cases], [c.case_id for c in val_cases]
    (out / "history.json").write_text(json.dumps({
        "train_cases": train_ids, "val_cases": val_ids,
        "best_epoch": state.best_epoch, "best_score": state.best_score, "history": state.history}, indent=1))
    return TrainResult(out, out / "best.safetensors", out / "last.safetensors", model_yaml, state.best_score,
                       state.best_epoch, state.history, train_ids, val_ids)
