"""MONAI bundles: export a medseg model as a bundle; import a bundle without running its code.

Export writes ``configs/inference.json`` (runnable with ``python -m monai.bundle run``; its
pipeline is the same MONAI transforms medseg runs), ``configs/metadata.json`` (with the medseg
config as plain data under ``"medseg_config"``), ``models/model.pt`` (a plain state dict) and
``models/model.safetensors``.

Import reads bundle configs as *data*. Only whitelisted ``_target_`` names are recognised and
any ``$`` expression or ``@``/``%`` reference in a value medseg needs is refused with
:class:`~medseg.errors.ModelError` unless the caller opts in with ``allow_code=True``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

from medseg.config import load_yaml
from medseg.errors import ConfigError, ModelError
from medseg.models.config import (
    InferenceConfig,
    IntensityConfig,
    ModelConfig,
    NetworkConfig,
    PreprocessingConfig,
    config_from_mapping,
    config_to_mapping,
)

__all__ = ["export_bundle", "import_bundle", "BUNDLE_TARGETS"]

log = logging.getLogger(__name__)

#: ``_target_`` names medseg understands in a bundle it did not write (read as data, never run).
BUNDLE_TARGETS = {
    "UNet": "unet", "monai.networks.nets.UNet": "unet",
    "DynUNet": "dynunet", "monai.networks.nets.DynUNet": "dynunet",
    "SegResNet": "segresnet", "monai.networks.nets.SegResNet": "segresnet",
    "SwinUNETR": "swinunetr", "monai.networks.nets.SwinUNETR": "swinunetr",
}


def _inference_config(config: ModelConfig) -> dict:
    from medseg.inference.preprocess import model_axes, monai_pixdim

    pre = config.preprocessing
    axes = model_axes(pre)
    roi = [int(config.inference.patch_size[a]) for a in axes]
    it = pre.intensity
    transforms: list[dict] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": pre.orientation.upper(),
         "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
        {"_target_": "Spacingd", "keys": "image", "pixdim": list(monai_pixdim(pre)), "mode": "bilinear",
         "padding_mode": "border", "dtype": "$np.float32", "diagonal": pre.axis_aligned},
    ]
    if it.kind == "ct_window":
        transforms.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": it.window[0],
                           "a_max": it.window[1], "b_min": 0.0, "b_max": 1.0, "clip": True})
    elif it.kind == "mr_percentile":
        transforms.append({"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": it.percentiles[0],
                           "upper": it.percentiles[1], "b_min": 0.0, "b_max": 1.0, "clip": True, "channel_wise": True})
    elif it.kind == "mr_zscore":
        transforms.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True})
    transforms.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    post: list[dict] = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]
    index = {name: i for i, name in config.labels.items()}
    largest = [index[n] for n, r in config.postprocessing.items() if r.largest_component]
    holes = [index[n] for n, r in config.postprocessing.items() if r.fill_holes]
    if largest:
        post.append({"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": largest,
                     "independent": True})
    if holes:
        post.append({"_target_": "FillHolesd", "keys": "pred", "applied_labels": holes})
    if any(r.min_size_ml > 0 for r in config.postprocessing.values()):
        log.warning("min_size_ml postprocessing is not exported to the MONAI bundle")
    post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_dtype": "$np.uint8", "resample": False, "separate_folder": False, "print_log": False})
    net = config.network
    network_def: dict[str, Any] = {"_target_": "$medseg_network"}
    if net.name == "unet":
        network_def = {"_target_": "UNet", "spatial_dims": net.spatial_dims, "in_channels": config.in_channels,
                       "out_channels": config.out_channels, "channels": list(net.channels),
                       "strides": list(net.strides), "num_res_units": net.num_res_units,
                       "dropout": net.dropout, "norm": "INSTANCE"}
    else:
        raise ModelError(f"bundle export supports UNet models, not {net.name!r}; export a unet config")
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": roi, "sw_batch_size": config.inference.sw_batch_size,
               "overlap": config.inference.overlap, "mode": config.inference.blending, "padding_mode": "replicate"}
    return {
        "imports": ["$import glob", "$import numpy as np", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/sample'",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii*')))",
        "device": "$torch.device('cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "initialize": ["$torch.set_grad_enabled(False)",
                       "$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', "
                       "map_location='cpu', weights_only=True))",
                       "$@network.eval()"],
        "run": ["$[@postprocessing(dict(d, pred=@inferer(d['image'][None].to(@device), @network)[0])) "
                "for d in @dataset]"],
    }


def export_bundle(model, folder: str | Path) -> Path:
    """Write a loaded model as a MONAI bundle folder.

    Run it with ``python -m monai.bundle run --config_file configs/inference.json --bundle_root
    FOLDER --dataset_dir IMAGES --output_dir OUT`` (NIfTI images in, ``*_seg.nii.gz`` out).
    """
    import monai
    import torch

    from medseg.models.checkpoint import save_weights

    root = Path(folder)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.config
    (root / "configs" / "inference.json").write_text(json.dumps(_inference_config(cfg), indent=2))
    channel_def = {"0": "background", **{str(i): n for i, n in cfg.labels.items()}}
    meta = {
        "version": "0.1.0", "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "name": cfg.name, "task": cfg.description or "segmentation",
        "description": f"{cfg.description} (exported by medseg)", "authors": "medseg", "copyright": "medseg",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield" if cfg.modality == "CT" else "magnitude",
                                 "num_channels": cfg.in_channels, "spatial_shape": list(cfg.inference.patch_size),
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {"0": cfg.modality}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": cfg.out_channels,
                                 "spatial_shape": list(cfg.inference.patch_size), "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": True, "channel_def": channel_def}}},
        "medseg_config": config_to_mapping(cfg),
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    torch.save(state, root / "models" / "model.pt")
    save_weights(state, root / "models" / "model.safetensors")
    (root / "docs" / "README.md").write_text(
        f"# {cfg.name}\n\n{cfg.description}\n\nExported by medseg. Run:\n\n"
        "    python -m monai.bundle run --config_file configs/inference.json --bundle_root . "
        "--dataset_dir IMAGES --output_dir OUT\n\nLabels: "
        + ", ".join(f"{i} {n}" for i, n in cfg.labels.items()) + "\n")
    return root


# -- import -------------------------------------------------------------------------------
def _read_config(path: Path) -> Any:
    if path.suffix == ".json":
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    return load_yaml(path)


def _plain(value: Any, where: str, allow_code: bool) -> Any:
    """Refuse ``$`` expressions and ``@``/``%`` references unless ``allow_code``."""
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        if not allow_code:
            raise ModelError(f"bundle value {where} = {value!r} is code or a reference; medseg never evaluates "
                             "bundle code by default. Pass allow_code=True (--allow-code) only for bundles you trust")
        return None
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{where}.{k}", allow_code) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, f"{where}[{i}]", allow_code) for i, v in enumerate(value)]
    return value


def _find_bundle_config(root: Path) -> Path:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        if (root / "configs" / name).is_file():
            return root / "configs" / name
    raise ModelError(f"{root}: not a MONAI bundle (no configs/inference.json or .yaml)")


def _weights(root: Path) -> Path:
    for name in ("model.safetensors", "model.pt", "model.pth"):
        if (root / "models" / name).is_file():
            return root / "models" / name
    raise ModelError(f"{root}: bundle has no models/model.safetensors or models/model.pt")


def import_bundle(folder: str | Path, *, allow_code: bool = False):
    """Read a MONAI bundle as a medseg config and a state dict, without running its code.

    Returns
    -------
    config : ModelConfig
    state : dict of tensors

    Raises
    ------
    ModelError
        If the bundle needs code (``$`` expressions, unknown ``_target_``) and ``allow_code`` is
        False, or medseg cannot map it.
    """
    from medseg.models.checkpoint import load_weights

    root = Path(folder)
    cfg_path = _find_bundle_config(root)
    meta_path = root / "configs" / "metadata.json"
    meta = _read_config(meta_path) if meta_path.is_file() else {}
    state = load_weights(_weights(root))
    if isinstance(meta, Mapping) and "medseg_config" in meta:
        return config_from_mapping(meta["medseg_config"], source=f"{meta_path} (medseg_config)"), state
    data = _read_config(cfg_path)
    if not isinstance(data, Mapping) or "network_def" not in data:
        raise ModelError(f"{cfg_path}: no network_def; medseg cannot map this bundle")
    net = dict(data["network_def"])
    target = net.pop("_target_", None)
    if target not in BUNDLE_TARGETS:
        raise ModelError(f"{cfg_path}: network_def._target_ {target!r} is not in medseg's whitelist "
                         f"{sorted(set(BUNDLE_TARGETS))}")
    net = _plain(net, "network_def", allow_code)
    network = _network_config(BUNDLE_TARGETS[target], net, cfg_path)
    pre, labels_hint = _preprocessing(data, cfg_path, allow_code)
    inf = _inferer(data, pre, allow_code)
    labels = _labels(meta, int(net.get("out_channels", 2)))
    cfg = ModelConfig(name=str(meta.get("name", root.name)), network=network, labels=labels,
                      description=str(meta.get("description", "")), modality="any",
                      in_channels=int(net.get("in_channels", 1)), preprocessing=pre, inference=inf)
    return cfg, state


def _network_config(name: str, net: Mapping, where: Path) -> NetworkConfig:
    dims = int(net.get("spatial_dims", 3))
    if name == "unet":
        return NetworkConfig("unet", dims, tuple(net["channels"]), tuple(net["strides"]),
                             int(net.get("num_res_units", 0)), float(net.get("dropout") or 0.0))
    if name == "dynunet":
        strides = list(net["strides"])
        return NetworkConfig("dynunet", dims, tuple(net.get("filters") or []), tuple(strides[1:]),
                             1 if net.get("res_block") else 0, float(net.get("dropout") or 0.0))
    if name == "segresnet":
        return NetworkConfig("segresnet", dims, (int(net.get("init_filters", 8)),), (), 1,
                             float(net.get("dropout_prob") or 0.0))
    return NetworkConfig("swinunetr", dims, (1,), (), 1, float(net.get("drop_rate", 0.0)),
                         int(net.get("feature_size", 24)))


def _transforms(data: Mapping, key: str) -> list[Mapping]:
    section = data.get(key)
    if isinstance(section, Mapping):
        section = section.get("transforms", [])
    return [t for t in (section or []) if isinstance(t, Mapping)]


def _preprocessing(data: Mapping, where: Path, allow_code: bool) -> tuple[PreprocessingConfig, None]:
    from medseg.inference.preprocess import model_axes

    axcodes, pixdim, intensity, diagonal = "RAS", None, IntensityConfig(kind="none"), False
    for t in _transforms(data, "preprocessing"):
        name = str(t.get("_target_", "")).split(".")[-1]
        if name == "Orientationd":
            axcodes = _plain(t.get("axcodes", "RAS"), "Orientationd.axcodes", allow_code)
        elif name == "Spacingd":
            pixdim = _plain(t.get("pixdim"), "Spacingd.pixdim", allow_code)
            diagonal = bool(_plain(t.get("diagonal", False), "Spacingd.diagonal", allow_code))
        elif name == "ScaleIntensityRanged":
            intensity = IntensityConfig("ct_window", (float(_plain(t["a_min"], "a_min", allow_code)),
                                                      float(_plain(t["a_max"], "a_max", allow_code))))
        elif name == "ScaleIntensityRangePercentilesd":
            intensity = IntensityConfig("mr_percentile", percentiles=(float(t["lower"]), float(t["upper"])))
        elif name == "NormalizeIntensityd":
            intensity = IntensityConfig("mr_zscore")
    spacing = [0.0, 0.0, 0.0]
    if pixdim is not None:
        axes = model_axes(PreprocessingConfig(orientation=str(axcodes)))
        for d, a in enumerate(axes):
            spacing[a] = float(pixdim[d])
    return PreprocessingConfig(tuple(spacing), str(axcodes), intensity, diagonal), None  # type: ignore[arg-type]


def _inferer(data: Mapping, pre: PreprocessingConfig, allow_code: bool) -> InferenceConfig:
    from medseg.inference.preprocess import model_axes

    inf = data.get("inferer")
    if not isinstance(inf, Mapping):
        return InferenceConfig()
    inf = _plain({k: v for k, v in inf.items() if k != "_target_"}, "inferer", allow_code)
    roi = inf.get("roi_size") or [96, 96, 96]
    patch = [0, 0, 0]
    for d, a in enumerate(model_axes(pre)):
        patch[a] = int(roi[d])
    return InferenceConfig(tuple(patch), float(inf.get("overlap", 0.25)),  # type: ignore[arg-type]
                           "gaussian" if inf.get("mode") == "gaussian" else "constant",
                           int(inf.get("sw_batch_size", 1)))


def _labels(meta: Any, out_channels: int) -> dict[int, str]:
    try:
        cd = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        labels = {int(k): str(v) for k, v in cd.items() if int(k) != 0}
        if sorted(labels) == list(range(1, out_channels)):
            return labels
    except (KeyError, TypeError, ValueError):
        pass
    return {i: f"label_{i}" for i in range(1, out_channels)}
