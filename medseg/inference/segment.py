"""Volume in → Segmentation out: preprocessing, sliding-window inference, exact inverse.

Memory: the network runs on the (coarse) model grid. For a class map alone, the windows are
stitched slab by slab (:mod:`medseg.inference.stitch`) and each slab is reduced to labels on the
input grid at once, so neither model-grid nor input-grid probabilities of the whole volume are
held; those are only allocated when probabilities are asked for. When the model grid is the
input grid up to axis order and flips (no resampling), the input is preprocessed window by
window (:class:`~medseg.inference.preprocess.PermutedInput`, no float32 copy of the volume)
and the windows are stitched tile by tile, each finished tile's labels written straight into
the input-grid map: besides the input and the label map, one network window and a band of
tiles of the overlap's depth are held.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Optional

import numpy as np
import torch

from medseg.errors import InputError
from medseg.memory import release_free_memory
from medseg.inference.postprocess import postprocess_label_map
from medseg.inference.preprocess import (
    GridPermutation,
    PermutedInput,
    SlabArgmax,
    input_slabs,
    is_permutation,
    map_to_input_grid,
    model_axes,
    preprocess_volume,
)
from medseg.inference.stitch import argmax_channels, slab_axis, sliding_window_slabs, sliding_window_tiles
from medseg.models.loader import LoadedModel, load_model, resolve_device
from medseg.progress import CancelCallback, ProgressCallback, check_cancel, report
from medseg.segmentation import Segmentation, smallest_label_dtype
from medseg.volume import Volume

__all__ = ["segment", "predict_probabilities", "predict_model_grid", "enable_dropout", "argmax_channels"]

log = logging.getLogger(__name__)

_ACCUMULATE = {"float32": torch.float32, "float16": torch.float16}

_SLICE_LETTERS = {"axial": "SI", "coronal": "AP", "sagittal": "RL"}


def enable_dropout(network: torch.nn.Module, enabled: bool = True) -> None:
    """Put only the dropout layers in train mode (MC dropout); everything else stays eval."""
    for m in network.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)):
            m.train(enabled)


def _roi_and_predictor(model: LoadedModel):
    cfg = model.config
    axes = model_axes(cfg.preprocessing)  # model axis -> array axis
    roi = [int(cfg.inference.patch_size[a]) for a in axes]
    net = model.network
    if cfg.network.spatial_dims == 3:
        return roi, net, None
    letters = cfg.preprocessing.orientation.upper()
    slice_dim = next(d for d, c in enumerate(letters) if c in _SLICE_LETTERS[cfg.inference.slice_axis])
    roi[slice_dim] = 1
    dim = 2 + slice_dim

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return net(x.squeeze(dim)).unsqueeze(dim)

    return roi, predictor, slice_dim


def _window_count(shape: tuple[int, ...], roi: list[int], overlap: float, batch: int) -> Optional[int]:
    n = 1
    for s, r in zip(shape, roi):
        r = min(r, s)
        step = max(1, int(r * (1 - overlap))) if r < s else 1
        n *= 1 if r >= s else math.ceil((s - r) / step) + 1
    return math.ceil(n / batch)


def _check_input(volume: Volume, model: LoadedModel) -> None:
    """Refuse a volume with the wrong number of channels; warn on a modality the model was not trained on."""
    cfg = model.config
    if volume.channels != cfg.in_channels:
        raise InputError(f"model {cfg.name!r} needs {cfg.in_channels} input channel(s), the volume has "
                         f"{volume.channels}; pass a (C, Z, Y, X) volume with C = {cfg.in_channels}")
    modality = volume.meta.get("Modality")
    if cfg.modality != "any" and modality and modality != cfg.modality:
        log.warning("model %s was trained on %s, the volume is %s: results may be poor", cfg.name, cfg.modality, modality)


def _model_input(volume: Volume, model: LoadedModel, progress, cancel) -> tuple[torch.Tensor, np.ndarray]:
    """Check the volume against the model and preprocess it: ``(1, C, I, J, K)`` tensor and its RAS affine."""
    cfg = model.config
    _check_input(volume, model)
    report(progress, 0, None, "preprocessing")
    x = preprocess_volume(volume, cfg.preprocessing)
    release_free_memory()  # the intermediate copies of resampling
    affine = np.asarray(x.affine, dtype=float)
    check_cancel(cancel, "segmentation")
    return x.as_tensor()[None], affine


def _counted_predictor(model: LoadedModel, shape: tuple[int, ...], progress, cancel):
    """Window size and a predictor that reports progress and checks ``cancel`` on every window."""
    cfg = model.config
    roi, predictor, _ = _roi_and_predictor(model)
    total = _window_count(shape, roi, cfg.inference.overlap, cfg.inference.sw_batch_size)
    done = [0]

    def counted(patch: torch.Tensor) -> torch.Tensor:
        check_cancel(cancel, "segmentation")
        out = predictor(patch)
        done[0] += 1
        report(progress, min(done[0], total or done[0]), total, "segmenting")
        return out

    return roi, counted


def _stitch_device(model: LoadedModel, nbytes: int) -> str:
    """Accumulate on the GPU only when ``nbytes`` comfortably fits there."""
    dev = model.device
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return str(dev) if nbytes < 0.25 * free else "cpu"
    return "cpu"


def _amp(device: torch.device):
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()


def predict_model_grid(
    volume: Volume,
    model: LoadedModel,
    *,
    sw_device: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
    mc_dropout: bool = False,
    softmax: bool = True,
) -> tuple[torch.Tensor, np.ndarray]:
    """Softmax probabilities (or, with ``softmax=False``, logits) on the model grid.

    Returns
    -------
    probabilities : (C, I, J, K) float32 tensor
        Channel 0 background, channel c label c; model grid in MONAI index order, on the
        stitching device (CPU for large volumes).
    affine : (4, 4) ndarray
        Model grid ``(i, j, k)`` → RAS mm.
    """
    from monai.inferers import sliding_window_inference

    cfg = model.config
    data, affine = _model_input(volume, model, progress, cancel)
    dev = model.device
    if sw_device is None:
        sw_device = _stitch_device(model, data[0, 0].numel() * cfg.out_channels * 4)
    roi, counted = _counted_predictor(model, tuple(data.shape[2:]), progress, cancel)
    model.network.eval()
    if mc_dropout:
        enable_dropout(model.network)
    try:
        with torch.inference_mode(), _amp(dev):
            logits = sliding_window_inference(
                data, roi, cfg.inference.sw_batch_size, counted, overlap=cfg.inference.overlap,
                mode=cfg.inference.blending, padding_mode="replicate", sw_device=dev, device=sw_device,
            )
            probs = logits[0].float()
            del logits
            if softmax:
                softmax_(probs)
    finally:
        if mc_dropout:
            enable_dropout(model.network, False)
    return probs, affine


def _label_map_by_slabs(volume: Volume, model: LoadedModel, dtype, *, progress=None, cancel=None,
                        accumulate: torch.dtype = torch.float32, _axis: Optional[int] = None) -> np.ndarray:
    """Class map on the input grid without ever holding model-grid probabilities of the whole volume.

    The network runs as in :func:`predict_model_grid` (same windows and weights, see
    :mod:`medseg.inference.stitch`); each finished slab is reduced at once: an argmax on the
    model grid when the grids differ only by flips (then an exact copy), otherwise softmax,
    trilinear sampling at the input voxels it holds and argmax (:class:`SlabArgmax`). When the
    grids differ only by axis order and flips, :func:`_label_map_by_tiles` does it instead
    (``_axis``, for tests, forces the slabs along that model axis).
    """
    cfg = model.config
    if _axis is None:
        _check_input(volume, model)
        report(progress, 0, None, "preprocessing")
        lazy = PermutedInput.create(volume, cfg.preprocessing)
        if lazy is not None:
            check_cancel(cancel, "segmentation")
            return _label_map_by_tiles(volume, model, lazy, lazy.affine, dtype, progress=progress, cancel=cancel,
                                       accumulate=accumulate)
    data, affine = _model_input(volume, model, progress, cancel)
    if _axis is None and is_permutation(affine, volume):
        return _label_map_by_tiles(volume, model, data, affine, dtype, progress=progress, cancel=cancel,
                                   accumulate=accumulate)
    shape = tuple(int(s) for s in data.shape[2:])
    roi, counted = _counted_predictor(model, shape, progress, cancel)
    axis = slab_axis(shape, roi) if _axis is None else _axis
    span = data[0, 0].numel() // shape[axis] * min(roi[axis], shape[axis])
    device = _stitch_device(model, span * (cfg.out_channels + 1) * 4)
    log.debug("stitching along model axis %d: %.0f MB of accumulators", axis, span * (cfg.out_channels + 1) * 4 / 2**20)
    tdtype = torch.uint8 if dtype == np.uint8 else torch.int32
    exact = is_permutation(affine, volume)
    lab = torch.empty(shape, dtype=tdtype) if exact else None
    inverse = None if exact else SlabArgmax(volume, affine, shape, axis, dtype)
    model.network.eval()
    with torch.inference_mode(), _amp(model.device):
        slabs = sliding_window_slabs(data, roi, counted, overlap=cfg.inference.overlap, mode=cfg.inference.blending,
                                     sw_batch_size=cfg.inference.sw_batch_size, padding_mode="replicate",
                                     sw_device=model.device, device=device, axis=axis)
        del data
        for slab, logits in slabs:
            if lab is not None:
                index = [slice(None)] * 3
                index[axis] = slab
                lab[tuple(index)] = argmax_channels(logits, tdtype).cpu()
            else:
                inverse.add(slab, softmax_(logits))
            del logits
        del slabs
    release_free_memory()  # network activations and slab accumulators
    report(progress, 0, None, "mapping to the input grid")
    if lab is None:
        return inverse.label_map
    out = map_to_input_grid(lab[None], affine, volume, slice(0, volume.shape[0]), mode="nearest")[0]
    return out.numpy().astype(dtype, copy=False)


def _label_map_by_tiles(volume: Volume, model: LoadedModel, data, affine: np.ndarray, dtype, *,
                        progress=None, cancel=None, accumulate: torch.dtype = torch.float32) -> np.ndarray:
    """Class map when the model grid is the input grid up to axis permutation and flips.

    The windows are stitched tile by tile (:func:`~medseg.inference.stitch.sliding_window_tiles`)
    and each finished tile's argmax is written straight into the input-grid label map (an exact
    copy, no interpolation). ``data`` is the preprocessed ``(1, C, I, J, K)`` input or a
    :class:`~medseg.inference.preprocess.PermutedInput` that preprocesses window by window.
    """
    cfg = model.config
    grid = GridPermutation(affine, volume)
    shape = tuple(int(s) for s in data.shape[2:])
    roi, counted = _counted_predictor(model, shape, progress, cancel)
    # tiles hold at most a slab of one window's depth: size the stitching device for that
    span = math.prod(shape) // max(shape) * max(min(r, s) for r, s in zip(roi, shape))
    device = _stitch_device(model, span * (cfg.out_channels + 1) * 4)
    tdtype = torch.uint8 if dtype == np.uint8 else torch.int32
    out = np.zeros(volume.shape, dtype=dtype)
    model.network.eval()
    with torch.inference_mode(), _amp(model.device):
        tiles = sliding_window_tiles(data, roi, counted, overlap=cfg.inference.overlap, mode=cfg.inference.blending,
                                     sw_batch_size=cfg.inference.sw_batch_size, padding_mode="replicate",
                                     sw_device=model.device, device=device, accumulate_dtype=accumulate)
        del data
        for box, logits in tiles:
            labels = argmax_channels(logits, tdtype).cpu().numpy()
            del logits
            out[grid.input_box(box)] = grid.to_input(labels)
        del tiles
    release_free_memory()  # network activations and tiles, before the clean-up's arrays
    return out


def softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 in place: no second C x grid buffer on large volumes."""
    x -= x.max(dim=0, keepdim=True).values
    x.exp_()
    x /= x.sum(dim=0, keepdim=True)
    return x


