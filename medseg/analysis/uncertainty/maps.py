"""Uncertainty maps from stochastic predictions: entropy, variance, mutual information.

Samples (one ``(C, Z, Y, X)`` probability array per TTA view, dropout pass or ensemble
member, all on the input grid) are accumulated one at a time in float32, so memory is
``(C + 4) × 4`` bytes per voxel however many samples are drawn (plus the (C, Z, Y, X)
mean in the result). No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from medseg.core.errors import InputError
from medseg.core.labels import LabelTable
from medseg.core.progress import CancelCallback, ProgressCallback, check_cancel, report
from medseg.core.segmentation import Segmentation, smallest_label_dtype
from medseg.core.volume import Volume

__all__ = ["UncertaintyResult", "SampleAccumulator", "uncertainty_from_samples"]

_EPS = 1e-7


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over axis 0 of a (C, ...) probability array."""
    return -(p * np.log(np.clip(p, _EPS, 1.0))).sum(axis=0)


@dataclass(frozen=True)
class UncertaintyResult:
    """Mean prediction and voxel-wise uncertainty of a set of stochastic predictions.

    Attributes
    ----------
    segmentation : Segmentation
        Argmax of the mean probabilities, with ``probabilities`` = the mean (C, Z, Y, X).
    entropy : Volume
        (Z, Y, X) float32 predictive entropy H[E p] divided by ln C, in [0, 1].
    mutual_information : Volume
        (Z, Y, X) float32 H[E p] − E H[p] divided by ln C, in [0, 1]: the share of the
        entropy due to disagreement between samples (epistemic; BALD).
    variance : Volume
        (Z, Y, X) float32 half the summed per-class variance across samples,
        ``½ Σ_c Var_s[p_c]``, in [0, 0.5]; for two classes it is the variance of the
        foreground probability.
    method : str
        ``"tta"``, ``"mc_dropout"``, ``"ensemble"`` or ``"samples"``.
    n_samples : int
    sample_volumes_ml : dict
        ``{label index: [volume of the sample's argmax in mL, ...]}``.
    """

    segmentation: Segmentation
    entropy: Volume
    mutual_information: Volume
    variance: Volume
    method: str
    n_samples: int
    sample_volumes_ml: dict[int, list[float]] = field(default_factory=dict)

    @property
    def labels(self) -> LabelTable:
        return self.segmentation.labels

    def map(self, kind: str) -> Volume:
        """One map by name: ``"entropy"``, ``"mutual_information"`` or ``"variance"``."""
        if kind not in ("entropy", "mutual_information", "variance"):
            raise InputError(f"kind must be 'entropy', 'mutual_information' or 'variance', got {kind!r}")
        return getattr(self, kind)


