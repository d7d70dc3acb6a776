"""Predictors for the analysis layer: a medseg model as a ``Volume → probabilities`` callable.

:mod:`medseg.analysis.uncertainty` works with any predictor and never imports models or inference
(the dependency arrows of docs/ARCHITECTURE.md); this module is where a model becomes one.

>>> from medseg.inference import uncertainty_predictors
>>> from medseg.analysis.uncertainty import estimate_uncertainty
>>> result = estimate_uncertainty(volume, uncertainty_predictors("tta"), method="tta")
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from medseg.core.errors import InputError
from medseg.core.volume import Volume

__all__ = ["model_predictor", "uncertainty_predictors"]

Predictor = Callable[[Volume], Volume]


def model_predictor(model: object = None, *, mc_dropout: bool = False, device: str = "auto") -> Predictor:
    """A predictor running a medseg model (``None`` = bundled default, a name, path or LoadedModel).

    Returns a callable ``Volume → Volume`` of (C, Z, Y, X) softmax probabilities on the input
    grid, with the model's :class:`~medseg.core.labels.LabelTable` as its ``labels`` attribute.
    With ``mc_dropout=True`` the dropout layers stay active, so each call is a new sample.
    """
    from medseg.inference.segment import predict_probabilities
    from medseg.models import load_model

    loaded = load_model(model, device=device)

    def predict(volume: Volume) -> Volume:
        return predict_probabilities(volume, loaded, mc_dropout=mc_dropout)

    predict.labels = loaded.labels  # type: ignore[attr-defined]
    return predict


def uncertainty_predictors(method: str, model: object = None, models: Optional[Sequence[object]] = None, *,
                           device: str = "auto") -> Union[Predictor, list[Predictor]]:
    """The predictor(s) :func:`medseg.analysis.uncertainty.estimate_uncertainty` needs for ``method``.

    ``"tta"``: ``model`` as is; ``"mc_dropout"``: ``model`` with its dropout layers active;
    ``"ensemble"``: one predictor per entry of ``models`` (names, paths or LoadedModels, at
    least 2). ``model=None`` is the bundled default model.
    """
    if method == "tta":
        return model_predictor(model, device=device)
    if method == "mc_dropout":
        return model_predictor(model, mc_dropout=True, device=device)
    if method == "ensemble":
        if not models or len(models) < 2:
            raise InputError("method 'ensemble' needs models=[at least 2 model names, paths or checkpoints]")
        return [model_predictor(m, device=device) for m in models]
    raise InputError(f"method must be 'tta', 'mc_dropout' or 'ensemble', got {method!r}")
