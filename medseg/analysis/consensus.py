"""Consensus of several label maps on one grid: STAPLE, majority vote, soft labels, agreement.

Inputs are N label maps of one grid — raters, models, or both — given as (Z, Y, X) integer
arrays, :class:`~medseg.core.volume.Volume` or :class:`~medseg.core.segmentation.Segmentation`
objects. STAPLE and voting run SimpleITK's filters (``STAPLEImageFilter``,
``MultiLabelSTAPLEImageFilter``, ``LabelVotingImageFilter``); agreement uses
:mod:`medseg.analysis.metrics`. No torch.

One call for applications (CLI, napari): :func:`consensus`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

import numpy as np

from medseg.analysis import metrics
from medseg.core.errors import CancelledError, InputError
from medseg.core.labels import LabelTable
from medseg.core.progress import CancelCallback, ProgressCallback, StepProgress, check_cancel, report
from medseg.core.segmentation import Segmentation, smallest_label_dtype
from medseg.core.volume import Volume

__all__ = [
    "StapleResult",
    "MultiLabelStapleResult",
    "Agreement",
    "ConsensusResult",
    "staple",
    "multi_label_staple",
    "majority_vote",
    "soft_consensus",
    "disagreement_map",
    "agreement_matrices",
    "consensus",
]

log = logging.getLogger(__name__)

Rater = Any  # ndarray | Volume | Segmentation


# -- inputs -----------------------------------------------------------------------------------
def _arrays(label_maps: Sequence[Rater], *, minimum: int = 2) -> list[np.ndarray]:
    """(Z, Y, X) integer arrays of the inputs, checking count, shape and grid."""
    if len(label_maps) < minimum:
        raise InputError(f"consensus needs at least {minimum} label maps, got {len(label_maps)}")
    arrays, grids = [], []
    for n, item in enumerate(label_maps):
        if isinstance(item, Segmentation):
            grids.append((n, item.label_map))
            arr = item.array
        elif isinstance(item, Volume):
            grids.append((n, item))
            arr = item.array
        else:
            arr = np.asarray(item)
        if arr.ndim != 3:
            raise InputError(f"label map {n} must be (Z, Y, X), got shape {arr.shape}")
        if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"label map {n} must hold integers, got dtype {arr.dtype}")
        if arr.shape != np.shape(arrays[0] if arrays else arr):
            raise InputError(
                f"label map {n} has shape {arr.shape}, label map 0 has {arrays[0].shape}; "
                "all raters must be on one grid (resample with nearest neighbour first)"
            )
        arrays.append(arr)
    for n, vol in grids[1:]:
        grids[0][1].require_same_grid(vol, what=f"label map {n}")
    return arrays


def _sitk_run(filt: Any, images: list, *, progress: Optional[ProgressCallback],
              cancel: Optional[CancelCallback], message: str) -> Any:
    """Execute a SimpleITK filter, forwarding its progress and honouring ``cancel``."""
    import SimpleITK as sitk

    if progress is not None or cancel is not None:
        def on_progress() -> None:
            report(progress, int(round(filt.GetProgress() * 100)), 100, message)
            if cancel is not None and cancel():
                filt.Abort()

        filt.AddCommand(sitk.sitkProgressEvent, on_progress)
    report(progress, 0, 100, message)  # ITK's STAPLE filters send no progress events of their own
    try:
        out = filt.Execute(images)
    except RuntimeError as exc:
        if cancel is not None and cancel():
            raise CancelledError(f"{message} cancelled by the user") from exc
        raise
    check_cancel(cancel, message)
    report(progress, 100, 100, message)
    return out


def _to_sitk(arr: np.ndarray, dtype: type = np.uint8) -> Any:
    import SimpleITK as sitk

    return sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=dtype))


# -- STAPLE -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StapleResult:
    """Binary STAPLE.

    Attributes
    ----------
    probability : (Z, Y, X) float32 ndarray
        Posterior probability that each voxel is foreground.
    mask : (Z, Y, X) bool ndarray
        ``probability >= threshold``.
    sensitivity, specificity : (R,) float64 ndarrays
        Estimated performance of each rater, in input order.
    iterations : int
        EM iterations run.
    """

    probability: np.ndarray
    mask: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    iterations: int


def staple(
    masks: Sequence[Rater],
    *,
    label: Optional[int] = None,
    threshold: float = 0.5,
    max_iterations: int = 100,
    confidence_weight: float = 1.0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> StapleResult:
    """Binary STAPLE (Warfield 2004) with SimpleITK's ``STAPLEImageFilter``.

    Parameters
    ----------
    masks : sequence of (Z, Y, X) arrays, Volumes or Segmentations
        One per rater, on one grid. Foreground is ``!= 0``, or ``== label`` when given.
    label : int, optional
        Label index to take as foreground in label maps.
    threshold : float
        Posterior probability above which a voxel is in the consensus mask.
    max_iterations : int
        EM iteration limit.
    confidence_weight : float
        ITK's weight of the prior (1 = standard STAPLE).

    Returns
    -------
    StapleResult
    """
    import SimpleITK as sitk

    arrays = _arrays(masks)
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must be a probability in (0, 1), got {threshold}")
    fg = [(a == label) if label is not None else (a != 0) for a in arrays]
    if not any(m.any() for m in fg):
        shape = fg[0].shape
        r = len(fg)
        return StapleResult(np.zeros(shape, np.float32), np.zeros(shape, bool), np.full(r, math.nan),
                            np.ones(r), 0)
    filt = sitk.STAPLEImageFilter()
    filt.SetForegroundValue(1.0)
    filt.SetMaximumIterations(int(max_iterations))
    filt.SetConfidenceWeight(float(confidence_weight))
    images = [_to_sitk(m) for m in fg]
    del fg
    out = _sitk_run(filt, images, progress=progress, cancel=cancel, message="STAPLE")
    del images
    prob = sitk.GetArrayViewFromImage(out).astype(np.float32)
    return StapleResult(prob, prob >= threshold, np.asarray(filt.GetSensitivity(), float),
                        np.asarray(filt.GetSpecificity(), float), int(filt.GetElapsedIterations()))


@dataclass(frozen=True)
class MultiLabelStapleResult:
    """Multi-label STAPLE.

    Attributes
    ----------
    label_map : (Z, Y, X) ndarray
        Consensus labels (original indices; ``undecided`` where STAPLE cannot decide).
    labels : list of int
        Label indices in the order of the matrices' class axes (0 = background first).
    confusion : (R, L + 1, L) float64 ndarray
        ``confusion[r, s, t]`` = P(rater r says ``labels[s]`` | truth is ``labels[t]``);
        the last row is ITK's "undecided" row.
    priors : (L,) float64 ndarray
        Prior probability of each label.
    sensitivity, specificity : (R, L) float64 ndarrays
        Per rater and label: P(says l | l) and P(says not l | not l) (prior-weighted).
    """

    label_map: np.ndarray
    labels: list[int]
    confusion: np.ndarray
    priors: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray


def multi_label_staple(
    label_maps: Sequence[Rater],
    *,
    undecided: int = 0,
    max_iterations: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> MultiLabelStapleResult:
    """Multi-label STAPLE (Rohlfing 2004) with SimpleITK's ``MultiLabelSTAPLEImageFilter``.

    Parameters
    ----------
    label_maps : sequence of (Z, Y, X) integer arrays, Volumes or Segmentations
        One per rater, on one grid.
    undecided : int
        Label written where the posterior has a tie (default 0, background).
    max_iterations : int, optional
        EM iteration limit (ITK's default: until converged).

    Returns
    -------
    MultiLabelStapleResult
    """
    import SimpleITK as sitk

    arrays = _arrays(label_maps)
    labels = sorted({0} | set(int(v) for a in arrays for v in np.unique(a)))
    lut = np.zeros(labels[-1] + 1, dtype=np.uint16)
    lut[labels] = np.arange(len(labels))
    images = [_to_sitk(lut[a], np.uint16) for a in arrays]
    n_lab = len(labels)
    filt = sitk.MultiLabelSTAPLEImageFilter()
    filt.SetLabelForUndecidedPixels(n_lab)
    if max_iterations is not None:
        filt.SetMaximumNumberOfIterations(int(max_iterations))
    out = _sitk_run(filt, images, progress=progress, cancel=cancel, message="multi-label STAPLE")
    del images
    idx = sitk.GetArrayFromImage(out)
    back = np.asarray(labels + [undecided])
    label_map = back[idx].astype(smallest_label_dtype(max(max(labels), undecided)))
    conf = np.stack([np.asarray(filt.GetConfusionMatrix(r), float).reshape(n_lab + 1, n_lab)
                     for r in range(len(arrays))])
    priors = np.asarray(filt.GetPriorProbabilities(), float)
    if priors.size != n_lab:  # ITK estimates the priors when none were set
        counts = np.bincount(np.concatenate([lut[a].ravel() for a in arrays]), minlength=n_lab)
        priors = counts / counts.sum()
    sens = np.stack([np.diag(conf[r, :n_lab]) for r in range(len(arrays))])
    spec = np.zeros_like(sens)
    for l in range(n_lab):
        others = [t for t in range(n_lab) if t != l]
        w = priors[others]
        w = w / w.sum() if w.sum() > 0 else np.full(len(others), 1.0 / max(len(others), 1))
        spec[:, l] = 1.0 - (conf[:, l, others] * w).sum(axis=1)
    return MultiLabelStapleResult(label_map, labels, conf, priors, sens, spec)


# -- voting and soft consensus ----------------------------------------------------------------
def majority_vote(
    label_maps: Sequence[Rater],
    *,
    undecided: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> np.ndarray:
    """Per-voxel majority (plurality) vote with SimpleITK's ``LabelVotingImageFilter``.

    Ties get ``undecided`` (default 0, background). Returns a (Z, Y, X) label map.
    """
    import SimpleITK as sitk

    arrays = _arrays(label_maps)
    top = max(int(a.max(initial=0)) for a in arrays)
    dtype = np.uint16 if max(top, undecided) < 65535 else np.uint32
    filt = sitk.LabelVotingImageFilter()
    filt.SetLabelForUndecidedPixels(int(undecided))
    out = _sitk_run(filt, [_to_sitk(a, dtype) for a in arrays], progress=progress, cancel=cancel,
                    message="majority vote")
    return sitk.GetArrayFromImage(out).astype(smallest_label_dtype(max(top, undecided)))


def soft_consensus(
    label_maps: Sequence[Rater], *, labels: Optional[Sequence[int]] = None
) -> tuple[np.ndarray, list[int]]:
    """Probabilistic consensus: the fraction of raters voting for each label at each voxel.

    Returns
    -------
    probabilities : (C, Z, Y, X) float32 ndarray
        Channel c holds the vote fraction of ``labels[c]``; channels sum to 1 where every
        rater's label is listed.
    labels : list of int
        0 first, then the non-zero indices (default: all present in any map).
    """
    arrays = _arrays(label_maps)
    if labels is None:
        labels = sorted({0} | set(int(v) for a in arrays for v in np.unique(a)))
    labels = [int(l) for l in labels]
    out = np.zeros((len(labels),) + arrays[0].shape, np.float32)
    for c, l in enumerate(labels):
        for a in arrays:
            out[c] += a == l
    out /= len(arrays)
    return out, labels


def disagreement_map(label_maps: Sequence[Rater]) -> np.ndarray:
    """Fraction of raters that disagree with the voxel's most voted label.

    Returns a (Z, Y, X) float32 array in ``[0, 1 - 1/R]``: 0 where all R raters agree.
    """
    arrays = _arrays(label_maps)
    best = np.zeros(arrays[0].shape, np.int16)
    for a in arrays:  # votes for each rater's own label; the maximum is the modal label's count
        agree = np.zeros(arrays[0].shape, np.int16)
        for b in arrays:
            agree += a == b
        np.maximum(best, agree, out=best)
    return (1.0 - best / len(arrays)).astype(np.float32)


# -- agreement --------------------------------------------------------------------------------
AGREEMENT_METRICS = ("dice", "iou", "hd95_mm", "surface_dice")


@dataclass(frozen=True)
class Agreement:
    """Pairwise agreement between raters, per label.

    Attributes
    ----------
    names : list of str
        Rater names, in matrix order.
    labels : list of int
        Scored label indices.
    matrices : dict
        ``matrices[metric][label]`` is an (R, R) float64 matrix, metric one of
        ``"dice", "iou", "hd95_mm", "surface_dice"`` (diagonal: self-agreement).
    volumes_ml : dict
        ``volumes_ml[label]`` is an (R,) array of each rater's volume in mL.
    """

    names: list[str]
    labels: list[int]
    matrices: dict[str, dict[int, np.ndarray]]
    volumes_ml: dict[int, np.ndarray]
    tolerance_mm: float = 2.0
    label_names: dict[int, str] = field(default_factory=dict)

    def summary(self) -> dict[int, dict[str, float]]:
        """Inter-rater variability per label.

        Mean, standard deviation and minimum of each pairwise metric over the R(R-1)/2 pairs
        (nan/inf pairs excluded from mean/std, counted in ``*_undefined_pairs``), plus the
        volume mean, standard deviation and coefficient of variation across raters.
        """
        r = len(self.names)
        iu = np.triu_indices(r, 1)
        out: dict[int, dict[str, float]] = {}
        for l in self.labels:
            row: dict[str, float] = {}
            for m in AGREEMENT_METRICS:
                vals = self.matrices[m][l][iu]
                ok = vals[np.isfinite(vals)]
                row[f"{m}_mean"] = float(ok.mean()) if ok.size else math.nan
                row[f"{m}_std"] = float(ok.std()) if ok.size else math.nan
                row[f"{m}_worst"] = (float(ok.max()) if m == "hd95_mm" else float(ok.min())) if ok.size else math.nan
                row[f"{m}_undefined_pairs"] = int(vals.size - ok.size)
            v = self.volumes_ml[l]
            row["volume_mean_ml"] = float(v.mean())
            row["volume_std_ml"] = float(v.std())
            row["volume_cv"] = float(v.std() / v.mean()) if v.mean() > 0 else math.nan
            out[l] = row
        return out

    def to_dict(self) -> dict:
        """JSON-ready form (nan/inf as ``None``)."""
        def clean(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return None
            return x

        return {
            "raters": self.names,
            "tolerance_mm": self.tolerance_mm,
            "labels": {
                str(l): {
                    "name": self.label_names.get(l, str(l)),
                    "volumes_ml": [clean(float(v)) for v in self.volumes_ml[l]],
                    "matrices": {m: [[clean(float(v)) for v in row] for row in self.matrices[m][l]]
                                 for m in AGREEMENT_METRICS},
                    "summary": {k: clean(v) for k, v in self.summary()[l].items()},
                }
                for l in self.labels
            },
        }


def agreement_matrices(
    label_maps: Sequence[Rater],
    *,
    spacing: Sequence[float],
    labels: Optional[Sequence[int]] = None,
    names: Optional[Sequence[str]] = None,
    tolerance_mm: float = 2.0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Agreement:
    """Pairwise Dice, IoU, HD95 (mm) and surface Dice between raters, per label.

    Parameters
    ----------
    label_maps : sequence of (Z, Y, X) integer arrays, Volumes or Segmentations
        Raters or models on one grid.
    spacing : (3,) floats
        mm, ``(z, y, x)``.
    labels : sequence of int, optional
        Non-zero indices to score; default every index present in any map.
    names : sequence of str, optional
        Rater names (default ``rater1``, ``rater2``, ...).
    tolerance_mm : float
        Surface Dice tolerance.
    """
    arrays = _arrays(label_maps)
    r = len(arrays)
    names = list(names) if names is not None else [f"rater{i + 1}" for i in range(r)]
    if len(names) != r:
        raise InputError(f"names has {len(names)} entries for {r} label maps")
    if labels is None:
        labels = sorted(set(int(v) for a in arrays for v in np.unique(a)) - {0})
    labels = [int(l) for l in labels]
    mats = {m: {l: np.zeros((r, r)) for l in labels} for m in AGREEMENT_METRICS}
    vols: dict[int, np.ndarray] = {}
    pairs = [(i, j) for i in range(r) for j in range(i + 1, r)]
    steps = StepProgress(len(labels) * len(pairs), "rater agreement", progress=progress, cancel=cancel)
    for l in labels:
        masks = [a == l for a in arrays]
        vols[l] = np.array([metrics.volume_ml(m, spacing=spacing) for m in masks])
        for i in range(r):
            empty = not masks[i].any()
            mats["dice"][l][i, i] = mats["iou"][l][i, i] = 1.0
            mats["hd95_mm"][l][i, i] = math.nan if empty else 0.0
            mats["surface_dice"][l][i, i] = math.nan if empty else 1.0
        for i, j in pairs:
            row = metrics.label_metrics(masks[i].view(np.uint8), masks[j].view(np.uint8), spacing=spacing,
                                        labels=[1], tolerance_mm=tolerance_mm)[1]
            for m in AGREEMENT_METRICS:
                mats[m][l][i, j] = mats[m][l][j, i] = row[m]
            steps.step()
    label_names = {}
    for item in label_maps:
        if isinstance(item, Segmentation):
            label_names.update({lab.index: lab.name for lab in item.labels if lab.index in labels})
    return Agreement(names, labels, mats, vols, float(tolerance_mm), label_names)


# -- one call ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConsensusResult:
    """What :func:`consensus` returns.

    Attributes
    ----------
    segmentation : Segmentation
        Consensus label map with ``probabilities`` (C, Z, Y, X), None when not asked: the
        STAPLE posterior for a binary STAPLE, the raters' vote fractions otherwise
        (channel 0 = background).
    disagreement : Volume
        (Z, Y, X) float32, fraction of raters disagreeing with the majority label.
    raters : list of dict
        Per rater: ``name``, and per label ``sensitivity`` / ``specificity`` (STAPLE only).
    method : str
    """

    segmentation: Segmentation
    disagreement: Volume
    raters: list[dict]
    method: str


def consensus(
    segmentations: Sequence[Segmentation],
    *,
    method: Literal["staple", "majority"] = "staple",
    names: Optional[Sequence[str]] = None,
    probabilities: bool = True,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> ConsensusResult:
    """Fuse N segmentations of one image into one, with probabilities and a disagreement map.

    Parameters
    ----------
    segmentations : sequence of Segmentation
        Raters or models, on one grid. Label tables are merged (the first name of an index wins).
    method : {"staple", "majority"}
        ``"staple"``: binary STAPLE when only one label occurs, multi-label STAPLE otherwise.
        ``"majority"``: plurality vote (ties → background).
    names : sequence of str, optional
        Rater names for the per-rater table.
    probabilities : bool
        Attach (C, Z, Y, X) float32 probabilities: 4 × C bytes per voxel, C = labels + 1.

    Notes
    -----
    Memory: multi-label STAPLE (ITK) holds about 8 × C bytes per voxel; binary STAPLE about
    20 bytes per voxel for 5 raters (see ``benchmarks/consensus.py``).
    """
    if method not in ("staple", "majority"):
        raise InputError(f"method must be 'staple' or 'majority', got {method!r}")
    segs = list(segmentations)
    for n, s in enumerate(segs):
        if not isinstance(s, Segmentation):
            raise InputError(f"segmentations[{n}] must be a Segmentation, got {type(s).__name__}")
    arrays = _arrays(segs)
    names = list(names) if names is not None else [f"rater{i + 1}" for i in range(len(segs))]
    present = sorted(set(int(v) for a in arrays for v in np.unique(a)) - {0})
    table = _merged_table(segs, present)
    raters: list[dict] = [{"name": n} for n in names]
    ref = segs[0].label_map
    if method == "staple" and len(present) <= 1:
        label_map, probs, prob_labels = _binary_staple(arrays, present, raters, progress, cancel)
    else:
        if method == "staple":
            ml = multi_label_staple(arrays, progress=progress, cancel=cancel)
            label_map = ml.label_map
            for r, row in enumerate(raters):
                for c, l in enumerate(ml.labels):
                    if l:
                        row[str(l)] = {"sensitivity": float(ml.sensitivity[r, c]),
                                       "specificity": float(ml.specificity[r, c])}
        else:
            label_map = majority_vote(arrays, progress=progress, cancel=cancel)
        probs, prob_labels = soft_consensus(arrays, labels=[0] + present) if probabilities else (None, [0] + present)
    check_cancel(cancel, "consensus")
    used = [l for l in prob_labels if l]
    table = table.subset(set(used) | set(int(v) for v in np.unique(label_map) if v))
    prob_vol = None
    if probabilities and probs is not None:
        prob_vol = Volume(_table_channels(probs, prob_labels, table), ref.affine, {"source": f"consensus({method})"})
    seg = Segmentation(ref.with_array(label_map, source=f"consensus({method})"), table, prob_vol)
    dis = Volume(disagreement_map(arrays), ref.affine, {"source": "disagreement"})
    return ConsensusResult(seg, dis, raters, method)


def _merged_table(segs: Sequence[Segmentation], present: Sequence[int]) -> LabelTable:
    """The inputs' label tables merged (the first name of an index wins); ``label_N`` for unnamed indices."""
    table = LabelTable()
    for s in reversed(segs):
        for lab in s.labels:
            table = table.with_label(lab)
    for l in present:
        if l not in table:
            table = table.with_label(LabelTable.from_names({l: f"label_{l}"})[l])
    return table


def _binary_staple(arrays: list, present: Sequence[int], raters: list[dict], progress, cancel):
    """Binary STAPLE of the one label present: label map, (2, Z, Y, X) probabilities, their labels.

    Each rater's sensitivity and specificity go into ``raters``.
    """
    l = present[0] if present else 1
    res = staple(arrays, label=l, progress=progress, cancel=cancel)
    label_map = np.where(res.mask, l, 0).astype(np.uint8 if l < 256 else np.uint16)
    probs = np.stack([1.0 - res.probability, res.probability]).astype(np.float32)
    for r, row in enumerate(raters):
        row[str(l)] = {"sensitivity": float(res.sensitivity[r]), "specificity": float(res.specificity[r])}
    return label_map, probs, [0, l]


def _table_channels(probs: np.ndarray, prob_labels: Sequence[int], table: LabelTable) -> np.ndarray:
    """(1 + len(table), Z, Y, X) float32: channel c is the c-th label of the table (0 = background)."""
    chan = [0] + table.indices
    full = np.zeros((len(chan),) + probs.shape[1:], np.float32)
    for c, l in enumerate(chan):
        if l in prob_labels:
            full[c] = probs[prob_labels.index(l)]
    return full
