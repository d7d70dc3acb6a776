"""Uncertainty of automatic segmentations: TTA, MC dropout, ensembles → maps, scores, review list.

>>> from medseg.uncertainty import estimate_uncertainty, review_list
>>> result = estimate_uncertainty(volume, method="tta")          # bundled default model
>>> result.entropy.array            # (Z, Y, X) normalised predictive entropy on the input grid
>>> review_list(result)[0]          # the structure and slice most worth a look

Importing this package does not import torch; running a model does (lazily). Any callable
``Volume → (C, Z, Y, X)`` probabilities can stand in for a model (see
:mod:`medseg.uncertainty.sampling`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal, Optional, Sequence

from medseg.errors import InputError
from medseg.io import csvsafe
from medseg.progress import CancelCallback, ProgressCallback
from medseg.uncertainty.maps import SampleAccumulator, UncertaintyResult, uncertainty_from_samples
from medseg.uncertainty.review import ReviewItem, StructureScore, review_list, structure_scores
from medseg.uncertainty.sampling import (
    DEFAULT_TTA,
    Augmentation,
    Predictor,
    ensemble_uncertainty,
    mc_dropout_uncertainty,
    model_predictor,
    tta_samples,
    tta_uncertainty,
)
from medseg.volume import Volume

__all__ = [
    "UncertaintyResult",
    "SampleAccumulator",
    "StructureScore",
    "ReviewItem",
    "Augmentation",
    "Predictor",
    "DEFAULT_TTA",
    "estimate_uncertainty",
    "tta_uncertainty",
    "mc_dropout_uncertainty",
    "ensemble_uncertainty",
    "uncertainty_from_samples",
    "tta_samples",
    "model_predictor",
    "structure_scores",
    "review_list",
    "write_uncertainty",
]

log = logging.getLogger(__name__)

Method = Literal["tta", "mc_dropout", "ensemble"]


def estimate_uncertainty(
    volume: Volume,
    *,
    method: Method = "tta",
    model: object = None,
    models: Optional[Sequence[object]] = None,
    samples: int = 8,
    device: str = "auto",
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> UncertaintyResult:
    """One call: segment ``volume`` with uncertainty maps on its grid.

    Parameters
    ----------
    volume : Volume
        The image (HU for CT models).
    method : {"tta", "mc_dropout", "ensemble"}
        ``tta``: the first ``samples`` views of :data:`DEFAULT_TTA` (at most 8);
        ``mc_dropout``: ``samples`` passes with dropout on (the model needs dropout);
        ``ensemble``: one pass per entry of ``models``.
    model : None, str, Path or LoadedModel
        For TTA and MC dropout; ``None`` = the bundled default model.
    models : sequence
        For ``ensemble``: model names, paths (e.g. checkpoints) or LoadedModels.
    samples : int
        Number of TTA views or dropout passes.
    device : {"auto", "cpu", "cuda"}
    """
    if method == "tta":
        if not 1 <= samples <= len(DEFAULT_TTA):
            raise InputError(f"TTA uses 1..{len(DEFAULT_TTA)} views of DEFAULT_TTA, got samples={samples}; "
                             "call tta_uncertainty with your own augmentations for more")
        return tta_uncertainty(volume, model_predictor(model, device=device), augmentations=DEFAULT_TTA[:samples],
                               seed=seed, progress=progress, cancel=cancel)
    if method == "mc_dropout":
        return mc_dropout_uncertainty(volume, model_predictor(model, mc_dropout=True, device=device),
                                      samples=samples, seed=seed, progress=progress, cancel=cancel)
    if method == "ensemble":
        if not models or len(models) < 2:
            raise InputError("method 'ensemble' needs models=[at least 2 model names, paths or checkpoints]")
        return ensemble_uncertainty(volume, [model_predictor(m, device=device) for m in models],
                                    progress=progress, cancel=cancel)
    raise InputError(f"method must be 'tta', 'mc_dropout' or 'ensemble', got {method!r}")


def write_uncertainty(
    result: UncertaintyResult,
    folder: str | Path,
    *,
    suffix: str = ".nii.gz",
    top: int = 20,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the segmentation, the three maps, the scores and the review list to ``folder``.

    Files: ``segmentation{suffix}`` (+ label table), ``entropy``, ``mutual_information``,
    ``variance{suffix}``, ``structures.csv``, ``review.csv`` and ``uncertainty.json``
    (scores, review list, sample volumes). With ``overwrite=False`` (default) a folder that
    already holds any of them is refused before anything is written
    (:mod:`medseg.io.output_policy`).
    """
    from medseg.evaluate import json_ready
    from medseg.io import write_segmentation, write_volume
    from medseg.io.atomic import atomic_path

    from medseg.io.output_policy import check_output_dir

    out = Path(folder)
    names = [f"{n}{suffix}" for n in ("segmentation", "entropy", "mutual_information", "variance")]
    check_output_dir(out, overwrite=overwrite, will_write=names + [
        "segmentation.labels.json", "structures.csv", "review.csv", "uncertainty.json"])
    out.mkdir(parents=True, exist_ok=True)
    paths = {"segmentation": write_segmentation(result.segmentation, out / f"segmentation{suffix}",
                                                overwrite=overwrite)}
    for kind in ("entropy", "mutual_information", "variance"):
        paths[kind] = write_volume(result.map(kind), out / f"{kind}{suffix}", overwrite=overwrite)
    scores = structure_scores(result)
    review = review_list(result, top=top)
    for name, rows in (("structures", [s.to_dict() for s in scores]), ("review", [r.to_dict() for r in review])):
        p = out / f"{name}.csv"
        with atomic_path(p) as tmp:
            with open(tmp, "w", newline="") as fh:
                if rows:
                    w = csvsafe.DictWriter(fh, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(json_ready(rows))
        paths[name] = p
    p = out / "uncertainty.json"
    with atomic_path(p) as tmp:
        Path(tmp).write_text(json.dumps(json_ready({
            "method": result.method, "samples": result.n_samples,
            "structures": [s.to_dict() for s in scores], "review": [r.to_dict() for r in review],
            "sample_volumes_ml": {str(k): v for k, v in result.sample_volumes_ml.items()},
        }), indent=2) + "\n")
    paths["json"] = p
    return paths
