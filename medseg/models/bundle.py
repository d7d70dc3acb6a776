"""MONAI bundles: export a medseg model as a bundle; import a bundle without running its code.

Export writes ``configs/inference.json`` (runnable with ``python -m monai.bundle run``; its
pipeline is the same MONAI transforms medseg runs), ``configs/metadata.json`` (with the medseg
config as plain data under ``"medseg_config"``), ``models/model.pt`` (a plain state dict) and
``models/model.safetensors``.

Import reads bundle configs as *data*. Only whitelisted ``_target_`` names are recognised and
any ``$`` expression or ``@``/``%`` reference in a value medseg needs is refused with
:class:`~medseg.core.errors.ModelError` unless the caller opts in with ``allow_code=True``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

from medseg.core.config import load_yaml
from medseg.core.errors import ConfigError, MedsegError, ModelError
from medseg.models.config import (
    InferenceConfig,
    IntensityConfig,
    ModelConfig,
    NetworkConfig,
    PreprocessingConfig,
    config_from_mapping,
    config_to_mapping,
    SLICE_ARRAY_AXIS,
    model_axes,
    monai_pixdim,
    slice_dim,
)

__all__ = ["export_bundle", "import_bundle", "BUNDLE_TARGETS", "unread_code"]

log = logging.getLogger(__name__)

#: ``_target_`` names medseg understands in a bundle it did not write (read as data, never run).
BUNDLE_TARGETS = {
    "UNet": "unet", "monai.networks.nets.UNet": "unet",
    "DynUNet": "dynunet", "monai.networks.nets.DynUNet": "dynunet",
    "SegResNet": "segresnet", "monai.networks.nets.SegResNet": "segresnet",
    "SwinUNETR": "swinunetr", "monai.networks.nets.SwinUNETR": "swinunetr",
    "medseg.models.networks.DilatedASPPNet": "deeplab",
    "medseg.models.networks.FCN": "fcn",
}

def _network_def(config: ModelConfig) -> dict[str, Any]:
    """``network_def``: the class and arguments :func:`~medseg.models.registry.build_network` uses."""
    from medseg.models.registry import network_spec

    target, kwargs = network_spec(config.network, in_channels=config.in_channels, out_channels=config.out_channels)
    return {"_target_": target, **kwargs}


def _postprocessing(config: ModelConfig) -> list[dict]:
    """MONAI transforms for the config's per-label clean-up, on the argmax label map ``pred``.

    Order: largest component, then minimum size, then hole filling (medseg applies the rules
    label by label; they agree unless one label's rule changes voxels another label's rule
    looks at). Minimum size and hole filling work on one-hot channels (``pred_<c>``, uint8):

    * ``RemoveSmallObjectsd(by_measure=True)`` on a label's channel drops its 26-connected
      components under ``min_size_ml`` (mm³ from the output's pixdim); the argmax over the
      channels then makes those voxels background, as medseg does. With scikit-image 0.26
      (issue #8001) a component of exactly ``ceil(min_size_ml / voxel volume)`` voxels is
      removed as well, where medseg keeps it (a warning is logged on export).
    * ``FillHolesd(connectivity=1)`` on a copy of a label's channel (``fill_<c>``) fills its
      holes (6-connected background, as ``scipy.ndimage.binary_fill_holes``); the argmax over
      ``[pred_1 .. pred_N, fill_.., pred_0]`` and a ``MapLabelValued`` back to label values
      fill only voxels that were background, so a structure inside another stays.
    """
    index = {name: i for i, name in config.labels.items()}
    rules = config.postprocessing
    largest = sorted(index[n] for n, r in rules.items() if r.largest_component)
    small = sorted((index[n], r.min_size_ml) for n, r in rules.items() if r.min_size_ml > 0)
    holes = sorted(index[n] for n, r in rules.items() if r.fill_holes)
    n = config.out_channels
    channels = [f"pred_{c}" for c in range(n)]
    split = [{"_target_": "AsDiscreted", "keys": "pred", "to_onehot": n, "dtype": "$torch.uint8"},
             {"_target_": "SplitDimd", "keys": "pred", "output_postfixes": [str(c) for c in range(n)], "dim": 0,
              "keepdim": True}]
    post: list[dict] = []
    if largest:
        post.append({"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": largest,
                     "independent": True})
    if small:
        if _skimage_min_size_inclusive():
            log.warning("the installed scikit-image applies RemoveSmallObjects' min_size inclusively "
                        "(scikit-image issue #8001): the bundle also removes components of exactly the minimum "
                        "size, which medseg keeps")
        post += split
        post += [{"_target_": "RemoveSmallObjectsd", "keys": f"pred_{c}", "min_size": float(ml) * 1000.0,
                  "by_measure": True, "connectivity": 3} for c, ml in small]
        post += [{"_target_": "ConcatItemsd", "keys": channels, "name": "pred", "dim": 0},
                 {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                 {"_target_": "DeleteItemsd", "keys": channels}]
    if holes:
        filled = [f"fill_{c}" for c in holes]
        post += split
        post += [{"_target_": "CopyItemsd", "keys": [f"pred_{c}" for c in holes], "names": filled},
                 {"_target_": "FillHolesd", "keys": filled, "connectivity": 1},
                 {"_target_": "ConcatItemsd", "keys": channels[1:] + filled + channels[:1], "name": "pred", "dim": 0},
                 {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                 {"_target_": "MapLabelValued", "keys": "pred", "orig_labels": list(range(n + len(holes))),
                  "target_labels": list(range(1, n)) + holes + [0]},
                 {"_target_": "DeleteItemsd", "keys": channels + filled}]
    return post


def _skimage_min_size_inclusive() -> bool:
    """True where ``skimage.morphology.remove_small_objects(ar, min_size)`` removes objects *of* ``min_size`` too.

    scikit-image 0.26 forwards the deprecated ``min_size`` to ``max_size`` (scikit-image issue
    #8001), which MONAI's ``RemoveSmallObjects`` passes positionally.
    """
    import warnings

    import numpy as np
    from skimage.morphology import remove_small_objects

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return not remove_small_objects(np.ones((1, 2), dtype=bool), 2).any()


def _inference_config(config: ModelConfig) -> dict:
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
    post += _postprocessing(config)
    post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                 "output_dtype": "$np.uint8", "resample": False, "separate_folder": False, "print_log": False})
    window = {"sw_batch_size": config.inference.sw_batch_size, "overlap": config.inference.overlap,
              "mode": config.inference.blending, "padding_mode": "replicate"}
    axis = slice_dim(config)
    if axis is None:
        inferer = {"_target_": "SlidingWindowInferer", "roi_size": roi, **window}
    else:  # medseg's 2D path: windows of one slice along that axis, the 2D network on the squeezed patch
        inferer = {"_target_": "SliceInferer", "spatial_dim": axis,
                   "roi_size": [r for d, r in enumerate(roi) if d != axis], **window}
    return {
        "imports": ["$import glob", "$import numpy as np", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/sample'",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii*')))",
        "device": "$torch.device('cpu')",
        "network_def": _network_def(config),
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


def _medseg_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medseg")
    except PackageNotFoundError:
        return "unknown"


def export_bundle(model, folder: str | Path) -> Path:
    """Write a loaded model as a MONAI bundle folder.

    Run it with ``python -m monai.bundle run --config_file configs/inference.json --bundle_root
    FOLDER --dataset_dir IMAGES --output_dir OUT`` (NIfTI images in, ``*_seg.nii.gz`` out).

    Every network medseg configures is exported: ``network_def`` is the class and arguments
    medseg builds (:func:`medseg.models.registry.network_spec`); for medseg's own networks
    (``deeplab``, ``fcn``) that is ``medseg.models.networks.<Class>``, which ``monai.bundle``
    imports, so medseg must be installed where the bundle runs (said in the metadata and the
    bundle's README). 2D models run slice by slice with MONAI's ``SliceInferer`` along the same
    model-grid axis as medseg. Postprocessing rules become MONAI transforms (see
    :func:`_postprocessing`).

    Parameters
    ----------
    model : LoadedModel
    folder : str or Path
        Created if missing; existing files are overwritten.

    Returns
    -------
    Path
        The bundle folder.
    """
    import torch

    from medseg.models.checkpoint import save_weights

    root = Path(folder)
    for sub in ("configs", "models", "docs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.config
    inference = _inference_config(cfg)
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    target = inference["network_def"]["_target_"]
    meta = _bundle_metadata(cfg, roi=inference["inferer"]["roi_size"], target=target)
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    torch.save(state, root / "models" / "model.pt")
    save_weights(state, root / "models" / "model.safetensors")
    (root / "docs" / "README.md").write_text(_bundle_readme(cfg, target))
    return root


def _bundle_metadata(cfg: ModelConfig, *, roi: list[int], target: str) -> dict:
    """``configs/metadata.json``: versions, the network's input/output format and the medseg config."""
    import monai
    import numpy as np
    import torch

    needs_medseg = target.startswith("medseg.")
    channel_def = {"0": "background", **{str(i): n for i, n in cfg.labels.items()}}
    return {
        "version": "0.1.0", "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {"medseg": _medseg_version()} if needs_medseg else {},
        "name": cfg.name, "task": cfg.description or "segmentation",
        "description": f"{cfg.description} (exported by medseg)"
                       + (f"; network_def is {target}: needs medseg installed (pip install medseg)"
                          if needs_medseg else ""),
        "authors": "medseg", "copyright": "medseg",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield" if cfg.modality == "CT" else "magnitude",
                                 "num_channels": cfg.in_channels, "spatial_shape": list(roi),
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {"0": cfg.modality}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": cfg.out_channels,
                                 "spatial_shape": list(roi), "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": True, "channel_def": channel_def}}},
        "medseg_config": config_to_mapping(cfg),
    }


def _bundle_readme(cfg: ModelConfig, target: str) -> str:
    """``docs/README.md``: how to run the bundle and what it needs."""
    axis = slice_dim(cfg)
    notes = [f"Network: `{target}` ({cfg.network.spatial_dims}D)."]
    if target.startswith("medseg."):
        notes.append(f"`{target}` is medseg's own class: `monai.bundle` imports it, so medseg must be "
                     "installed in the environment that runs this bundle.")
    if axis is not None:
        notes.append(f"2D model run slice by slice ({cfg.inference.slice_axis} slices, MONAI `SliceInferer` "
                     f"along axis {axis} of the {cfg.preprocessing.orientation.upper()} model grid).")
    if cfg.postprocessing:
        notes.append("Postprocessing (largest component, minimum size, hole filling) runs as MONAI transforms.")
    if any(r.min_size_ml > 0 for r in cfg.postprocessing.values()) and _skimage_min_size_inclusive():
        notes.append("With scikit-image 0.26 (issue #8001) `RemoveSmallObjectsd` also removes components of "
                     "exactly the minimum size, which medseg keeps.")
    return (f"# {cfg.name}\n\n{cfg.description}\n\nExported by medseg. Run:\n\n"
            "    python -m monai.bundle run --config_file configs/inference.json --bundle_root . "
            "--dataset_dir IMAGES --output_dir OUT\n\n" + "\n".join(notes) + "\n\nLabels: "
            + ", ".join(f"{i} {n}" for i, n in cfg.labels.items()) + "\n")


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
    if not isinstance(meta, Mapping):
        raise ModelError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}; "
                         "the bundle's metadata is broken")
    state = load_weights(_weights(root))
    data = _read_config(cfg_path)
    if isinstance(data, Mapping):
        report_unread_code(data, cfg_path)
    if "medseg_config" in meta:
        return config_from_mapping(meta["medseg_config"], source=f"{meta_path} (medseg_config)"), state
    if not isinstance(data, Mapping) or "network_def" not in data:
        raise ModelError(f"{cfg_path}: no network_def; medseg cannot map this bundle")
    try:
        return _map_bundle(root, data, meta, cfg_path, allow_code), state
    except MedsegError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        # a value medseg needs is missing, of the wrong type, or was code (ignored with allow_code)
        raise ModelError(f"{cfg_path}: medseg cannot map this bundle ({type(exc).__name__}: {exc}); a value medseg "
                         f"reads (network_def, preprocessing, inferer, postprocessing) is missing, not a plain "
                         f"number/list, or is code, which medseg never evaluates even with --allow-code") from exc


