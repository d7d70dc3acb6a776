"""Segmentation metrics in millimetres: overlap, surface distances, volumes, detection.

All functions take boolean or integer masks / label maps in array order ``(Z, Y, X)`` and
a ``spacing`` ``(z, y, x)`` in mm where distances or volumes are involved. They use numpy,
scipy and no torch, and reproduce MONAI's reference implementations
(:func:`monai.metrics.compute_dice`, :func:`monai.metrics.compute_iou`,
:func:`monai.metrics.compute_hausdorff_distance`, :func:`monai.metrics.compute_surface_dice`);
``tests/qa/test_metrics.py`` checks the agreement, anisotropic spacing and empty masks included.

Surfaces are the voxels of a mask that touch the outside through a face (``mask`` XOR its
binary erosion with the 6-neighbourhood, the volume border counting as outside), exactly as
:func:`monai.metrics.utils.get_mask_edges`. Surface distances are exact Euclidean distances in
mm between surface-voxel centres.

Empty-mask conventions (``a`` and ``b`` symmetric)
--------------------------------------------------
==================  ==============  ====================  =========================================
metric              both empty      exactly one empty     as in MONAI
==================  ==============  ====================  =========================================
``dice``, ``iou``   1.0             0.0                   ``ignore_empty=False``
``hausdorff95``     nan             inf                   see below
``surface_dice``    nan             0.0                   ``compute_surface_dice``
``mean_iou``        labels empty in both maps are left out of the mean (nan if none is left)
==================  ==============  ====================  =========================================

For exactly one empty mask MONAI returns inf for the plain Hausdorff distance but nan for
its percentile version (``torch.quantile`` of an all-inf array); medseg returns inf for both,
so that a missed or hallucinated structure is never mistaken for an undefined one.

JSON writers (:mod:`medseg.analysis.evaluate`) store nan and inf as ``null`` with an ``empty`` flag.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from medseg.core.editing import bounding_slices
from medseg.core.errors import InputError

__all__ = [
    "dice",
    "iou",
    "surface_distances",
    "hausdorff95",
    "hausdorff",
    "average_surface_distance",
    "surface_dice",
    "volume_ml",
    "confusion_matrix",
    "mean_iou",
    "label_metrics",
    "LesionRecord",
    "LesionDetection",
    "detect_lesions",
]


# -- input checks -----------------------------------------------------------------------------
def _as_mask(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype != bool:
        arr = arr != 0
    return arr


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_mask(a, "a"), _as_mask(b, "b")
    if a.shape != b.shape:
        raise InputError(
            f"masks must have the same shape, got a {a.shape} and b {b.shape}; "
            "resample one onto the other's grid first"
        )
    return a, b


def _spacing(spacing: Sequence[float] | float, ndim: int) -> np.ndarray:
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(
            f"spacing must be {ndim} positive mm values in array order (z, y, x), got {spacing!r}"
        )
    return sp


# -- overlap ----------------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient ``2|A∩B| / (|A|+|B|)`` of two masks.

    Parameters
    ----------
    a, b : (Z, Y, X) ndarray
        Masks (bool, or any array where non-zero is foreground) of the same shape.

    Returns
    -------
    float
        In [0, 1]; 1.0 when both are empty, 0.0 when only one is (see the module notes).
    """
    a, b = _pair(a, b)
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / (sa + sb)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union (Jaccard) ``|A∩B| / |A∪B|``; 1.0 when both are empty."""
    a, b = _pair(a, b)
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


# -- surfaces ---------------------------------------------------------------------------------
def _edges(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surface voxels of ``a`` and ``b`` cropped to their union bounding box (+1 voxel)."""
    from scipy.ndimage import binary_erosion

    sl = bounding_slices(a | b)
    if sl is None:
        z = np.zeros((1,) * a.ndim, dtype=bool)
        return z, z
    # pad one voxel of background so that the volume border counts as outside
    ac = np.pad(a[sl], 1)
    bc = np.pad(b[sl], 1)
    return ac ^ binary_erosion(ac), bc ^ binary_erosion(bc)