class SampleAccumulator:
    """Streams probability samples into running sums.

    Parameters
    ----------
    reference : Volume
        The input grid; samples must have its spatial shape.
    channels : int
        C, the number of probability channels (background first).
    """

    def __init__(self, reference: Volume, channels: int) -> None:
        if channels < 2:
            raise InputError(f"probabilities need at least 2 channels (background + 1 label), got {channels}")
        n = reference.shape
        self.reference = reference
        self.channels = channels
        self.sum_p = np.zeros((channels,) + n, np.float32)
        self.sum_p2 = np.zeros(n, np.float32)  # Σ_s Σ_c p²
        self.sum_h = np.zeros(n, np.float32)
        self.weight = np.zeros(n, np.float32)
        self.n = 0
        self.volumes: list[np.ndarray] = []

    def _slabs(self, max_elements: int = 2 ** 24) -> list[slice]:
        z, y, x = self.reference.shape
        step = max(1, max_elements // max(1, self.channels * y * x))
        return [slice(k, min(k + step, z)) for k in range(0, z, step)]

    def add(self, probabilities: np.ndarray, valid: Optional[np.ndarray] = None) -> None:
        """Add one sample: (C, Z, Y, X) probabilities; ``valid`` (Z, Y, X) bool marks voxels it covers."""
        p = np.asarray(probabilities.array if isinstance(probabilities, Volume) else probabilities, np.float32)
        if p.shape != self.sum_p.shape:
            raise InputError(f"sample {self.n} has shape {p.shape}, expected {self.sum_p.shape} "
                             "(C, Z, Y, X) on the input grid")
        w = np.ones(p.shape[1:], np.float32) if valid is None else np.asarray(valid, bool).astype(np.float32)
        counts = np.zeros(self.channels, np.int64)
        for zs in self._slabs():  # bounded temporaries on large volumes
            ps, ws = p[:, zs], w[zs]
            self.sum_p[:, zs] += ps * ws
            self.sum_p2[zs] += (ps * ps).sum(axis=0) * ws
            self.sum_h[zs] += _entropy(ps) * ws
            self.weight[zs] += ws
            counts += np.bincount(np.argmax(ps, axis=0)[ws > 0].ravel(), minlength=self.channels)
        self.volumes.append(counts * self.reference.voxel_volume_ml)
        self.n += 1

    def result(self, labels: LabelTable, *, method: str = "samples") -> UncertaintyResult:
        """Mean, entropy, mutual information and variance of the samples so far."""
        if self.n == 0:
            raise InputError("no samples were added; uncertainty needs at least one prediction")
        if len(labels) != self.channels - 1:
            raise InputError(f"label table has {len(labels)} labels for {self.channels} probability channels; "
                             "it needs C - 1 (channel 0 is background)")
        shape = self.reference.shape
        mean = np.empty_like(self.sum_p)
        entropy = np.empty(shape, np.float32)
        mi = np.empty(shape, np.float32)
        var = np.empty(shape, np.float32)
        winner = np.empty(shape, np.int64)
        norm = math.log(self.channels)
        for zs in self._slabs():
            w = np.maximum(self.weight[zs], 1.0)
            m = self.sum_p[:, zs] / w
            h_mean = _entropy(m)
            win = np.argmax(m, axis=0)
            mean[:, zs] = m
            entropy[zs] = h_mean / norm
            mi[zs] = np.clip((h_mean - self.sum_h[zs] / w) / norm, 0.0, 1.0)
            var[zs] = np.clip(0.5 * (self.sum_p2[zs] / w - (m * m).sum(axis=0)), 0.0, 0.5)
            winner[zs] = win
        idx = [0] + labels.indices
        lut = np.asarray(idx)
        label_map = lut[winner].astype(smallest_label_dtype(max(idx)))
        ref = self.reference
        meta = {"source": f"uncertainty({method}, {self.n} samples)"}
        seg = Segmentation(Volume(label_map, ref.affine, meta), labels, Volume(mean, ref.affine, meta))
        vols = np.stack(self.volumes)
        return UncertaintyResult(
            seg,
            Volume(entropy, ref.affine, {**meta, "map": "entropy"}),
            Volume(mi, ref.affine, {**meta, "map": "mutual_information"}),
            Volume(var, ref.affine, {**meta, "map": "variance"}),
            method,
            self.n,
            {l: vols[:, c + 1].tolist() for c, l in enumerate(labels.indices)},
        )


def uncertainty_from_samples(
    samples: Iterable[np.ndarray],
    *,
    reference: Volume,
    labels: LabelTable,
    method: str = "samples",
    total: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> UncertaintyResult:
    """Uncertainty of any set of probability samples on ``reference``'s grid.

    Parameters
    ----------
    samples : iterable of (C, Z, Y, X) arrays or Volumes
        Consumed one at a time (a generator keeps memory flat).
    reference : Volume
        The grid of the samples.
    labels : LabelTable
        C − 1 labels, channel c ↔ the c-th label in index order.
    """
    acc: Optional[SampleAccumulator] = None
    for n, p in enumerate(samples):
        check_cancel(cancel, "uncertainty")
        arr = p.array if isinstance(p, Volume) else np.asarray(p)
        if acc is None:
            if arr.ndim != 4:
                raise InputError(f"samples must be (C, Z, Y, X) probabilities, got shape {arr.shape}")
            acc = SampleAccumulator(reference, arr.shape[0])
        acc.add(arr)
        report(progress, n + 1, total, f"{method} samples")
    if acc is None:
        raise InputError("no samples were given; uncertainty needs at least one prediction")
    return acc.result(labels, method=method)