def predict_probabilities(
    volume: Volume,
    model: "LoadedModel | str | None" = None,
    *,
    device: str = "auto",
    mc_dropout: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Volume:
    """Per-class probabilities on the input grid (preprocessing → network → inverse).

    The building block for test-time augmentation and MC dropout: call it on a transformed
    volume (and map back), or with ``mc_dropout=True`` several times.

    Returns
    -------
    Volume
        ``(C, Z, Y, X)`` float32 on ``volume``'s grid; channel 0 background, channel c label c.
    """
    loaded = load_model(model, device=device)
    probs, affine = predict_model_grid(volume, loaded, progress=progress, cancel=cancel, mc_dropout=mc_dropout)
    out = np.empty((probs.shape[0],) + volume.shape, dtype=np.float32)
    for zs in input_slabs(volume.shape, probs.shape[0]):
        out[:, zs] = map_to_input_grid(probs, affine, volume, zs).cpu().numpy()
    return Volume(out, volume.affine, {"source": f"probabilities of {loaded.name}"})


def segment(
    volume: Volume,
    *,
    model: "LoadedModel | str | None" = None,
    device: str = "auto",
    probabilities: bool = False,
    postprocess: bool = True,
    accumulate: str = "float32",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Segmentation:
    """Segment a volume with a model; the result lies on the input grid.

    Parameters
    ----------
    volume : Volume
        ``(Z, Y, X)`` image (HU for CT models), any orientation, spacing or obliquity.
    model : LoadedModel, str, Path or None
        ``None`` = bundled default; a name, a path (see :func:`medseg.models.load_model`) or a
        model already loaded (reused without reloading).
    device : {"auto", "cpu", "cuda"}
        Used when ``model`` is not already loaded.
    probabilities : bool
        Also return per-class probabilities ``(C, Z, Y, X)`` float32 on the input grid
        (C = labels + 1): memory grows by ``C × 4`` bytes per voxel of the input and of the
        model grid. Without them the class map is the same (up to float rounding at ties).
    postprocess : bool
        Apply the config's per-label clean-up.
    accumulate : {"float32", "float16"}
        Precision of the stitching accumulators of the class-map path when the model grid is
        the input grid up to axis order and flips. ``"float16"`` halves them (the largest
        stitching buffer on large volumes); the class map then differs from float32
        stitching where two classes nearly tie (measured: under 0.1 % of voxels). Windows
        with logits large enough to overflow float16 switch it back to float32.
    progress, cancel : callables, optional
        See :mod:`medseg.progress`.

    Returns
    -------
    Segmentation
        uint8 (uint16 for > 255 labels) label map with the model's label table.
    """
    if accumulate not in _ACCUMULATE:
        raise InputError(f"accumulate must be one of {sorted(_ACCUMULATE)}, got {accumulate!r}")
    loaded = load_model(model, device=device)
    cfg = loaded.config
    dtype = smallest_label_dtype(cfg.out_channels - 1)
    tdtype = torch.uint8 if dtype == np.uint8 else torch.int32
    prob_out = None
    if not probabilities:
        label_map = _label_map_by_slabs(volume, loaded, dtype, progress=progress, cancel=cancel,
                                        accumulate=_ACCUMULATE[accumulate])
    else:
        probs, affine = predict_model_grid(volume, loaded, progress=progress, cancel=cancel)
        report(progress, 0, None, "mapping to the input grid")
        label_map = np.empty(volume.shape, dtype=dtype)
        prob_out = np.empty((probs.shape[0],) + volume.shape, dtype=np.float32)
        with torch.inference_mode():
            for zs in input_slabs(volume.shape, probs.shape[0]):
                check_cancel(cancel, "segmentation")
                p = map_to_input_grid(probs, affine, volume, zs)
                label_map[zs] = argmax_channels(p, tdtype).cpu().numpy().astype(dtype, copy=False)
                prob_out[:, zs] = p.cpu().numpy()
        del probs
    labels = cfg.label_table
    if postprocess and cfg.postprocessing:
        label_map = postprocess_label_map(label_map, cfg.postprocessing, labels,
                                          voxel_volume_ml=volume.voxel_volume_ml, in_place=True)
    meta = {"source": f"medseg segment ({cfg.name})", "model": cfg.name}
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID", "Modality"):
        if key in volume.meta:
            meta[f"source_{key}"] = volume.meta[key]
    prob_vol = Volume(prob_out, volume.affine, {"model": cfg.name}) if prob_out is not None else None
    return Segmentation(Volume(label_map, volume.affine, meta), labels, prob_vol)
