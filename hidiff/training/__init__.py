"""Training of HiDiff: segmentor pre-training and alternate-collaborative training (spec section 5, Alg. 1).

- :class:`Trainer` (:mod:`.trainer`): both phases, gradient accumulation, AMP, DDP, EMA, logs, checkpoints, resume.
- :func:`run_training` (:mod:`.launch`): builds datasets, model and trainer from a configuration and runs it.
- :mod:`.ema`, :mod:`.schedule`, :mod:`.distributed`, :mod:`.sampler`, :mod:`.seeding`, :mod:`.logs`: the pieces.

The configuration (:class:`hidiff.config.TrainingConfig`), the model factory and checkpoint format
(:mod:`hidiff.factory`) and the atomic checkpoint files (:mod:`hidiff.checkpoint`) live outside this package, so
inference never imports it.
"""

from .ema import EMA
from .launch import build_datasets, run_training
from .schedule import PolyLambda, poly_scheduler
from .trainer import Trainer

__all__ = [
    "EMA",
    "PolyLambda",
    "Trainer",
    "build_datasets",
    "poly_scheduler",
    "run_training",
]