#: Top-level sections of a bundle config that medseg maps; the others are never read.
READ_SECTIONS = ("network_def", "preprocessing", "inferer", "postprocessing")


def unread_code(data: Mapping) -> list[str]:
    """``where = value`` of each ``$`` expression and ``_target_`` in sections medseg does not read."""
    found: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str) and value.startswith("$"):
            found.append(f"{where} = {value[:60]!r}")
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if k == "_target_":
                    found.append(f"{where}._target_ = {str(v)[:60]!r}")
                else:
                    walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    for key, value in data.items():
        if key not in READ_SECTIONS:
            walk(value, str(key))
    return found


def report_unread_code(data: Mapping, where: Path) -> list[str]:
    """Log (warning) the code in sections medseg ignores, so that it is never silently passed over."""
    found = unread_code(data)
    if found:
        sections = sorted({f.split("=")[0].split(".")[0].split("[")[0].strip() for f in found})
        log.warning("%s: %d code expression(s) in sections medseg does not read (%s); medseg never runs them, "
                    "`monai.bundle run` would: %s%s", where, len(found), ", ".join(sections), "; ".join(found[:5]),
                    " ..." if len(found) > 5 else "")
    return found


def _map_bundle(root: Path, data: Mapping, meta: Mapping, cfg_path: Path, allow_code: bool) -> ModelConfig:
    if not isinstance(data["network_def"], Mapping):
        raise ModelError(f"{cfg_path}: network_def must be a mapping with _target_, found "
                         f"{type(data['network_def']).__name__}")
    net = dict(data["network_def"])
    target = net.pop("_target_", None)
    if target not in BUNDLE_TARGETS:
        raise ModelError(f"{cfg_path}: network_def._target_ {target!r} is not in medseg's whitelist "
                         f"{sorted(set(BUNDLE_TARGETS))}")
    net = _plain(net, "network_def", allow_code)
    out_channels = _channels(net, "out_channels", 2, cfg_path)
    in_channels = _channels(net, "in_channels", 1, cfg_path)
    network = _network_config(target, net, cfg_path)
    pre, labels_hint = _preprocessing(data, cfg_path, allow_code)
    inf = _inferer(data, pre, allow_code)
    labels = _labels(meta, out_channels)
    post = _postprocessing_rules(data, labels, allow_code)
    try:
        cfg = ModelConfig(name=str(meta.get("name", root.name)), network=network, labels=labels,
                          description=str(meta.get("description", "")), modality="any",
                          in_channels=in_channels, preprocessing=pre, inference=inf,
                          postprocessing=post)
    except ConfigError as exc:
        raise ModelError(f"{cfg_path}: medseg cannot map this bundle: {exc}") from exc
    return cfg


