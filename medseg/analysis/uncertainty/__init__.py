"""Uncertainty of automatic segmentations: TTA, MC dropout, ensembles → maps, scores, review list.

>>> from medseg.inference import uncertainty_predictors
>>> from medseg.analysis.uncertainty import estimate_uncertainty, review_list
>>> result = estimate_uncertainty(volume, uncertainty_predictors("tta"), method="tta")  # default model
>>> result.entropy.array            # (Z, Y, X) normalised predictive entropy on the input grid
>>> review_list(result)[0]          # the structure and slice most worth a look

Importing this package does not import torch, and it never imports medseg's models or
inference: it receives *predictors*, callables ``Volume → (C, Z, Y, X)`` probabilities
(:func:`medseg.inference.model_predictor` makes one from a model; see
:mod:`medseg.analysis.uncertainty.sampling`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

from medseg.core.errors import InputError
from medseg.io import csvsafe
from medseg.core.progress import CancelCallback, ProgressCallback
from medseg.analysis.uncertainty.maps import SampleAccumulator, UncertaintyResult, uncertainty_from_samples
from medseg.analysis.uncertainty.review import ReviewItem, StructureScore, review_list, structure_scores
from medseg.analysis.uncertainty.sampling import (
    DEFAULT_TTA,
    Augmentation,
    Predictor,
    ensemble_uncertainty,
    mc_dropout_uncertainty,
    tta_samples,
    tta_uncertainty,
)
from medseg.core.volume import Volume

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
    "structure_scores",
    "review_list",
    "write_uncertainty",
]

log = logging.getLogger(__name__)

Method = Literal["tta", "mc_dropout", "ensemble"]


def estimate_uncertainty(
    volume: Volume,
    predictor: Union[Predictor, Sequence[Predictor]],
    *,
    method: Method = "tta",
    samples: int = 8,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> UncertaintyResult:
    """One call: segment ``volume`` with uncertainty maps on its grid.

    Parameters
    ----------
    volume : Volume
        The image (HU for CT models).
    predictor : callable or sequence of callables
        ``Volume → (C, Z, Y, X)`` probabilities on the input grid. For ``"mc_dropout"`` it must
        be stochastic; for ``"ensemble"`` one per member (:func:`medseg.inference.uncertainty_predictors`
        builds the right ones from model names or paths).
    method : {"tta", "mc_dropout", "ensemble"}
        ``tta``: the first ``samples`` views of :data:`DEFAULT_TTA` (at most 8);
        ``mc_dropout``: ``samples`` passes with dropout on (the model needs dropout);
        ``ensemble``: one pass per predictor.
    samples : int
        Number of TTA views or dropout passes.
    seed : int
        Seeds the views' noise (TTA) or torch's generator (MC dropout).
    """
    if method not in ("tta", "mc_dropout", "ensemble"):
        raise InputError(f"method must be 'tta', 'mc_dropout' or 'ensemble', got {method!r}")
    members = list(predictor) if isinstance(predictor, (list, tuple)) else None
    if (members is not None) != (method == "ensemble"):
        raise InputError(f"method {method!r} needs "
                         + ("a sequence of predictors, one per ensemble member" if method == "ensemble"
                            else "one predictor, not a sequence (a sequence is an ensemble)"))
    if method == "tta":
        if not 1 <= samples <= len(DEFAULT_TTA):
            raise InputError(f"TTA uses 1..{len(DEFAULT_TTA)} views of DEFAULT_TTA, got samples={samples}; "
                             "call tta_uncertainty with your own augmentations for more")
        return tta_uncertainty(volume, predictor, augmentations=DEFAULT_TTA[:samples],  # type: ignore[arg-type]
                               seed=seed, progress=progress, cancel=cancel)
    if method == "mc_dropout":
        return mc_dropout_uncertainty(volume, predictor, samples=samples, seed=seed,  # type: ignore[arg-type]
                                      progress=progress, cancel=cancel)
    return ensemble_uncertainty(volume, members, progress=progress, cancel=cancel)  # type: ignore[arg-type]


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
    from medseg.analysis.evaluate import json_ready
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
