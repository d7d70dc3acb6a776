"""Learned click-guided engine (DeepEdit-style) and its training.

Network input, on a fixed working grid (``spacing`` mm, ``patch`` voxels) centred on the
object's prompts: 3 channels — the normalised image, a positive and a negative guidance map
(a Gaussian of ``guidance_sigma`` voxels at every click, maximum over clicks, 1.0 at the
clicked voxel). Output: one foreground logit channel. Network: MONAI 3D ``UNet``.

Training (:func:`train_interactive`) simulates clicks as the robot user does: a first
positive click inside the target, then, with probability ``click_iterations``, the current
model's prediction is computed and up to 3 more clicks are put in its largest errors.

torch and MONAI are imported inside functions only (``import medseg`` stays light).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from medseg.core.errors import ConfigError, InputError, ModelError
from medseg.core.intensity import to_unit_range
from medseg.core.progress import check_cancel, report
from medseg.core.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["InteractiveModelConfig", "guidance_channels", "LearnedEngine", "train_interactive", "load_config"]


@dataclass(frozen=True)
class InteractiveModelConfig:
    """A learned interactive model: network, working grid, intensity handling."""

    name: str = "interactive_phantom"
    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    patch: tuple[int, int, int] = (32, 64, 64)
    spacing: tuple[float, float, float] = (6.0, 5.4, 5.4)
    guidance_sigma: float = 2.0
    intensity: str = "ct"  # "ct": window [hu_min, hu_max]; "percentile": 0.5-99.5 %
    hu_min: float = -200.0
    hu_max: float = 400.0
    weights: str = "interactive_phantom.safetensors"
    description: str = ""

    def __post_init__(self) -> None:
        from medseg.models.config import NetworkConfig

        # the network's structure obeys the same bounds as every medseg network (levels, strides,
        # residual units: what decides how many modules the constructor builds)
        NetworkConfig("unet", 3, tuple(self.channels), tuple(self.strides), self.num_res_units)


def load_config(name_or_path: str | Path) -> tuple[InteractiveModelConfig, Path]:
    """Read an ``interactive_*.yaml`` (a bundled name from :func:`medseg.models.models_dir`, or a path).

    Raises
    ------
    ConfigError
        If the file is missing, or a key is unknown or of the wrong type.
    """
    from medseg.core.config import from_mapping, load_yaml
    from medseg.models.loader import models_dir

    p = Path(name_or_path)
    if not p.suffix:
        p = models_dir() / f"{name_or_path}.yaml"
    if not p.exists():
        raise ConfigError(f"interactive model {str(name_or_path)!r} not found (looked for {p}); "
                          f"use a name from configs/models (interactive_*.yaml) or a path to a .yaml")
    return from_mapping(InteractiveModelConfig, load_yaml(p) or {}, source=str(p)), p


def guidance_channels(shape: Sequence[int], positive: np.ndarray, negative: np.ndarray, *,
                      sigma: float) -> np.ndarray:
    """Positive and negative guidance maps.

    Parameters
    ----------
    shape : (3,) ints
        Working grid ``(Z, Y, X)``.
    positive, negative : (N, 3) int ndarray
        Click voxels ``(k, j, i)`` on that grid (clicks outside are ignored).
    sigma : float
        Gaussian width in voxels.

    Returns
    -------
    (2, Z, Y, X) float32 ndarray
        Channel 0 positive, 1 negative; each is the maximum over its clicks of
        ``exp(-|x - c|^2 / (2 sigma^2))`` (1.0 exactly at a click, 0 without clicks).
    """
    out = np.zeros((2,) + tuple(int(s) for s in shape), np.float32)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    for ch, pts in enumerate((positive, negative)):
        for c in np.asarray(pts, int).reshape(-1, 3):
            if np.any(c < 0) or np.any(c >= np.asarray(shape)):
                continue
            d2 = sum((g - float(v)) ** 2 for g, v in zip(grids, c))
            np.maximum(out[ch], np.exp(-d2 / (2.0 * sigma ** 2)), out=out[ch])
    return out


def _normalise(x: np.ndarray, cfg: InteractiveModelConfig) -> np.ndarray:
    """The network's image channel: the HU window (``intensity: ct``) or the percentiles, to [0, 1]."""
    return to_unit_range(x, (cfg.hu_min, cfg.hu_max) if cfg.intensity == "ct" else None)


def _build_network(cfg: InteractiveModelConfig):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=3, out_channels=1, channels=cfg.channels,
                strides=cfg.strides, num_res_units=cfg.num_res_units)