_MAX_CHANNELS = 1024  # no segmentation network has more input or output channels


def _channels(net: Mapping, key: str, default: int, where: Path) -> int:
    """``network_def[key]`` as a channel count in 1..1024; a named error otherwise (a hostile or
    corrupt bundle must not make medseg build a label table of 10**20 entries)."""
    value = net.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= _MAX_CHANNELS \
            or value != int(value):
        raise ModelError(f"{where}: network_def.{key} must be a whole number from 1 to {_MAX_CHANNELS}, "
                         f"found {value!r}; fix the bundle's configs/inference.json")
    return int(value)


def _network_config(target: str, net: Mapping, where: Path) -> NetworkConfig:
    """The network config whose ``network_def`` is ``net`` (the inverse of what export writes)."""
    from medseg.models.registry import network_config_from_spec

    try:
        return network_config_from_spec(target, net)
    except (ModelError, ConfigError) as exc:
        raise ModelError(f"{where}: {exc}") from exc


def _transforms(data: Mapping, key: str) -> list[Mapping]:
    section = data.get(key)
    if isinstance(section, Mapping):
        section = section.get("transforms", [])
    return [t for t in (section or []) if isinstance(t, Mapping)]


def _preprocessing(data: Mapping, where: Path, allow_code: bool) -> tuple[PreprocessingConfig, None]:
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
    """Sliding-window settings; a ``SliceInferer`` maps to a 2D model's ``slice_axis``."""
    inf = data.get("inferer")
    if not isinstance(inf, Mapping):
        return InferenceConfig()
    name = str(inf.get("_target_", "")).split(".")[-1]
    inf = _plain({k: v for k, v in inf.items() if k != "_target_"}, "inferer", allow_code)
    roi = list(inf.get("roi_size") or [96, 96, 96])
    axes = model_axes(pre)
    slice_axis = "axial"
    if name == "SliceInferer":
        dim = int(inf.get("spatial_dim", 0))
        roi.insert(dim, 1)
        slice_axis = {a: n for n, a in SLICE_ARRAY_AXIS.items()}[axes[dim]]
    patch = [0, 0, 0]
    for d, a in enumerate(axes):
        patch[a] = int(roi[d])
    return InferenceConfig(tuple(patch), float(inf.get("overlap", 0.25)),  # type: ignore[arg-type]
                           "gaussian" if inf.get("mode") == "gaussian" else "constant",
                           int(inf.get("sw_batch_size", 1)), slice_axis)  # type: ignore[arg-type]


