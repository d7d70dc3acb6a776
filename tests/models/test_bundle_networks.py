"""Every configured network exports as a MONAI bundle that `python -m monai.bundle run` runs to medseg's label map.

For each bundled config (``configs/models/*.yaml``) a tiny model of the same network, plane,
intensity normalisation and orientation is built (few channels, coarse grid, seeded), trained
for a few steps on one generated phantom so that its argmax is not decided by near-ties, then
exported; the bundle, run by MONAI in a subprocess on a NIfTI phantom it never saw, must give
the label map medseg's own ``segment`` gives (per-label Dice >= 0.999). Every tiny model
carries postprocessing rules (largest component, hole filling, minimum size), so the MONAI
transforms the bundle runs for them are checked against medseg's own clean-up too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.core.errors import ModelError
from medseg.inference import segment
from medseg.inference.mapping import preprocess_labels, preprocess_volume
from medseg.models.config import model_axes
from medseg.io import read_volume, write_volume
from medseg.models import LoadedModel, config_from_mapping, config_to_mapping, list_models, load_config, load_model
from medseg.models.bundle import export_bundle, import_bundle
from medseg.models.registry import NETWORK_TARGETS, build_network, network_config_from_spec, network_spec
from medseg.core.geometry import make_affine
from medseg.samples.phantom import make_phantom

def _rotation(axis, degrees):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.deg2rad(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def grid(kind: str, shape, spacing, centre=(0.0, 5.0, 0.0), degrees=17.0):
    """(shape, affine) of an ``axial``, ``flipped`` (x and z reversed) or ``oblique`` grid (as tests/inference/grids.py)."""
    d = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])
    if kind == "flipped":
        d = d * np.array([-1.0, 1.0, -1.0])[None, :]
    elif kind == "oblique":
        d = _rotation([1.0, 0.5, 0.2], degrees) @ d
    spacing = np.asarray(spacing, float)
    origin = np.asarray(centre) - d @ (spacing * (np.asarray(shape) - 1) / 2)
    return tuple(shape), make_affine(spacing, origin, d)


#: tiny network sizes per network name
TINY = {
    "unet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "dynunet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "fcn": {"channels": [4, 8, 16], "strides": [2, 2]},
    "segresnet": {"channels": [8]},  # GroupNorm with 8 groups
    "deeplab": {"channels": [8, 8, 16]},
    "swinunetr": {"feature_size": 12},
}
#: the rules every tiny model carries: the min_size_ml ones remove the specks a briefly trained net leaves
RULES = {"liver": {"largest_component": True, "fill_holes": True}, "spleen": {"fill_holes": True},
         "kidney_left": {"largest_component": True, "min_size_ml": 3.0}, "aorta": {"min_size_ml": 2.0},
         "liver_tumor": {"min_size_ml": 1.0}}
# the bundled default (a trained 3D UNet with min_size_ml) has its own round trip in test_bundle.py
CONFIGS = [m for m in list_models() if not m.trained]
GRIDS = {"unet2d_axial": "axial", "fcn2d_axial": "flipped"}  # the rest: oblique


def _tiny_config(path: Path, *, keep_spacing: bool):
    data = config_to_mapping(load_config(path))
    net = {**data["network"], **TINY[data["network"]["name"]]}
    pre = data["preprocessing"]
    # coarse model grid; 0 (keep the input's spacing) stays 0; keep_spacing: no resampling at all
    swin = net["name"] == "swinunetr"  # downsamples 32x: a coarser grid, and windows that keep 2 voxels there
    pre["target_spacing"] = [0.0 if keep_spacing or s == 0 else (10.0 if swin else 6.0) for s in pre["target_spacing"]]
    inf = data["inference"]
    inf["patch_size"] = [1 if p == 1 else (64 if swin else 32) for p in inf["patch_size"]]
    inf["sw_batch_size"] = min(inf["sw_batch_size"], 4)
    return config_from_mapping({**data, "network": net, "preprocessing": pre, "inference": inf,
                                "postprocessing": RULES, "weights": None}, source=str(path))


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pads = []
    for s in reversed(x.shape[2:]):
        pads += [0, (-s) % multiple]
    return torch.nn.functional.pad(x, pads, mode="replicate") if any(pads) else x


def _trained(cfg, steps: int = 12) -> LoadedModel:
    """A seeded tiny network, trained for a few full-volume steps on one phantom (seed 7).

    Not a good model, but a confident one: several structures, no argmax decided by near-ties.
    """
    from monai.losses import DiceLoss

    torch.manual_seed(0)
    net = build_network(cfg.network, in_channels=cfg.in_channels, out_channels=cfg.out_channels)
    shape, affine = grid("oblique", (34, 46, 58), (6.5, 6.0, 6.0), degrees=9.0)
    image, ref = make_phantom(shape=shape, affine=affine, seed=7)
    x = preprocess_volume(image, cfg.preprocessing).as_tensor()[None]
    y = preprocess_labels(ref.label_map, cfg.preprocessing).as_tensor()[None].round()
    ds = cfg.network.downsampling
    if cfg.network.spatial_dims == 2:  # all slices of the configured plane as one batch
        dim = model_axes(cfg.preprocessing).index({"axial": 0, "coronal": 1, "sagittal": 2}[cfg.inference.slice_axis])
        x, y = (t.movedim(2 + dim, 0).squeeze(1) for t in (x, y))
    x, y = _pad_to(x, ds).contiguous(), _pad_to(y.float(), ds).contiguous()
    loss_fn = DiceLoss(to_onehot_y=True, softmax=True)  # soft Dice: the small organs appear within a few steps
    opt = torch.optim.Adam(net.parameters(), lr=1e-2 if cfg.network.name == "segresnet" else 2e-2)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    return LoadedModel(cfg, net.eval(), torch.device("cpu"))


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these tiny networks gain nothing from more, and lose a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _expected(ours: np.ndarray, cfg, voxel_volume_ml: float) -> np.ndarray:
    """medseg's label map as the bundle's ``RemoveSmallObjectsd`` leaves it.

    With scikit-image 0.26 (issue #8001) MONAI's ``min_size`` is applied inclusively: a
    component of exactly ``ceil(min_size_ml / voxel volume)`` voxels goes too, where medseg
    keeps it. Elsewhere the two must agree.
    """
    from scipy import ndimage

    from medseg.models.bundle import _skimage_min_size_inclusive

    out = ours.copy()
    if not _skimage_min_size_inclusive():
        return out
    index = {n: i for i, n in cfg.labels.items()}
    for name, rule in cfg.postprocessing.items():
        if rule.min_size_ml > 0:
            comp, n = ndimage.label(ours == index[name], structure=np.ones((3, 3, 3), bool))
            sizes = np.bincount(comp.ravel(), minlength=n + 1)
            exact = np.nonzero(sizes == int(np.ceil(rule.min_size_ml / voxel_volume_ml)))[0]
            out[np.isin(comp, exact[exact > 0])] = 0
    return out


def _run_bundle(bundle: Path, images: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
         "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
         "--dataset_dir", str(images), "--output_dir", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("info", CONFIGS, ids=lambda m: m.name)
def test_bundle_of_every_network_gives_medsegs_label_map(tmp_path: Path, info):
    pytest.importorskip("fire", reason="python -m monai.bundle needs `fire` (pip install fire)")
    kind = GRIDS.get(info.name, "oblique")
    cfg = _tiny_config(info.path, keep_spacing=kind == "axial")
    model = _trained(cfg)
    bundle = export_bundle(model, tmp_path / "bundle")
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    target, kwargs = network_spec(cfg.network, in_channels=cfg.in_channels, out_channels=cfg.out_channels)
    assert inference["network_def"] == {"_target_": target, **kwargs}
    if cfg.network.spatial_dims == 2:
        assert inference["inferer"]["_target_"] == "SliceInferer"
    if target.startswith("medseg."):
        assert "medseg" in json.loads((bundle / "configs" / "metadata.json").read_text())["optional_packages_version"]
        assert "medseg must be installed" in (bundle / "docs" / "README.md").read_text()

    shape, affine = grid(kind, (36, 46, 60), (6.0, 6.2, 6.0), centre=(3.0, 2.0, -4.0))
    image, _ = make_phantom(shape=shape, affine=affine, seed=4243)
    (tmp_path / "in").mkdir()
    write_volume(image, tmp_path / "in" / "case.nii.gz")
    image = read_volume(tmp_path / "in" / "case.nii.gz")
    _run_bundle(bundle, tmp_path / "in", tmp_path / "out")
    theirs = read_volume(tmp_path / "out" / "case_seg.nii.gz")
    assert theirs.same_grid(image, atol=1e-3)
    labels = theirs.array.astype(np.uint8)
    ours = segment(image, model=model).array
    assert np.mean(labels == ours) >= 0.999
    ours = _expected(ours, cfg, image.voxel_volume_ml)
    present = [i for i in cfg.labels if np.any(ours == i) or np.any(labels == i)]
    assert len(present) >= 2, f"the tiny model finds too few structures to compare: {present}"
    for idx in present:
        a, b = labels == idx, ours == idx
        assert 2 * np.sum(a & b) / (a.sum() + b.sum()) >= 0.999, (cfg.labels[idx], a.sum(), b.sum())
    # medseg reads the bundle back to the same model
    again = load_model(bundle, device="cpu")
    assert again.config == cfg


def test_min_size_ml_is_carried_to_the_bundle(tmp_path: Path):
    """A 2D slice-wise model whose min_size_ml rule removes components: MONAI removes the same ones."""
    pytest.importorskip("fire", reason="python -m monai.bundle needs `fire` (pip install fire)")
    info = next(m for m in CONFIGS if m.name == "unet2d_axial")
    cfg = _tiny_config(info.path, keep_spacing=True)
    cfg = config_from_mapping({**config_to_mapping(cfg), "postprocessing": {
        n: {"min_size_ml": 4.0} for n in cfg.labels.values()}})
    model = _trained(cfg, steps=8)  # briefly trained: many small specks
    bundle = export_bundle(model, tmp_path / "bundle")
    shape, affine = grid("oblique", (36, 46, 60), (6.0, 6.0, 6.0))
    image, _ = make_phantom(shape=shape, affine=affine, seed=4244)
    (tmp_path / "in").mkdir()
    write_volume(image, tmp_path / "in" / "case.nii.gz")
    image = read_volume(tmp_path / "in" / "case.nii.gz")
    _run_bundle(bundle, tmp_path / "in", tmp_path / "out")
    labels = read_volume(tmp_path / "out" / "case_seg.nii.gz").array.astype(np.uint8)
    ours = segment(image, model=model).array
    raw = segment(image, model=model, postprocess=False).array
    assert np.mean(labels == ours) >= 0.999
    ours = _expected(ours, cfg, image.voxel_volume_ml)
    removed = (raw != 0) & (ours == 0)
    assert removed.sum() > 0, "the rule removed nothing: the test would not see a missing min_size_ml"
    # every voxel medseg removed, the bundle removed too (and nothing else differs)
    assert np.mean(labels[removed] == 0) >= 0.999
    for idx in cfg.labels:
        a, b = labels == idx, ours == idx
        if a.any() or b.any():
            assert 2 * np.sum(a & b) / (a.sum() + b.sum()) >= 0.999, cfg.labels[idx]


@pytest.mark.parametrize("info", CONFIGS + [m for m in list_models() if m.trained], ids=lambda m: m.name)
def test_network_spec_round_trips(info):
    """``network_def`` maps back to the same network config (what import_bundle relies on)."""
    cfg = load_config(info.path)
    target, kwargs = network_spec(cfg.network, in_channels=cfg.in_channels, out_channels=cfg.out_channels)
    assert target == NETWORK_TARGETS[cfg.network.name]
    json.dumps(kwargs)  # plain data
    back = network_config_from_spec(target, kwargs)
    assert network_spec(back, in_channels=cfg.in_channels, out_channels=cfg.out_channels) == (target, kwargs)


def test_foreign_network_arguments_medseg_does_not_build_are_refused():
    cfg = load_config(next(m for m in list_models() if m.trained).path)
    target, kwargs = network_spec(cfg.network, in_channels=1, out_channels=7)
    with pytest.raises(ModelError, match="norm"):
        network_config_from_spec(target, {**kwargs, "norm": "batch"})
    with pytest.raises(ModelError, match="not in medseg's whitelist"):
        network_config_from_spec("medseg.models.networks.torch", kwargs)


def test_foreign_2d_bundle_maps_slice_inferer_and_postprocessing(tmp_path: Path):
    """Without medseg_config, the slice axis, the network and the rules come back from the bundle's own data."""
    info = next(m for m in CONFIGS if m.name == "dynunet2d_coronal")
    cfg = _tiny_config(info.path, keep_spacing=False)
    torch.manual_seed(0)
    net = build_network(cfg.network, in_channels=cfg.in_channels, out_channels=cfg.out_channels).eval()
    bundle = export_bundle(LoadedModel(cfg, net, torch.device("cpu")), tmp_path / "b")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta.pop("medseg_config")
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    back, state = import_bundle(bundle)
    assert back.network == cfg.network
    assert back.inference.slice_axis == "coronal"
    assert back.inference.patch_size == cfg.inference.patch_size
    assert back.postprocessing == cfg.postprocessing
    assert back.labels == cfg.labels
    assert set(state) == set(net.state_dict())


def test_dynunet_weights_with_shared_tensors_save_and_load(tmp_path: Path):
    """DynUNet registers its blocks twice (shared tensors): safetensors checkpoints still write and load."""
    from medseg.models.checkpoint import apply_weights, load_weights, save_weights

    cfg = load_config(next(m for m in CONFIGS if m.name == "dynunet3d").path).network
    torch.manual_seed(0)
    net = build_network(cfg, in_channels=1, out_channels=3)
    save_weights(net, tmp_path / "w.safetensors")
    other = build_network(cfg, in_channels=1, out_channels=3)
    apply_weights(other, load_weights(tmp_path / "w.safetensors"), source="test")
    for (k, a), b in zip(net.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
