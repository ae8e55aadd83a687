"""Building a run from a configuration: datasets, HiDiff model (:func:`hidiff.factory.build_model`), trainer;
``run_training`` drives both phases."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..config import TrainingConfig
from ..data import build_dataset
from ..factory import build_model
from . import distributed
from .seeding import derive_seed, seed_everything
from .trainer import Trainer

__all__ = ["RUN_FILES", "build_datasets", "clear_previous_run", "prepare_output_dir", "run_training"]

logger = logging.getLogger(__name__)


def build_datasets(config: TrainingConfig) -> tuple[Dataset, Dataset | None]:
    """The training and (unless ``data.val_split`` is null) validation datasets of ``config.data``.

    Each is ``hidiff.data.build_dataset(name, root, split, **config.data.dataset_kwargs())``.
    """
    data = config.data
    kwargs = data.dataset_kwargs()
    train_set = build_dataset(data.name, data.root, data.train_split, **kwargs)
    val_set = build_dataset(data.name, data.root, data.val_split, **kwargs) if data.val_split else None
    return train_set, val_set


RUN_FILES = (
    "config.yaml",
    "latest.pt",
    "best.pt",
    "losses.csv",
    "losses.jsonl",
    "validation.jsonl",
    "loss_curves.png",
)
"""The files a training run writes into its output directory."""


def prepare_output_dir(output_dir: str | Path, resume: str | Path | None, overwrite: bool) -> list[Path]:
    """Checks that a run may start in `output_dir`; deletes nothing (see :func:`clear_previous_run`).

    Args:
        output_dir: the run's output directory.
        resume: the checkpoint the run continues from, if any. Its run continues in `output_dir` only when
            `output_dir` is the checkpoint's own folder or holds no run (a copy of the checkpoint continued elsewhere).
        overwrite: the earlier run's files may be replaced once the new run has started.

    Returns:
        The earlier run's files that the new run will replace (empty unless `overwrite`).

    Raises:
        FileExistsError: when `output_dir` holds a run, `resume` is None and `overwrite` is False; or when it holds a
            run other than the one `resume` belongs to (resuming there would mix two runs' checkpoints and logs).
        NotADirectoryError: when `output_dir` exists and is not a directory.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output_dir {str(output_dir)!r} exists and is not a directory")
    existing = [output_dir / name for name in RUN_FILES if (output_dir / name).exists()]
    if not existing:
        return []
    if resume is not None:
        if Path(resume).resolve().parent != output_dir.resolve():
            raise FileExistsError(
                f"output_dir {str(output_dir)!r} holds another run ({', '.join(p.name for p in existing)}) than the "
                f"checkpoint {resume}: resume into the checkpoint's own folder (output_dir="
                f"{str(Path(resume).parent)!r}) or into an empty output_dir"
            )
        return []
    if not overwrite:
        raise FileExistsError(
            f"output_dir {str(output_dir)!r} already holds a run ({', '.join(p.name for p in existing)}); "
            "continue it with --resume <output_dir>/latest.pt, choose another output_dir, or pass --overwrite "
            "to replace it"
        )
    return existing


def clear_previous_run(files: list[Path]) -> None:
    """Deletes an earlier run's files (from :func:`prepare_output_dir`) once the new run is ready to start."""
    for path in files:
        # Every process of a torchrun launch may get here before any has joined the group.
        path.unlink(missing_ok=True)
    if files:
        logger.warning("overwriting the run in %s", files[0].parent)


def run_training(
    config: TrainingConfig,
    resume: str | Path | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
) -> Path:
    """Trains HiDiff as configured: segmentor pre-training, then alternate-collaborative training.

    Works in one process or under ``torchrun`` (it joins the process group from the environment and leaves it at the
    end if it joined it). Checkpoints, logs, the loss figure and config.yaml go to ``config.output_dir``.

    Args:
        config: the run's configuration.
        resume: a checkpoint (e.g. ``<output_dir>/latest.pt``) to continue from; the phases continue from its steps.
        device: where to train (default: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU).
        overwrite: start afresh in an output directory that holds an earlier run, deleting that run's files.
            Without it (and without `resume`) such a directory is refused, so no run is lost by mistake.

    Returns:
        The output directory.

    Raises:
        FileExistsError: when ``config.output_dir`` holds a run and neither `resume` nor `overwrite` is given.
        ValueError: when the checkpoint to resume does not fit the configured model.
    """
    # Checked before any work, so a refusal costs nothing; an overwritten run's files go only once the new run's
    # data and model are known to load (a missing data root must not leave an empty folder behind).
    previous_run = prepare_output_dir(config.output_dir, resume, overwrite)
    owns_group = not torch.distributed.is_initialized()
    info = distributed.init_distributed(device=device)
    try:
        train_set, val_set = build_datasets(config)
        # Same initial weights on every rank (DDP also broadcasts rank 0's at wrapping).
        seed_everything(derive_seed(config.train.seed))
        model = build_model(config, train_set.in_channels, train_set.num_classes)
        clear_previous_run(previous_run)
        trainer = Trainer(config, model, train_set, val_set, device=info.device)
        if resume is not None:
            try:
                trainer.resume(resume)
            except RuntimeError as error:  # load_state_dict: missing, unexpected or mis-shaped weights
                detail = str(error).strip().splitlines()
                raise ValueError(
                    f"cannot resume from {resume}: its weights do not fit the configured model "
                    f"({' '.join(line.strip() for line in detail[:3])})"
                ) from error
        trainer.pretrain_segmentor()
        trainer.train_alternate()
        trainer.select_sampling()
        if trainer.is_main:
            logger.info("training finished: %s", trainer.output_dir)
        return trainer.output_dir
    finally:
        if owns_group:
            distributed.cleanup()