def _postprocessing_rules(data: Mapping, labels: Mapping[int, str], allow_code: bool) -> dict:
    """Per-label rules from the transforms :func:`_postprocessing` writes (others are ignored)."""
    from medseg.models.config import PostprocessingConfig

    rules: dict[int, dict] = {}

    def channel(key: Any, prefix: str) -> Optional[int]:
        if isinstance(key, str) and key.startswith(prefix) and key[len(prefix):].isdigit():
            c = int(key[len(prefix):])
            return c if c in labels else None
        return None

    for t in _transforms(data, "postprocessing"):
        name = str(t.get("_target_", "")).split(".")[-1]
        if name not in ("KeepLargestConnectedComponentd", "RemoveSmallObjectsd", "FillHolesd"):
            continue
        t = _plain({k: t[k] for k in ("keys", "applied_labels", "min_size", "by_measure") if k in t},
                   f"postprocessing.{name}", allow_code)
        keys = t.get("keys")
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        if name == "KeepLargestConnectedComponentd" and "pred" in keys:
            for c in t.get("applied_labels") or []:
                if int(c) in labels:
                    rules.setdefault(int(c), {})["largest_component"] = True
        elif name == "RemoveSmallObjectsd":
            for key in keys:
                c = channel(key, "pred_")
                if c is None:
                    continue
                if not t.get("by_measure"):
                    log.warning("bundle RemoveSmallObjectsd on %s counts voxels, not mm³: not mapped to min_size_ml", key)
                    continue
                rules.setdefault(c, {})["min_size_ml"] = float(t.get("min_size", 64)) / 1000.0
        elif name == "FillHolesd":
            for key in keys:
                c = channel(key, "fill_")
                if c is not None:
                    rules.setdefault(c, {})["fill_holes"] = True
                elif key == "pred":
                    for c in t.get("applied_labels") or []:
                        if int(c) in labels:
                            rules.setdefault(int(c), {})["fill_holes"] = True
    return {labels[c]: PostprocessingConfig(**r) for c, r in sorted(rules.items())}


def _labels(meta: Any, out_channels: int) -> dict[int, str]:
    try:
        cd = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        labels = {int(k): str(v) for k, v in cd.items() if int(k) != 0}
        if sorted(labels) == list(range(1, out_channels)):
            return labels
    except (KeyError, TypeError, ValueError):
        pass
    return {i: f"label_{i}" for i in range(1, out_channels)}
