"""Training of HiDiff: segmentor pre-training and alternate-collaborative training (spec section 5, Alg. 1).

- :class:`TrainingConfig` (:mod:`.config`): the run's configuration, with a strict YAML round trip.
- :class:`Trainer` (:mod:`.trainer`): both phases, gradient accumulation, AMP, DDP, EMA, logs, checkpoints, resume.
- :func:`run_training` (:mod:`.launch`): builds datasets, model and trainer from a configuration and runs it.
- :mod:`.checkpoint`, :mod:`.ema`, :mod:`.schedule`, :mod:`.distributed`, :mod:`.sampler`, :mod:`.seeding`,
  :mod:`.logs`: the pieces.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import DataConfig, DiffusionConfig, ModelConfig, OptimConfig, TrainConfig, TrainingConfig
from .ema import EMA
from .launch import build_datasets, build_model, run_training
from .schedule import PolyLambda, poly_scheduler
from .trainer import Trainer

__all__ = [
    "EMA",
    "DataConfig",
    "DiffusionConfig",
    "ModelConfig",
    "OptimConfig",
    "PolyLambda",
    "TrainConfig",
    "Trainer",
    "TrainingConfig",
    "build_datasets",
    "build_model",
    "load_checkpoint",
    "poly_scheduler",
    "run_training",
    "save_checkpoint",
]