class LearnedEngine:
    """Session engine running a click-guided 3D U-Net on a window around the object's prompts."""

    name = "learned"
    prompt_types = ("point", "scribble")
    supports_undo = True  # stateless: a prediction depends on its prompts only
    background_preparation = False

    def __init__(self, config: InteractiveModelConfig, network: Any) -> None:
        self.config = config
        self.network = network
        self._image: Optional[np.ndarray] = None
        self._spacing = np.ones(3)

    @classmethod
    def load(cls, name_or_path: str | Path = "interactive_phantom", *, device: str = "cpu") -> "LearnedEngine":
        """Load a config (+ its ``.safetensors`` weights next to it)."""
        import torch
        from safetensors.torch import load_file

        cfg, path = load_config(name_or_path)
        wpath = path.with_name(cfg.weights)
        if not wpath.exists():
            raise ModelError(f"{path}: weights file {wpath.name} not found next to the config; "
                             f"train one with medseg.interactive.learned.train_interactive(...)")
        net = _build_network(cfg)
        try:
            net.load_state_dict(load_file(str(wpath)))
        except RuntimeError as exc:
            raise ModelError(f"{wpath}: weights do not match the network in {path.name}: {exc}") from exc
        net.eval().to(torch.device(device))
        return cls(cfg, net)

    def set_image(self, volume: Volume) -> None:
        arr = volume.array[0] if volume.array.ndim == 4 else volume.array
        self._image = arr
        self._spacing = np.asarray(volume.spacing, float)

    def reset(self) -> None:
        pass

    def window(self, positive: np.ndarray, box=None) -> tuple[tuple[slice, ...], np.ndarray]:
        """Native ROI ``slices`` covering the model's patch around the prompts, and zoom factors."""
        cfg = self.config
        pts = np.asarray(positive, int).reshape(-1, 3)
        centre = (pts.min(0) + pts.max(0)) / 2.0
        half = np.asarray(cfg.patch) * np.asarray(cfg.spacing) / self._spacing / 2.0
        lo = np.maximum(np.floor(centre - half).astype(int), 0)
        hi = np.minimum(np.ceil(centre + half).astype(int) + 1, self._image.shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), self._spacing / np.asarray(cfg.spacing)

    def predict(self, prompts, *, blocked=None, previous=None):
        import torch

        if self._image is None:
            raise RuntimeError("set_image first")
        cfg = self.config
        sl, zoom = self.window(prompts.positive)
        roi = self._image[sl]
        work = ndi.zoom(_normalise(roi, cfg), zoom, order=1)
        wshape = np.asarray(work.shape)
        off = np.array([s.start for s in sl])
        to_w = lambda p: np.round((np.asarray(p, float).reshape(-1, 3) - off) * zoom).astype(int)  # noqa: E731
        pad = np.maximum(np.asarray(cfg.patch) - wshape, 0)
        g = guidance_channels(work.shape, to_w(prompts.positive), to_w(prompts.negative), sigma=cfg.guidance_sigma)
        x = np.concatenate([work[None], g])
        x = np.pad(x, [(0, 0)] + [(0, int(p)) for p in pad])
        # network needs sizes divisible by 2**len(strides)
        div = 2 ** len(cfg.strides)
        extra = [(-s) % div for s in x.shape[1:]]
        x = np.pad(x, [(0, 0)] + [(0, e) for e in extra])
        with torch.inference_mode():
            logit = self.network(torch.from_numpy(x[None]))[0, 0].numpy()
        prob = 1.0 / (1.0 + np.exp(-logit[: wshape[0], : wshape[1], : wshape[2]]))
        back = ndi.zoom(prob, np.asarray(roi.shape) / wshape, order=1)
        back = back[: roi.shape[0], : roi.shape[1], : roi.shape[2]]
        if back.shape != roi.shape:
            back = np.pad(back, [(0, r - b) for r, b in zip(roi.shape, back.shape)], mode="edge")
        mask = back > 0.5
        for p in np.asarray(prompts.positive, int).reshape(-1, 3) - off:
            mask[tuple(p)] = True
        for p in np.asarray(prompts.negative, int).reshape(-1, 3) - off:
            if np.all((p >= 0) & (p < np.array(mask.shape))):
                mask[tuple(p)] = False
        if blocked is not None:
            mask &= np.asarray(blocked[sl]) == 0
        return sl, mask


# -- training ---------------------------------------------------------------------------------
def _sample_click(region: np.ndarray, rng: np.random.Generator) -> Optional[np.ndarray]:
    """A voxel in the inner part of ``region`` (distance ≥ half the maximum), random."""
    if not region.any():
        return None
    d = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
    cand = np.argwhere(d >= 0.5 * d.max())
    return cand[rng.integers(len(cand))]


