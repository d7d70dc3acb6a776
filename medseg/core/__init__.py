"""Core types every part shares: Volume and its geometry, labels, segmentations, prompts,
errors, progress callbacks, configuration, memory and label-map editing helpers.

No torch, MONAI, napari or Qt here (import-linter contracts).
"""
