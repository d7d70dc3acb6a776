"""Per-structure uncertainty scores and a ranked list of what a human should look at.

No torch here: everything works on an :class:`~medseg.analysis.uncertainty.maps.UncertaintyResult`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from medseg.core.errors import InputError
from medseg.analysis.uncertainty.maps import UncertaintyResult

__all__ = ["StructureScore", "ReviewItem", "structure_scores", "review_list"]


@dataclass(frozen=True)
class StructureScore:
    """Uncertainty of one predicted structure.

    Attributes
    ----------
    index, name : int, str
    volume_ml : float
        Volume of the structure in the mean prediction (argmax).
    confident_ml, possible_ml : float
        Volume where the mean probability of the label is ≥ ``high`` / ≥ ``low``: a lower and
        upper bound of the structure.
    score : float
        ``1 − confident_ml / possible_ml`` in [0, 1]: the share of the structure's possible
        extent that is uncertain (0 = every voxel confidently in or out; nan if absent).
    mean_entropy : float
        Mean normalised entropy over the possible extent.
    volume_cv : float
        Coefficient of variation of the structure's volume across samples.
    """

    index: int
    name: str
    volume_ml: float
    confident_ml: float
    possible_ml: float
    score: float
    mean_entropy: float
    volume_cv: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ReviewItem:
    """One place worth a look: a structure on one axial slice.

    ``slice_index`` is k (array axis 0); ``centre_kji`` the voxel index ``(k, j, i)`` of the
    entropy-weighted centre of the uncertain region on that slice (where a viewer should
    jump); ``uncertain_ml`` its volume; ``priority`` the entropy mass (mL) used for ranking.
    """

    rank: int
    index: int
    name: str
    slice_index: int
    centre_kji: tuple[int, int, int]
    uncertain_ml: float
    priority: float
    structure_score: float

    def to_dict(self) -> dict:
        return asdict(self)


def _bands(result: UncertaintyResult, index: int, low: float, high: float):
    probs = result.segmentation.probabilities.array
    c = result.labels.indices.index(index) + 1
    p = probs[c]
    return p >= low, p >= high


def structure_scores(
    result: UncertaintyResult, *, low: float = 0.1, high: float = 0.9
) -> list[StructureScore]:
    """Score every label of the result, most uncertain first (absent labels last).

    Parameters
    ----------
    low, high : float
        Probability thresholds of the possible and the confident extent.
    """
    if not 0.0 < low < high < 1.0:
        raise InputError(f"need 0 < low < high < 1, got low={low}, high={high}")
    vox = result.segmentation.label_map.voxel_volume_ml
    ent = result.entropy.array
    out = []
    for lab in result.labels:
        possible, confident = _bands(result, lab.index, low, high)
        n_pos, n_conf = int(possible.sum()), int(confident.sum())
        vols = np.asarray(result.sample_volumes_ml.get(lab.index, [0.0]))
        out.append(StructureScore(
            lab.index, lab.name,
            float((result.segmentation.array == lab.index).sum()) * vox,
            n_conf * vox, n_pos * vox,
            1.0 - n_conf / n_pos if n_pos else math.nan,
            float(ent[possible].mean()) if n_pos else math.nan,
            float(vols.std() / vols.mean()) if vols.mean() > 0 else math.nan,
        ))
    return sorted(out, key=lambda s: (math.isnan(s.score), -(s.score if not math.isnan(s.score) else 0)))


def review_list(
    result: UncertaintyResult,
    *,
    top: int = 20,
    per_structure: int = 3,
    low: float = 0.1,
    high: float = 0.9,
    min_ml: float = 0.0,
) -> list[ReviewItem]:
    """Rank (structure, axial slice) pairs by the entropy mass of their uncertain band.

    The uncertain band of a structure is where its mean probability lies in ``[low, high)``.
    Each slice's priority is the sum of normalised entropy over the band on that slice times
    the voxel volume (mL). At most ``per_structure`` slices per structure, ``top`` in all.
    """
    if top < 1 or per_structure < 1:
        raise InputError(f"top and per_structure must be >= 1, got {top} and {per_structure}")
    scores = {s.index: s for s in structure_scores(result, low=low, high=high)}
    vox = result.segmentation.label_map.voxel_volume_ml
    ent = result.entropy.array
    cand: list[tuple[float, int, int, tuple[int, int, int], float]] = []
    for lab in result.labels:
        possible, confident = _bands(result, lab.index, low, high)
        band = possible & ~confident
        if not band.any():
            continue
        mass = np.where(band, ent, 0.0)
        per_slice = mass.sum(axis=(1, 2)) * vox
        counts = band.sum(axis=(1, 2))
        ks = [int(k) for k in np.argsort(-per_slice, kind="stable")[:per_structure] if counts[k] > 0]
        for k in ks:
            if counts[k] * vox < min_ml:
                continue
            jj, ii = np.nonzero(band[k])
            wts = mass[k][jj, ii] + 1e-12
            centre = (k, int(round(np.average(jj, weights=wts))), int(round(np.average(ii, weights=wts))))
            cand.append((float(per_slice[k]), lab.index, k, centre, float(counts[k] * vox)))
    cand.sort(key=lambda c: -c[0])
    items = []
    for rank, (prio, index, k, centre, ml) in enumerate(cand[:top], start=1):
        items.append(ReviewItem(rank, index, result.labels[index].name, k, centre, ml, prio, scores[index].score))
    return items
