"""Analysis of segmentations: metrics, consensus, uncertainty, evaluation and QA plots.

These receive volumes, segmentations and predictor callables; they never import medseg's
models, inference or interactive engines, torch or napari (import-linter contracts).
"""