def _directed(from_edges: np.ndarray, to_edges: np.ndarray, sp: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    src = np.argwhere(from_edges).astype(np.float64) * sp
    if src.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    if not to_edges.any():
        return np.full(src.shape[0], np.inf)
    dst = np.argwhere(to_edges).astype(np.float64) * sp
    return cKDTree(dst, leafsize=32).query(src, k=1)[0]


def surface_distances(
    a: np.ndarray, b: np.ndarray, *, spacing: Sequence[float] | float
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of ``a`` to ``b``'s surface, and back.

    Parameters
    ----------
    a, b : (Z, Y, X) ndarray
        Masks of the same shape.
    spacing : (3,) floats or float
        Voxel size in mm, array order ``(z, y, x)``.

    Returns
    -------
    d_ab, d_ba : (N,) and (M,) float64 ndarrays
        ``inf`` entries when the other mask is empty; empty arrays for an empty mask.
    """
    a, b = _pair(a, b)
    sp = _spacing(spacing, a.ndim)
    ea, eb = _edges(a, b)
    return _directed(ea, eb, sp), _directed(eb, ea, sp)


def _percentile_hd(d_ab: np.ndarray, d_ba: np.ndarray, percentile: Optional[float]) -> float:
    if d_ab.size == 0 and d_ba.size == 0:
        return math.nan
    vals = []
    for d in (d_ab, d_ba):
        if d.size == 0:
            vals.append(math.nan)
        elif np.isinf(d).any():
            vals.append(math.inf)
        elif percentile is None:
            vals.append(float(d.max()))
        else:
            vals.append(float(np.percentile(d, percentile)))
    return float(np.nanmax(vals))


def hausdorff(
    a: np.ndarray, b: np.ndarray, *, spacing: Sequence[float] | float, percentile: Optional[float] = None
) -> float:
    """Symmetric (percentile) Hausdorff distance in mm between two masks' surfaces.

    ``percentile=None`` gives the maximum; otherwise the larger of the two directed
    ``percentile``-th percentiles (linear interpolation), as MONAI computes it.
    nan when both masks are empty, inf when exactly one is.
    """
    if percentile is not None and not 0 <= percentile <= 100:
        raise InputError(f"percentile must be in [0, 100], got {percentile}")
    d_ab, d_ba = surface_distances(a, b, spacing=spacing)
    return _percentile_hd(d_ab, d_ba, percentile)


def hausdorff95(a: np.ndarray, b: np.ndarray, *, spacing: Sequence[float] | float) -> float:
    """95th-percentile symmetric Hausdorff distance (HD95) in mm.

    Parameters
    ----------
    a, b : (Z, Y, X) ndarray
        Masks of the same shape.
    spacing : (3,) floats
        Voxel size in mm, ``(z, y, x)``.

    Returns
    -------
    float
        mm; nan when both masks are empty, inf when exactly one is.
    """
    return hausdorff(a, b, spacing=spacing, percentile=95.0)


def average_surface_distance(a: np.ndarray, b: np.ndarray, *, spacing: Sequence[float] | float) -> float:
    """Average symmetric surface distance (ASSD) in mm: the mean over both directed sets."""
    d_ab, d_ba = surface_distances(a, b, spacing=spacing)
    both = np.concatenate([d_ab, d_ba])
    if both.size == 0:
        return math.nan
    return float(both.mean())


def surface_dice(
    a: np.ndarray, b: np.ndarray, *, spacing: Sequence[float] | float, tolerance_mm: float
) -> float:
    """Normalised surface Dice (NSD): share of both surfaces within ``tolerance_mm`` of the other.

    Counts surface voxels (MONAI's ``use_subvoxels=False``). nan when both masks are empty,
    0.0 when exactly one is.
    """
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise InputError(f"tolerance_mm must be a finite distance >= 0 mm, got {tolerance_mm}")
    d_ab, d_ba = surface_distances(a, b, spacing=spacing)
    total = d_ab.size + d_ba.size
    if total == 0:
        return math.nan
    return float((np.count_nonzero(d_ab <= tolerance_mm) + np.count_nonzero(d_ba <= tolerance_mm)) / total)


# -- volumes and multi-class ------------------------------------------------------------------
def volume_ml(mask: np.ndarray, *, spacing: Sequence[float] | float) -> float:
    """Volume of a mask in millilitres (voxel count × voxel volume in mm³ / 1000)."""
    m = _as_mask(mask, "mask")
    sp = _spacing(spacing, m.ndim)
    return float(np.count_nonzero(m)) * float(np.prod(sp)) / 1000.0


def _label_map(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise InputError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} has negative labels (min {arr.min()}); label maps hold 0..65535")
    return arr.view(np.uint8) if arr.dtype == bool else arr


def confusion_matrix(
    reference: np.ndarray, prediction: np.ndarray, *, labels: Optional[Sequence[int]] = None
) -> tuple[np.ndarray, list[int]]:
    """Voxel confusion matrix between two label maps.

    Parameters
    ----------
    reference, prediction : (Z, Y, X) int ndarray
        Label maps of the same shape.
    labels : sequence of int, optional
        Label indices in row/column order; default 0 plus every index present in either map.
        Voxels with other values are not counted.

    Returns
    -------
    matrix : (L, L) int64 ndarray
        ``matrix[r, p]`` = number of voxels with reference ``labels[r]`` and prediction ``labels[p]``.
    labels : list of int
    """
    ref = _label_map(reference, "reference")
    pred = _label_map(prediction, "prediction")
    if ref.shape != pred.shape:
        raise InputError(f"reference {ref.shape} and prediction {pred.shape} must have the same shape")
    if labels is None:
        labels = sorted({0} | set(np.unique(ref).tolist()) | set(np.unique(pred).tolist()))
    labels = [int(l) for l in labels]
    top = max(int(ref.max(initial=0)), int(pred.max(initial=0)), max(labels)) + 1
    lut = np.full(top, -1, dtype=np.int64)
    lut[labels] = np.arange(len(labels))
    n = len(labels)
    m = np.zeros(n * n, dtype=np.int64)
    rf, pf = ref.reshape(-1), pred.reshape(-1)
    step = 1 << 22  # bounded temporaries on large volumes
    for start in range(0, rf.size, step):
        r, p = lut[rf[start:start + step]], lut[pf[start:start + step]]
        keep = (r >= 0) & (p >= 0)
        m += np.bincount(r[keep] * n + p[keep], minlength=n * n)
    m = m.reshape(n, n)
    return m.astype(np.int64), labels


def mean_iou(
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    labels: Optional[Sequence[int]] = None,
    include_background: bool = False,
) -> float:
    """Mean IoU over labels; labels absent from both maps are left out (nan if none remain)."""
    matrix, labels = confusion_matrix(reference, prediction, labels=labels)
    tp = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - tp
    keep = union > 0
    if not include_background:
        keep &= np.asarray(labels) != 0
    if not keep.any():
        return math.nan
    return float(np.mean(tp[keep] / union[keep]))


def label_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    spacing: Sequence[float],
    labels: Optional[Iterable[int]] = None,
    tolerance_mm: float = 2.0,
) -> dict[int, dict[str, float]]:
    """Dice, IoU, HD95, ASSD, surface Dice and volumes for each label of two label maps.

    Parameters
    ----------
    reference, prediction : (Z, Y, X) int ndarray
        Label maps on one grid.
    spacing : (3,) floats
        mm, ``(z, y, x)``.
    labels : iterable of int, optional
        Non-zero indices to score; default every index present in either map.
    tolerance_mm : float
        Surface Dice tolerance in mm.

    Returns
    -------
    dict
        ``{index: {"dice", "iou", "hd95_mm", "assd_mm", "surface_dice", "volume_reference_ml",
        "volume_prediction_ml", "volume_difference_ml", "volume_difference_pct"}}``;
        ``volume_difference`` is prediction − reference (pct nan for an empty reference).
    """
    ref = _label_map(reference, "reference")
    pred = _label_map(prediction, "prediction")
    if ref.shape != pred.shape:
        raise InputError(f"reference {ref.shape} and prediction {pred.shape} must have the same shape")
    if labels is None:
        labels = sorted((set(np.unique(ref).tolist()) | set(np.unique(pred).tolist())) - {0})
    out: dict[int, dict[str, float]] = {}
    for index in labels:
        a, b = ref == index, pred == index
        d_ab, d_ba = surface_distances(a, b, spacing=spacing)
        both = np.concatenate([d_ab, d_ba])
        v_ref, v_pred = volume_ml(a, spacing=spacing), volume_ml(b, spacing=spacing)
        total = both.size
        out[int(index)] = {
            "dice": dice(a, b),
            "iou": iou(a, b),
            "hd95_mm": _percentile_hd(d_ab, d_ba, 95.0),
            "assd_mm": float(both.mean()) if total else math.nan,
            "surface_dice": float(np.count_nonzero(both <= tolerance_mm) / total) if total else math.nan,
            "volume_reference_ml": v_ref,
            "volume_prediction_ml": v_pred,
            "volume_difference_ml": v_pred - v_ref,
            "volume_difference_pct": 100.0 * (v_pred - v_ref) / v_ref if v_ref > 0 else math.nan,
        }
    return out


# -- lesion-level detection -------------------------------------------------------------------
@dataclass(frozen=True)
class LesionRecord:
    """One connected component (lesion instance) of a reference or predicted mask.

    ``centroid_kji`` is the voxel index ``(k, j, i)`` of its centre of mass; ``matches`` the
    ids of the overlapping components of the other mask; ``dice`` the Dice with their union.
    """

    id: int
    source: str  # "reference" or "prediction"
    voxels: int
    volume_ml: float
    centroid_kji: tuple[float, float, float]
    detected: bool
    matches: tuple[int, ...] = ()
    dice: float = 0.0


@dataclass(frozen=True)
class LesionDetection:
    """Lesion-level detection of a prediction against a reference.

    ``hits`` reference lesions found, ``misses`` reference lesions not found,
    ``false_positives`` predicted components that match no reference lesion.
    """

    hits: int
    misses: int
    false_positives: int
    true_positive_predictions: int
    reference: tuple[LesionRecord, ...] = field(default_factory=tuple)
    prediction: tuple[LesionRecord, ...] = field(default_factory=tuple)

    @property
    def sensitivity(self) -> float:
        """Hits / reference lesions (nan without reference lesions)."""
        n = self.hits + self.misses
        return self.hits / n if n else math.nan

    @property
    def precision(self) -> float:
        """Matched predicted components / predicted components (nan without any)."""
        n = self.true_positive_predictions + self.false_positives
        return self.true_positive_predictions / n if n else math.nan

    @property
    def f1(self) -> float:
        s, p = self.sensitivity, self.precision
        if math.isnan(s) or math.isnan(p) or s + p == 0:
            return math.nan if (math.isnan(s) or math.isnan(p)) else 0.0
        return 2 * s * p / (s + p)

    def summary(self) -> dict[str, float]:
        return {"hits": self.hits, "misses": self.misses, "false_positives": self.false_positives,
                "reference_lesions": self.hits + self.misses,
                "predicted_lesions": self.true_positive_predictions + self.false_positives,
                "sensitivity": self.sensitivity, "precision": self.precision, "f1": self.f1}

    def records(self) -> list[dict]:
        """One flat dict per lesion (reference then prediction), for CSV."""
        return [asdict(r) for r in self.reference + self.prediction]


def detect_lesions(
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    spacing: Sequence[float],
    min_overlap: float = 0.1,
    min_volume_ml: float = 0.0,
    connectivity: int = 3,
) -> LesionDetection:
    """Match connected components of two masks: hits, misses and false positives.

    Parameters
    ----------
    reference, prediction : (Z, Y, X) ndarray
        Masks of one lesion class (non-zero = lesion) on one grid.
    spacing : (3,) floats
        mm, ``(z, y, x)``.
    min_overlap : float
        A reference lesion is a hit when the predicted components covering it cover at least
        this fraction of its voxels (default 0.1; use a tiny value for "any overlap").
        A predicted component is a true positive when it overlaps a hit lesion, else a false
        positive.
    min_volume_ml : float
        Components smaller than this (in either mask) are ignored.
    connectivity : {1, 2, 3}
        Neighbourhood of a component: 1 = faces (6), 2 = edges (18), 3 = corners (26).

    Returns
    -------
    LesionDetection
    """
    from scipy import ndimage

    if connectivity not in (1, 2, 3):
        raise InputError(f"connectivity must be 1, 2 or 3 (6-, 18- or 26-neighbourhood), got {connectivity}")
    if not 0.0 <= min_overlap <= 1.0:
        raise InputError(f"min_overlap must be a fraction in [0, 1], got {min_overlap}")
    ref, pred = _pair(reference, prediction)
    vox_ml = float(np.prod(_spacing(spacing, ref.ndim))) / 1000.0
    structure = ndimage.generate_binary_structure(ref.ndim, connectivity)
    ref_lab, ref_ids = _lesion_components(ref, structure, vox_ml, min_volume_ml)
    pred_lab, pred_ids = _lesion_components(pred, structure, vox_ml, min_volume_ml)
    pairs = _overlap_counts(ref_lab, pred_lab)
    ref_sizes, pred_sizes = np.bincount(ref_lab.ravel()), np.bincount(pred_lab.ravel())
    ref_centroids = ndimage.center_of_mass(ref, ref_lab, ref_ids) if ref_ids else []
    pred_centroids = ndimage.center_of_mass(pred, pred_lab, pred_ids) if pred_ids else []

    ref_set, pred_set = set(ref_ids), set(pred_ids)
    hit_ids: set[int] = set()
    ref_records = []
    for rid, cen in zip(ref_ids, ref_centroids):
        partners = tuple(sorted(p for (r, p) in pairs if r == rid and p in pred_set))
        covered = sum(pairs[(rid, p)] for p in partners)
        if partners and covered >= max(min_overlap * ref_sizes[rid], 1):
            hit_ids.add(rid)
        psize = sum(int(pred_sizes[p]) for p in partners)
        ref_records.append(_lesion_record(rid, "reference", ref_sizes[rid], vox_ml, cen, rid in hit_ids, partners,
                                          2.0 * covered / (ref_sizes[rid] + psize)))
    pred_records = []
    for pid, cen in zip(pred_ids, pred_centroids):
        partners = tuple(sorted(r for (r, p) in pairs if p == pid and r in ref_set))
        overlap = sum(pairs[(r, pid)] for r in partners)
        rsize = sum(int(ref_sizes[r]) for r in partners)
        pred_records.append(_lesion_record(pid, "prediction", pred_sizes[pid], vox_ml, cen,
                                           any(r in hit_ids for r in partners), partners,
                                           2.0 * overlap / (pred_sizes[pid] + rsize)))
    tp_pred = sum(r.detected for r in pred_records)
    return LesionDetection(
        hits=len(hit_ids),
        misses=len(ref_ids) - len(hit_ids),
        false_positives=len(pred_ids) - tp_pred,
        true_positive_predictions=tp_pred,
        reference=tuple(ref_records),
        prediction=tuple(pred_records),
    )


def _lesion_components(mask: np.ndarray, structure: np.ndarray, vox_ml: float,
                       min_volume_ml: float) -> tuple[np.ndarray, list[int]]:
    """Connected components of ``mask`` (label image) and the ids of those of at least ``min_volume_ml``."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=structure)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    return lab, [i for i in range(1, n + 1) if sizes[i] * vox_ml >= min_volume_ml]


def _overlap_counts(ref_lab: np.ndarray, pred_lab: np.ndarray) -> dict[tuple[int, int], int]:
    """Voxels shared by each (reference component, predicted component) pair that overlaps."""
    both = (ref_lab > 0) & (pred_lab > 0)
    if not both.any():
        return {}
    base = int(pred_lab.max()) + 1
    key, counts = np.unique(ref_lab[both].astype(np.int64) * base + pred_lab[both], return_counts=True)
    return {divmod(k, base): c for k, c in zip(key.tolist(), counts.tolist())}


def _lesion_record(cid: int, source: str, voxels: int, vox_ml: float, centroid: Sequence[float], detected: bool,
                   partners: tuple, dice_value: float) -> "LesionRecord":
    return LesionRecord(int(cid), source, int(voxels), float(voxels) * vox_ml, tuple(float(c) for c in centroid),
                        bool(detected), partners, float(dice_value))
