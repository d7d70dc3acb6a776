"""PNG plots of QA reports with matplotlib's Agg backend (no display, no pyplot state).

Used by :func:`medseg.analysis.evaluate.write_report`; each function writes one PNG atomically and
returns its path. matplotlib is imported on use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from medseg.core.errors import DependencyError
from medseg.io.atomic import atomic_path
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    from medseg.analysis.evaluate import EvaluationReport

__all__ = ["plot_confusion", "plot_per_class", "plot_error_overlay", "error_slices"]


def _figure(width: float, height: float):  # -> (Figure, FigureCanvasAgg)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise DependencyError("QA plots need matplotlib: pip install 'matplotlib>=3.7'") from exc
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)


def plot_confusion(report: "EvaluationReport", path: str | Path) -> Path:
    """Row-normalised confusion matrix (reference rows, prediction columns) with counts."""
    m = report.confusion.astype(float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(report.confusion_names)
    fig = _figure(2 + 0.7 * n, 1.5 + 0.6 * n)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(n), report.confusion_names, rotation=45, ha="right")
    ax.set_yticks(range(n), report.confusion_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    for r in range(n):
        for c in range(n):
            ax.text(c, r, f"{norm[r, c]:.2f}\n{int(m[r, c])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[r, c] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="fraction of reference voxels")
    ax.set_title("voxel confusion matrix")
    return _save(fig, Path(path))


def plot_per_class(report: "EvaluationReport", path: str | Path) -> Path:
    """Bars per class: Dice, IoU and surface Dice (left axis), HD95 in mm (right panel)."""
    rows = report.per_class
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    fig = _figure(3 + 1.2 * len(rows), 4.5)
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    width = 0.27
    for k, (key, label) in enumerate((("dice", "Dice"), ("iou", "IoU"),
                                      ("surface_dice", f"surface Dice ({report.tolerance_mm:g} mm)"))):
        vals = [r[key] if np.isfinite(r[key]) else 0.0 for r in rows]
        ax.bar(x + (k - 1) * width, vals, width, label=label)
    ax.set_ylim(0, 1.05)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"overlap (mean Dice {report.mean_dice:.3f}, mIoU {report.mean_iou:.3f})")
    hd = [r["hd95_mm"] for r in rows]
    finite = [h for h in hd if np.isfinite(h)]
    cap = max(finite) * 1.2 if finite else 1.0
    ax2.bar(x, [h if np.isfinite(h) else (cap if h == np.inf else 0.0) for h in hd],
            color=["tab:red" if h == np.inf else "tab:gray" for h in hd])
    ax2.set_xticks(x, names, rotation=45, ha="right")
    ax2.set_ylabel("HD95 (mm)")
    ax2.set_title("HD95 (red: structure missing in one map)")
    return _save(fig, Path(path))


def error_slices(reference: np.ndarray, prediction: np.ndarray, n: int = 3) -> list[int]:
    """Axial slice indices ``k`` with the most mislabelled voxels, most first (none if no error)."""
    wrong = (np.asarray(reference) != np.asarray(prediction)).sum(axis=(1, 2))
    order = [int(k) for k in np.argsort(-wrong, kind="stable") if wrong[k] > 0]
    return order[:n]


def plot_error_overlay(
    reference: Segmentation,
    prediction: Segmentation,
    path: str | Path,
    *,
    image: Optional[Volume] = None,
    n_slices: int = 3,
) -> Path:
    """Axial slices with the most errors: missed voxels red, extra voxels blue, wrong class yellow.

    The background is ``image`` (windowed to its 1st–99th percentile) or the reference label map.
    Pixels are drawn with the in-plane aspect ratio from the spacing.
    """
    ref, pred = reference.array, prediction.array
    ks = error_slices(ref, pred, n_slices) or [int(np.argmax((ref > 0).sum(axis=(1, 2))))]
    bg = (image.array if image is not None and image.array.ndim == 3 else ref).astype(np.float32)
    lo, hi = np.percentile(bg, [1, 99]) if bg.size else (0.0, 1.0)
    _, sy, sx = reference.label_map.spacing
    fig = _figure(4.2 * len(ks), 4.6)
    for n, k in enumerate(ks):
        ax = fig.add_subplot(1, len(ks), n + 1)
        ax.imshow(bg[k], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=sy / sx,
                  interpolation="nearest")
        r, p = ref[k], pred[k]
        rgba = np.zeros(r.shape + (4,), np.float32)
        rgba[(r > 0) & (p == 0)] = (1.0, 0.1, 0.1, 0.8)   # missed
        rgba[(r == 0) & (p > 0)] = (0.1, 0.4, 1.0, 0.8)   # extra
        rgba[(r > 0) & (p > 0) & (r != p)] = (1.0, 0.9, 0.1, 0.8)  # wrong class
        ax.imshow(rgba, aspect=sy / sx, interpolation="nearest")
        ax.contour((r > 0).astype(float), levels=[0.5], colors="lime", linewidths=0.6)
        ax.set_title(f"slice k={k}: {int((r != p).sum())} wrong voxels", fontsize=9)
        ax.axis("off")
    fig.suptitle("errors: red missed, blue extra, yellow wrong class; green = reference outline", fontsize=9)
    return _save(fig, Path(path))
