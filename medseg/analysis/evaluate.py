"""Gold-standard QA: score a segmentation against a reference and write a report.

:func:`evaluate` computes per-class Dice, IoU, HD95, ASSD and surface Dice (mm), mIoU, the
voxel confusion matrix, volume differences and lesion-level detection (hits, misses, false
positives) for lesion classes. :func:`write_report` writes ``report.json``,
``per_class.csv``, ``confusion_matrix.csv``, ``lesions.csv`` and PNG plots (confusion matrix,
per-class bars, error-overlay slices; matplotlib with the Agg backend, see
:mod:`medseg.analysis.qa_plots`). Empty-mask conventions are those of :mod:`medseg.analysis.metrics`; in JSON
and CSV, nan and inf are written as empty values/``null`` with the reason in ``empty``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from medseg.analysis import metrics
from medseg.core.errors import InputError
from medseg.io import csvsafe
from medseg.io.atomic import atomic_path
from medseg.core.labels import MORPHOLOGY, LabelTable
from medseg.core.progress import CancelCallback, ProgressCallback, StepProgress
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

__all__ = ["EvaluationReport", "evaluate", "write_report", "default_lesion_labels", "json_ready"]

log = logging.getLogger(__name__)

_LESION_WORDS = ("tumor", "tumour", "lesion", "nodule", "metasta", "cyst")


def default_lesion_labels(labels: LabelTable) -> list[int]:
    """Labels scored per lesion by default: category "Morphologically Altered Structure",
    or a name containing tumour, lesion, nodule, metastasis or cyst."""
    out = []
    for lab in labels:
        if (lab.category is not None and lab.category.value == MORPHOLOGY.value) or any(
            w in lab.name.lower() for w in _LESION_WORDS
        ):
            out.append(lab.index)
    return out


@dataclass(frozen=True)
class EvaluationReport:
    """Scores of a prediction against a reference.

    Attributes
    ----------
    per_class : list of dict
        One row per label: ``index``, ``name``, ``empty`` (``""``, ``"both"``, ``"reference"``
        or ``"prediction"``) and the keys of :func:`medseg.analysis.metrics.label_metrics`.
    mean_dice, mean_iou : float
        Means over labels not empty in both maps (background excluded).
    confusion : (L, L) int64 ndarray
        Rows = reference, columns = prediction, order ``confusion_labels`` (0 first).
    lesions : dict
        ``{index: LesionDetection}`` for the lesion classes.
    spacing : (3,) floats
        mm, ``(z, y, x)``.
    """

    per_class: list[dict]
    mean_dice: float
    mean_iou: float
    confusion: np.ndarray
    confusion_labels: list[int]
    confusion_names: list[str]
    lesions: dict[int, metrics.LesionDetection]
    spacing: tuple[float, float, float]
    tolerance_mm: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form; nan and inf become ``None``."""
        return json_ready({
            "spacing_mm": list(self.spacing),
            "surface_tolerance_mm": self.tolerance_mm,
            "mean_dice": self.mean_dice,
            "mean_iou": self.mean_iou,
            "per_class": self.per_class,
            "confusion_matrix": {"labels": self.confusion_labels, "names": self.confusion_names,
                                 "rows": "reference", "columns": "prediction",
                                 "counts": self.confusion.tolist()},
            "lesions": {str(k): {"name": self._name(k), **v.summary(), "instances": v.records()}
                        for k, v in self.lesions.items()},
            "warnings": self.warnings,
        })

    def _name(self, index: int) -> str:
        for row in self.per_class:
            if row["index"] == index:
                return row["name"]
        return str(index)


