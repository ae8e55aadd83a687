"""Building a run from a configuration: datasets, HiDiff model, trainer; ``run_training`` drives both phases."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..data import build_dataset
from ..diffusion import BernoulliDiffusion
from ..models import BBDM, HiDiff, build_segmentor
from . import distributed
from .config import TrainingConfig
from .seeding import derive_seed, seed_everything
from .trainer import Trainer

__all__ = ["build_datasets", "build_model", "dataset_kwargs", "run_training"]

logger = logging.getLogger(__name__)


def dataset_kwargs(config: TrainingConfig) -> dict:
    """Keyword arguments of ``build_dataset`` from ``config.data``: ``image_size`` only when it is set."""
    data = config.data
    size = {} if data.image_size is None else {"image_size": data.image_size}
    return {**size, **data.kwargs}


def build_datasets(config: TrainingConfig) -> tuple[Dataset, Dataset | None]:
    """The training and (unless ``data.val_split`` is null) validation datasets of ``config.data``.

    Each is ``hidiff.data.build_dataset(name, root, split, **dataset_kwargs(config))``.
    """
    data = config.data
    kwargs = dataset_kwargs(config)
    train_set = build_dataset(data.name, data.root, data.train_split, **kwargs)
    val_set = build_dataset(data.name, data.root, data.val_split, **kwargs) if data.val_split else None
    return train_set, val_set


def build_model(config: TrainingConfig, in_channels: int, num_classes: int) -> HiDiff:
    """HiDiff from ``config.model`` and ``config.diffusion`` for images of `in_channels` and `num_classes` classes.

    The refiner's condition channels are the segmentor's ``feature_channels``.
    """
    model = config.model
    segmentor = build_segmentor(
        model.segmentor, in_channels=in_channels, num_classes=num_classes, **model.segmentor_kwargs
    )
    refiner = BBDM(
        image_channels=in_channels,
        num_classes=num_classes,
        model_channels=model.refiner_channels,
        cond_channels=segmentor.feature_channels,
        binary=model.binary,
        xformer=model.xformer,
        **model.refiner_kwargs,
    )
    diffusion = BernoulliDiffusion(num_steps=config.diffusion.num_steps, schedule=config.diffusion.schedule)
    return HiDiff(segmentor, refiner, diffusion)


def run_training(
    config: TrainingConfig, resume: str | Path | None = None, device: str | torch.device | None = None
) -> Path:
    """Trains HiDiff as configured: segmentor pre-training, then alternate-collaborative training.

    Works in one process or under ``torchrun`` (it joins the process group from the environment and leaves it at the
    end if it joined it). Checkpoints, logs, the loss figure and config.yaml go to ``config.output_dir``.

    Args:
        config: the run's configuration.
        resume: a checkpoint (e.g. ``<output_dir>/latest.pt``) to continue from; the phases continue from its steps.
        device: where to train (default: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU).

    Returns:
        The output directory.
    """
    owns_group = not torch.distributed.is_initialized()
    info = distributed.init_distributed(device=device)
    try:
        train_set, val_set = build_datasets(config)
        # Same initial weights on every rank (DDP also broadcasts rank 0's at wrapping).
        seed_everything(derive_seed(config.train.seed))
        model = build_model(config, train_set.in_channels, train_set.num_classes)
        trainer = Trainer(config, model, train_set, val_set, device=info.device)
        if resume is not None:
            trainer.resume(resume)
        trainer.pretrain_segmentor()
        trainer.train_alternate()
        if trainer.is_main:
            logger.info("training finished: %s", trainer.output_dir)
        return trainer.output_dir
    finally:
        if owns_group:
            distributed.cleanup()
