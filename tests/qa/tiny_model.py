"""A tiny MONAI UNet with dropout, trained in seconds on generated phantoms (for uncertainty tests).

Also used by ``benchmarks/uncertainty.py``. The predictor follows medseg.analysis.uncertainty's protocol:
``Volume -> (C, Z, Y, X)`` probabilities on the input grid.
"""

from __future__ import annotations

import contextlib

import numpy as np

from medseg.samples.phantom import PHANTOM_LABELS, default_phantom_affine, make_phantom

SHAPE = (16, 32, 32)
SPACING = (12.6, 10.8, 10.8)


def phantom(seed: int):
    return make_phantom(shape=SHAPE, affine=default_phantom_affine(SHAPE, SPACING), seed=seed)


def _normalise(hu: np.ndarray) -> np.ndarray:
    # the same as medseg's ``ct_window`` preprocessing with window (-160, 240)
    return np.clip((np.asarray(hu, np.float32) + 160.0) / 400.0, 0.0, 1.0)


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run torch with ``n`` threads (on a shared 2-core machine more threads only fight)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_tiny_unet(*, seeds=(1, 2, 3, 4), iterations: int = 100, dropout: float = 0.2, seed: int = 0):
    """Train a small 3D UNet on phantoms (about 10 s on one core); returns it in eval mode."""
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=len(PHANTOM_LABELS) + 1, channels=(8, 16, 32),
               strides=(2, 2), num_res_units=1, dropout=dropout)
    data = [phantom(s) for s in seeds]
    x = torch.from_numpy(np.stack([_normalise(im.array) for im, _ in data])[:, None])
    y = torch.from_numpy(np.stack([seg.array for _, seg in data]).astype(np.int64))[:, None]
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(iterations):
        idx = torch.randint(0, len(data), (2,), generator=gen)
        xb = x[idx] + 0.03 * torch.randn(x[idx].shape, generator=gen)
        opt.zero_grad()
        loss = loss_fn(net(xb), y[idx])
        loss.backward()
        opt.step()
    net.eval()
    return net


def predictor(net, *, mc_dropout: bool = False):
    """``Volume -> (C, Z, Y, X)`` softmax probabilities; dropout active when ``mc_dropout``."""
    import torch

    def predict(volume):
        net.eval()
        if mc_dropout:
            for m in net.modules():
                if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout3d)):
                    m.train(True)
        with torch.inference_mode():
            x = torch.from_numpy(_normalise(volume.array))[None, None]
            p = torch.softmax(net(x)[0], dim=0).numpy()
        net.eval()
        return p

    predict.labels = PHANTOM_LABELS
    return predict


def save_as_medseg_model(net, folder, *, dropout: float = 0.2):
    """Write the network as a medseg model (YAML + safetensors) that ``load_model`` reads.

    The model grid is the phantoms' own (orientation SPL = array order of an axial LPS scan,
    spacing ``SPACING``), so medseg.inference sees what the network was trained on.
    """
    from pathlib import Path

    import yaml

    from medseg.models.checkpoint import save_weights

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(net, folder / "tiny.safetensors")
    cfg = {
        "name": "tiny_phantom_unet", "modality": "CT",
        "network": {"name": "unet", "spatial_dims": 3, "channels": [8, 16, 32], "strides": [2, 2],
                    "num_res_units": 1, "dropout": dropout},
        "labels": {lab.index: lab.name for lab in PHANTOM_LABELS},
        "preprocessing": {"target_spacing": list(SPACING), "orientation": "SPL",
                          "intensity": {"kind": "ct_window", "window": [-160.0, 240.0]}},
        "inference": {"patch_size": list(SHAPE), "overlap": 0.0, "blending": "constant", "sw_batch_size": 1},
        "weights": "tiny.safetensors",
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def error_enrichment(result, truth: np.ndarray, *, kind: str = "entropy", top: float = 0.10) -> dict:
    """Error rate among the ``top`` most uncertain voxels vs the overall error rate."""
    unc = result.map(kind).array.ravel()
    err = (result.segmentation.array != truth).ravel()
    n = max(1, int(round(top * unc.size)))
    order = np.argsort(-unc, kind="stable")[:n]
    overall = float(err.mean())
    top_rate = float(err[order].mean())
    return {"overall_error": overall, "top_error": top_rate,
            "ratio": top_rate / overall if overall > 0 else float("inf"),
            "errors_caught": float(err[order].sum() / max(err.sum(), 1))}
