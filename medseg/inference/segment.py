"""Volume in → Segmentation out, read top to bottom: check, forward mapping, one sliding window, inverse.

1. :func:`_check_input`: channels and modality against the model.
2. Forward mapping (:mod:`medseg.inference.mapping`): the model input, read window by window
   when the model grid is the input grid up to axis order and flips
   (:class:`~medseg.inference.mapping.PermutedInput`, no float32 copy of the volume),
   otherwise resampled once (:func:`~medseg.inference.mapping.preprocess_volume`).
3. The one sliding-window path (:func:`medseg.inference.merger.sliding_window`): MONAI's
   ``PatchInferer`` with MONAI's windows and a merger that hands out each region as soon as
   its last window is in, reduced to labels or probabilities.
4. Inverse mapping, region by region, into a sink: labels straight into the input-grid map
   (:class:`~medseg.inference.mapping.InputGridLabels`) or, where the grids differ by
   resampling, probabilities gathered into slabs and sampled at the input voxels
   (:class:`~medseg.inference.mapping.SlabArgmax`). Only when probabilities are asked for are
   the model-grid probabilities of the whole volume held (then sampled onto the input grid
   slab by slab, :func:`~medseg.inference.mapping.map_to_input_grid`).
5. Per-label clean-up (:mod:`medseg.inference.postprocess`).

Memory for a class map: the input, the label map, one network window and the tiles that
wait for later windows (a band of the overlap's depth, see :mod:`medseg.inference.merger`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from medseg.core.errors import InputError
from medseg.inference.mapping import (
    GridPermutation,
    InputGridLabels,
    PermutedInput,
    SlabArgmax,
    input_slabs,
    is_permutation,
    map_to_input_grid,
    preprocess_volume,
)
from medseg.inference.merger import Output, RegionSink, WindowSplitter, argmax_channels, sliding_window
from medseg.inference.postprocess import postprocess_label_map
from medseg.core.memory import release_free_memory
from medseg.models.config import model_axes, slice_dim
from medseg.models.loader import LoadedModel, load_model
from medseg.core.progress import CancelCallback, ProgressCallback, check_cancel, report
from medseg.core.segmentation import Segmentation, smallest_label_dtype
from medseg.core.volume import Volume

__all__ = ["segment", "predict_probabilities", "predict_model_grid", "enable_dropout"]

log = logging.getLogger(__name__)

_ACCUMULATE = {"float32": torch.float32, "float16": torch.float16}



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
        See :mod:`medseg.core.progress`.

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
    prob_vol = None
    if probabilities:
        probs, affine = predict_model_grid(volume, loaded, progress=progress, cancel=cancel)  # checks the input
        label_map, prob_out = _to_input_grid(probs, affine, volume, dtype, cancel=cancel, progress=progress)
        prob_vol = Volume(prob_out, volume.affine, {"model": cfg.name})
    else:
        _check_input(volume, loaded)
        label_map = _label_map(volume, loaded, dtype, accumulate=_ACCUMULATE[accumulate], progress=progress,
                               cancel=cancel)
    if postprocess and cfg.postprocessing:
        label_map = postprocess_label_map(label_map, cfg.postprocessing, cfg.label_table,
                                          voxel_volume_ml=volume.voxel_volume_ml, in_place=True)
    meta = {"source": f"medseg segment ({cfg.name})", "model": cfg.name}
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID", "Modality"):
        if key in volume.meta:
            meta[f"source_{key}"] = volume.meta[key]
    return Segmentation(Volume(label_map, volume.affine, meta), cfg.label_table, prob_vol)


def _label_map(volume: Volume, model: LoadedModel, dtype, *, accumulate: torch.dtype = torch.float32,
               progress=None, cancel=None, _order: Optional[Sequence[int]] = None) -> np.ndarray:
    """Class map on the input grid, region by region: never the whole volume's probabilities.

    Where the model grid is the input grid up to axis order and flips, each finished region's
    argmax is copied into the input-grid map (:class:`InputGridLabels`); otherwise its
    probabilities are gathered into slabs along the outermost axis of the window order and
    sampled trilinearly at the input voxels they hold (:class:`SlabArgmax`). ``_order`` (for
    tests) forces the window order.
    """
    data, affine = _model_input(volume, model, progress, cancel)
    roi, _, _ = _roi_and_predictor(model)
    shape = tuple(int(s) for s in data.shape[2:])
    order = WindowSplitter(roi, overlap=model.config.inference.overlap, order=_order).visit_order(shape)
    sink: RegionSink
    if is_permutation(affine, volume):
        sink, output = InputGridLabels(GridPermutation(affine, volume), dtype), "labels"
    else:
        sink, output, accumulate = SlabArgmax(volume, affine, shape, order[0], dtype), "probabilities", torch.float32
    # the tiles held at once: at most a slab of one window's depth across the outermost axis
    span = math.prod(shape) // shape[order[0]] * min(roi[order[0]], shape[order[0]])
    label_map = _run_windows(data, model, output=output, sink=sink, order=order, accumulate=accumulate,
                             label_dtype=torch.uint8 if dtype == np.uint8 else torch.int32,
                             stitch_bytes=span * (model.config.out_channels + 1) * 4, progress=progress, cancel=cancel)
    release_free_memory()  # network activations and tiles, before the clean-up's arrays
    return label_map.astype(dtype, copy=False)


def predict_model_grid(
    volume: Volume,
    model: LoadedModel,
    *,
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
    _check_input(volume, model)
    data, affine = _model_input(volume, model, progress, cancel)
    nbytes = math.prod(int(s) for s in data.shape[2:]) * model.config.out_channels * 4
    out = _run_windows(data, model, output="probabilities" if softmax else "logits", stitch_bytes=nbytes,
                       progress=progress, cancel=cancel, mc_dropout=mc_dropout)
    return out[0], affine


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
    _, out = _to_input_grid(probs, affine, volume, None, cancel=cancel)
    return Volume(out, volume.affine, {"source": f"probabilities of {loaded.name}"})


def _check_input(volume: Volume, model: LoadedModel) -> None:
    """Refuse a volume with the wrong number of channels; warn on a modality the model was not trained on."""
    cfg = model.config
    if volume.channels != cfg.in_channels:
        raise InputError(f"model {cfg.name!r} needs {cfg.in_channels} input channel(s), the volume has "
                         f"{volume.channels}; pass a (C, Z, Y, X) volume with C = {cfg.in_channels}")
    modality = volume.meta.get("Modality")
    if cfg.modality != "any" and modality and modality != cfg.modality:
        log.warning("model %s was trained on %s, the volume is %s: results may be poor", cfg.name, cfg.modality, modality)


def _model_input(volume: Volume, model: LoadedModel, progress, cancel) -> tuple[Any, np.ndarray]:
    """Forward mapping: the ``(1, C, I, J, K)`` model input (read lazily where it can be) and its RAS affine."""
    report(progress, 0, None, "preprocessing")
    config = model.config.preprocessing
    lazy = PermutedInput.create(volume, config)
    if lazy is not None:
        check_cancel(cancel, "segmentation")
        return lazy, lazy.affine
    x = preprocess_volume(volume, config)
    release_free_memory()  # the intermediate copies of resampling
    check_cancel(cancel, "segmentation")
    return x.as_tensor()[None], np.asarray(x.affine, dtype=float)


def _run_windows(data: Any, model: LoadedModel, *, output: Output, stitch_bytes: int,
                 sink: Optional[RegionSink] = None, order: Optional[Sequence[int]] = None,
                 accumulate: torch.dtype = torch.float32, label_dtype: torch.dtype = torch.uint8,
                 progress=None, cancel=None, mc_dropout: bool = False) -> Any:
    """The network over every window (CUDA with mixed precision when there, else CPU): the sink's result.

    The network runs in eval mode; with ``mc_dropout`` its dropout layers stay active (MC dropout).
    """
    cfg = model.config
    roi, predictor, _ = _roi_and_predictor(model)
    shape = tuple(int(s) for s in data.shape[2:])
    # the order worked out once (tile_order weighs every window order), then given to the splitters
    splitter = WindowSplitter(roi, overlap=cfg.inference.overlap, order=order)
    order = splitter.order = splitter.visit_order(shape)
    windows = splitter.locations(shape)
    total = math.ceil(len(windows) / cfg.inference.sw_batch_size)
    done = [0]

    def counted(patch: torch.Tensor) -> torch.Tensor:
        check_cancel(cancel, "segmentation")
        out = predictor(patch)
        done[0] += 1
        report(progress, min(done[0], total), total, "segmenting")
        return out

    model.network.eval()
    enable_dropout(model.network, mc_dropout)
    try:
        with torch.inference_mode(), _amp(model.device):
            return sliding_window(data, roi, counted, overlap=cfg.inference.overlap, mode=cfg.inference.blending,
                                  sw_batch_size=cfg.inference.sw_batch_size, padding_mode="replicate",
                                  sw_device=model.device, device=_stitch_device(model, stitch_bytes), order=order,
                                  output=output, sink=sink, accumulate_dtype=accumulate, label_dtype=label_dtype)
    finally:
        enable_dropout(model.network, False)


def _to_input_grid(probs: torch.Tensor, affine: np.ndarray, volume: Volume, dtype, *,
                   cancel=None, progress=None) -> tuple[Optional[np.ndarray], np.ndarray]:
    """Inverse mapping of whole model-grid probabilities, slab by slab: ``(labels or None, (C, Z, Y, X) float32)``."""
    report(progress, 0, None, "mapping to the input grid")
    labels = None if dtype is None else np.empty(volume.shape, dtype=dtype)
    tdtype = torch.uint8 if dtype == np.uint8 else torch.int32
    out = np.empty((probs.shape[0],) + volume.shape, dtype=np.float32)
    with torch.inference_mode():
        for zs in input_slabs(volume.shape, probs.shape[0]):
            check_cancel(cancel, "segmentation")
            p = map_to_input_grid(probs, affine, volume, zs)
            if labels is not None:
                labels[zs] = argmax_channels(p, tdtype).cpu().numpy().astype(dtype, copy=False)
            out[:, zs] = p.cpu().numpy()
    return labels, out


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
    axis = slice_dim(cfg)
    if axis is None:
        return roi, net, None
    roi[axis] = 1
    dim = 2 + axis

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return net(x.squeeze(dim)).unsqueeze(dim)

    return roi, predictor, axis


def _stitch_device(model: LoadedModel, nbytes: int) -> str:
    """Accumulate on the GPU only when ``nbytes`` comfortably fits there."""
    dev = model.device
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return str(dev) if nbytes < 0.25 * free else "cpu"
    return "cpu"


def _amp(device: torch.device):
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()