def train_interactive(data: Any = None, out_path: str | Path = "interactive_model.safetensors", *,
                      config: Optional[InteractiveModelConfig] = None, iterations: int = 600,
                      n_phantoms: int = 16, lr: float = 3e-3, click_iterations: float = 0.5,
                      seed: int = 0, progress=None, cancel=None) -> dict:
    """Train a click-guided model and write ``out_path`` (.safetensors) plus a ``.yaml`` config.

    Parameters
    ----------
    data : None, folder pair or list
        ``None``: generated phantoms (:func:`medseg.samples.phantom.make_phantom`); a tuple
        ``(images_dir, labels_dir)`` of files with matching names; or a list of
        ``(image Volume, label map ndarray)`` pairs. Images are resampled to the config grid.
    out_path : path
        Weights file; the config is written next to it with the same stem.
    iterations : int
        Optimiser steps (one target per step).

    Returns
    -------
    dict
        ``{"weights": path, "config": path, "loss": last mean loss, "seconds": time}``.
    """
    import torch

    cfg = config or InteractiveModelConfig()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    cases = _training_cases(data, cfg, n_phantoms, seed)
    if not cases:
        raise InputError("train_interactive: no training cases found; give (images_dir, labels_dir) with matching files")
    net = _build_network(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iterations)
    t0 = time.time()
    losses: list[float] = []
    for it in range(iterations):
        check_cancel(cancel, "interactive training")
        img, lab = cases[rng.integers(len(cases))]
        ids = [v for v in np.unique(lab) if v]
        target = lab == ids[rng.integers(len(ids))]
        pos = [_sample_click(target, rng)]
        neg: list[np.ndarray] = []
        if rng.random() < click_iterations:
            net.eval()
            with torch.no_grad():
                _simulate_corrections(net, img, target, pos, neg, cfg, rng)
        net.train()
        logit = _run_network(net, img, pos, neg, cfg)
        t = torch.from_numpy(target.astype(np.float32))
        p = torch.sigmoid(logit)
        dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        loss = dice + torch.nn.functional.binary_cross_entropy_with_logits(logit, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (it + 1) % 25 == 0:
            report(progress, it + 1, iterations, f"loss {np.mean(losses[-25:]):.3f}")
            log.info("iteration %d/%d loss %.3f", it + 1, iterations, np.mean(losses[-25:]))
    out, cpath = _save_model(net, cfg, Path(out_path))
    return {"weights": str(out), "config": str(cpath), "loss": float(np.mean(losses[-50:])),
            "seconds": time.time() - t0}


def _run_network(net, img: np.ndarray, pos: list, neg: list, cfg: InteractiveModelConfig):
    """The network's logits on a whole training image with its clicks (padded to the strides)."""
    import torch

    shape = img.shape
    div = 2 ** len(cfg.strides)
    g = guidance_channels(shape, np.array(pos), np.array(neg).reshape(-1, 3), sigma=cfg.guidance_sigma)
    x = np.pad(np.concatenate([img[None], g]), [(0, 0)] + [(0, (-s) % div) for s in shape])
    return net(torch.from_numpy(x[None]))[0, 0, : shape[0], : shape[1], : shape[2]]


def _simulate_corrections(net, img: np.ndarray, target: np.ndarray, pos: list, neg: list,
                          cfg: InteractiveModelConfig, rng: np.random.Generator) -> None:
    """Add 1-3 robot clicks (in place) in the largest error of the current model's prediction."""
    for _ in range(int(rng.integers(1, 4))):
        pred = _run_network(net, img, pos, neg, cfg).numpy() > 0
        fn, fp = target & ~pred, pred & ~target
        err = fn if fn.sum() >= fp.sum() else fp
        lab_e, n = ndi.label(err)
        if n == 0:
            break
        big = lab_e == (np.argmax(np.bincount(lab_e.ravel())[1:]) + 1)
        c = _sample_click(big, rng)
        (pos if err is fn else neg).append(c)


def _save_model(net, cfg: InteractiveModelConfig, out: Path) -> tuple[Path, Path]:
    """Write the weights (.safetensors, atomically) and the config (.yaml next to it)."""
    import yaml
    from safetensors.torch import save_file

    from medseg.io.atomic import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    conf = asdict(cfg)
    conf["weights"] = out.name
    conf["name"] = out.stem
    for k in ("channels", "strides", "patch", "spacing"):
        conf[k] = list(conf[k])
    cpath = out.with_suffix(".yaml")
    with atomic_path(cpath) as tmp:
        tmp.write_text(yaml.safe_dump(conf, sort_keys=False))
    return out, cpath


def _training_cases(data, cfg: InteractiveModelConfig, n_phantoms: int, seed: int):
    cases = []
    if data is None:
        from medseg.samples.phantom import default_phantom_affine, make_phantom

        for s in range(n_phantoms):
            img, seg = make_phantom(shape=cfg.patch, affine=default_phantom_affine(cfg.patch, cfg.spacing),
                                    seed=1000 + seed * 100 + s)
            cases.append((_normalise(img.array, cfg), seg.array.astype(np.int32)))
        return cases
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, (str, Path)) for d in data):
        from medseg.io import read_volume

        img_dir, lab_dir = Path(data[0]), Path(data[1])
        pairs = []
        for f in sorted(img_dir.iterdir()):
            lf = lab_dir / f.name
            if lf.exists():
                pairs.append((read_volume(f), read_volume(lf).array))
        data = pairs
    for vol, lab in data:
        zoom = np.asarray(vol.spacing) / np.asarray(cfg.spacing)
        img = ndi.zoom(_normalise(vol.array, cfg), zoom, order=1)
        lab = ndi.zoom(np.asarray(lab), zoom, order=0)
        cases.append((img, lab.astype(np.int32)))
    return cases
