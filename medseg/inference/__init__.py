"""Automatic segmentation with a loaded model: Volume in, Segmentation on the input grid out.

>>> from medseg.inference import segment
>>> seg = segment(volume)                               # bundled default model, CPU or CUDA
>>> seg = segment(volume, model=loaded, probabilities=True)   # seg.probabilities: (C, Z, Y, X)
"""

from __future__ import annotations

from medseg.inference.predictors import model_predictor, uncertainty_predictors
from medseg.inference.segment import enable_dropout, predict_model_grid, predict_probabilities, segment

__all__ = [
    "segment", "predict_probabilities", "predict_model_grid", "enable_dropout", "model_predictor",
    "uncertainty_predictors",
]