def json_ready(x: Any) -> Any:
    """Recursively convert numpy scalars to Python and nan/inf floats to ``None``."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return json_ready(x.item())
    if isinstance(x, np.ndarray):
        return json_ready(x.tolist())
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x


def evaluate(
    reference: Segmentation,
    prediction: Segmentation,
    *,
    tolerance_mm: float = 2.0,
    lesion_labels: Optional[Sequence[int]] = None,
    lesion_min_overlap: float = 0.1,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> EvaluationReport:
    """Score ``prediction`` against the gold-standard ``reference``.

    Parameters
    ----------
    reference, prediction : Segmentation
        On one grid (checked). Labels are matched by index; the reference's names are used.
    tolerance_mm : float
        Surface Dice tolerance in mm.
    lesion_labels : sequence of int, optional
        Classes scored per connected component; default :func:`default_lesion_labels` of the
        reference table. Pass ``[]`` for none.
    lesion_min_overlap : float
        Share of a reference lesion that must be covered to count as a hit.

    Returns
    -------
    EvaluationReport
    """
    for name, seg in (("reference", reference), ("prediction", prediction)):
        if not isinstance(seg, Segmentation):
            raise InputError(f"{name} must be a Segmentation, got {type(seg).__name__}; "
                             "read it with medseg.io.read_segmentation")
    reference.label_map.require_same_grid(prediction.label_map, what="prediction")
    warnings: list[str] = []
    ref, pred = reference.array, prediction.array
    spacing = reference.label_map.spacing
    indices = sorted(set(reference.labels.indices) | set(reference.present_indices())
                     | set(prediction.present_indices()))
    names = {}
    for l in indices:
        if l in reference.labels:
            names[l] = reference.labels[l].name
            if l in prediction.labels and prediction.labels[l].name != names[l]:
                warnings.append(f"label {l} is {names[l]!r} in the reference but "
                                f"{prediction.labels[l].name!r} in the prediction; scored by index")
        elif l in prediction.labels:
            names[l] = prediction.labels[l].name
        else:
            names[l] = f"label_{l}"
    for w in warnings:
        log.warning("%s", w)
    if lesion_labels is None:
        lesion_labels = default_lesion_labels(reference.labels)
    steps = StepProgress(len(indices) + len(lesion_labels) + 1, "evaluating", progress=progress, cancel=cancel)
    per_class = []
    for l in indices:
        row = metrics.label_metrics(ref, pred, spacing=spacing, labels=[l], tolerance_mm=tolerance_mm)[l]
        in_ref, in_pred = row["volume_reference_ml"] > 0, row["volume_prediction_ml"] > 0
        empty = "" if in_ref and in_pred else "both" if not (in_ref or in_pred) else (
            "reference" if not in_ref else "prediction")
        per_class.append({"index": l, "name": names[l], "empty": empty, **row})
        steps.step()
    scored = [r for r in per_class if r["empty"] != "both"]
    mean_dice = float(np.mean([r["dice"] for r in scored])) if scored else math.nan
    m_iou = float(np.mean([r["iou"] for r in scored])) if scored else math.nan
    conf, conf_labels = metrics.confusion_matrix(ref, pred, labels=[0] + indices)
    steps.step()
    lesions = {}
    for l in lesion_labels:
        lesions[int(l)] = metrics.detect_lesions(ref == l, pred == l, spacing=spacing,
                                                 min_overlap=lesion_min_overlap)
        steps.step()
    return EvaluationReport(per_class, mean_dice, m_iou, conf, conf_labels,
                            ["background"] + [names[l] for l in indices], lesions,
                            tuple(float(s) for s in spacing), float(tolerance_mm), warnings)


_CSV_COLUMNS = ["index", "name", "empty", "dice", "iou", "hd95_mm", "assd_mm", "surface_dice",
                "volume_reference_ml", "volume_prediction_ml", "volume_difference_ml", "volume_difference_pct"]


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csvsafe.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow({k: ("" if v is None else v) for k, v in json_ready(row).items()})


def write_report(
    report: EvaluationReport,
    folder: str | Path,
    *,
    reference: Optional[Segmentation] = None,
    prediction: Optional[Segmentation] = None,
    image: Optional[Volume] = None,
    plots: bool = True,
    n_slices: int = 3,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the report to ``folder``: JSON, CSV and (``plots=True``) PNG files.

    Parameters
    ----------
    report : EvaluationReport
    folder : path
        Created if missing.
    reference, prediction : Segmentation, optional
        Needed for the error-overlay slices.
    image : Volume, optional
        Background of the overlay slices (default: the reference label map).
    n_slices : int
        Axial slices with the most wrong voxels shown in ``error_overlay.png``.
    overwrite : bool
        Replace a previous report in ``folder`` (default: refuse before writing anything;
        see :mod:`medseg.io.output_policy`).

    Returns
    -------
    dict
        ``{"json", "per_class_csv", "confusion_csv", "lesions_csv", "confusion_png",
        "per_class_png", "error_overlay_png"}`` → paths (the PNGs only when drawn).
    """
    from medseg.io.output_policy import check_output_dir, inputs_of, protect_inputs

    out = Path(folder)
    paths = {"json": out / "report.json", "per_class_csv": out / "per_class.csv",
             "confusion_csv": out / "confusion_matrix.csv", "lesions_csv": out / "lesions.csv"}
    pngs = ["confusion_matrix.png", "per_class.png", "error_overlay.png"] if plots else []
    with protect_inputs(inputs_of(reference, prediction, image)):
        check_output_dir(out, overwrite=overwrite, will_write=[p.name for p in paths.values()] + pngs)
        out.mkdir(parents=True, exist_ok=True)
        return _write_report(report, out, paths, reference=reference, prediction=prediction, image=image,
                             plots=plots, n_slices=n_slices)


def _write_report(report, out, paths, *, reference, prediction, image, plots, n_slices) -> dict[str, Path]:
    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    _write_csv(paths["per_class_csv"], report.per_class, _CSV_COLUMNS)
    with atomic_path(paths["confusion_csv"]) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csvsafe.writer(fh)
            w.writerow(["reference \\ prediction"] + report.confusion_names)
            for name, row in zip(report.confusion_names, report.confusion.tolist()):
                w.writerow([name] + row)
    lesion_rows = [{"label": k, "name": report._name(k), **r} for k, det in report.lesions.items()
                   for r in det.records()]
    _write_csv(paths["lesions_csv"], lesion_rows,
               ["label", "name", "source", "id", "voxels", "volume_ml", "centroid_kji", "detected", "matches", "dice"])
    if plots:
        from medseg.analysis import qa_plots

        paths["confusion_png"] = qa_plots.plot_confusion(report, out / "confusion_matrix.png")
        paths["per_class_png"] = qa_plots.plot_per_class(report, out / "per_class.png")
        if reference is not None and prediction is not None:
            paths["error_overlay_png"] = qa_plots.plot_error_overlay(
                reference, prediction, out / "error_overlay.png", image=image, n_slices=n_slices)
    log.info("wrote QA report to %s", out)
    return paths
