"""Training and fine-tuning from folders of images and labels (imagesTr/labelsTr or Decathlon).

>>> from medseg.training import train, TrainingConfig
>>> from medseg.models import load_config
>>> train("data/", "runs/liver", config=load_config("configs/models/phantom_ct_unet.yaml"),
...       training=TrainingConfig(epochs=20))
"""

from __future__ import annotations

from medseg.training.data import Case, case_fold, find_cases, split_cases
from medseg.training.loop import TrainingConfig, TrainResult, evaluate_cases, load_training_config, train

__all__ = ["train", "TrainingConfig", "TrainResult", "load_training_config", "evaluate_cases",
           "find_cases", "split_cases", "case_fold", "Case"]
