"""Choosing a model's refinement settings on a validation split, and storing them in its checkpoint.

:func:`select_settings` evaluates a grid of sampler settings (steps x ensemble sizes) and the segmentor alone on
the validation split, and returns the setting with the best Dice, or refinement off when none beats the segmentor
there: a model's defaults are then never worse than its segmentor on the data they were tuned on. The trainer calls it
at the end of training (``train.select_sampling``); ``hidiff select`` does it for an existing checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .evaluation import evaluate
from .factory import read_checkpoint
from .models import HiDiff, RefineSettings

__all__ = ["DEFAULT_ENSEMBLES", "DEFAULT_STEPS", "format_selection", "select_settings", "store_settings"]

logger = logging.getLogger(__name__)

#: Reverse-step counts tried by default (None: all T).
DEFAULT_STEPS: tuple[int | None, ...] = (1, 2, 5, None)
#: Ensemble sizes tried by default.
DEFAULT_ENSEMBLES: tuple[int, ...] = (1, 4, 16)


def _step_counts(model: HiDiff, steps: Sequence[int | None], ensembles: Sequence[int]) -> list[tuple[int | None, int]]:
    """The grid ``(steps, samples)`` without duplicates: step counts of T or more are all T (None)."""
    num_steps = model.diffusion.num_steps
    for value in steps:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"steps must hold None or ints >= 1, got {value!r}")
    for value in ensembles:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ensembles must hold ints >= 1, got {value!r}")
    if not steps or not ensembles:
        raise ValueError("steps and ensembles must each hold at least one value")
    resolved = sorted({None if s is None or s >= num_steps else s for s in steps}, key=lambda s: s or num_steps)
    return [(s, k) for s in resolved for k in sorted(set(ensembles))]


@torch.no_grad()
def select_settings(
    model: HiDiff,
    dataset: Dataset,
    *,
    steps: Sequence[int | None] = DEFAULT_STEPS,
    ensembles: Sequence[int] = DEFAULT_ENSEMBLES,
    sampler: str | None = None,
    seed: int = 0,
    split: str = "val",
    batch_size: int = 8,
    window: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> RefineSettings:
    """The refinement setting with the best validation Dice, or refinement off if none beats the segmentor.

    Every setting of the grid ``steps x ensembles`` (sampler `sampler`, one seed) is evaluated on `dataset` with
    :func:`hidiff.evaluation.evaluate`; the segmentor's Dice comes from the same passes. Ties go to the cheaper
    setting (fewer steps x samples). The result keeps the model's ``frozen`` choice.

    Args:
        model: a trained HiDiff (put in eval mode).
        dataset: the validation split (contract dicts).
        steps: reverse-step counts to try (None: all T).
        ensembles: ensemble sizes to try.
        sampler: ``"ddim"`` or ``"ancestral"`` (default: the model's current ``settings.sampler``).
        seed: the sampling seed of every trial, stored with the result.
        split: the name of `dataset`'s split, recorded in the result.
        batch_size, window, device: as in :func:`hidiff.evaluation.evaluate`.
        progress: show a progress bar over the grid.

    Returns:
        ``RefineSettings(source="validation")`` whose ``validation`` entry holds the split, the number of images, the
        segmentor's and the chosen setting's Dice (fractions) and one ``{"steps", "samples", "dice"}`` row per trial.
    """
    current = model.settings
    sampler = current.sampler if sampler is None else sampler
    trials = [
        RefineSettings(steps=s, samples=k, sampler=sampler, seed=seed, frozen=current.frozen)
        for s, k in _step_counts(model, steps, ensembles)
    ]
    table: list[dict] = []
    segmentor_dice = float("nan")
    num_images = 0
    for trial in tqdm(trials, desc="select settings", unit="setting", disable=not progress):
        result = evaluate(
            model, dataset, settings=trial, batch_size=batch_size, window=window, device=device, progress=False
        )
        segmentor_dice, num_images = float(result.segmentor["dice"]), result.num_images
        table.append({"steps": trial.steps, "samples": trial.samples, "dice": float(result.refined["dice"])})
        logger.debug("steps %s, samples %d: Dice %.4f", trial.steps, trial.samples, table[-1]["dice"])
    # Ties go to the cheaper setting (RefineSettings.cost: refiner passes per image).
    best_index = max(range(len(table)), key=lambda i: (table[i]["dice"], -trials[i].cost))
    best = table[best_index]
    refine = best["dice"] > segmentor_dice
    report = {
        "split": split,
        "num_images": num_images,
        "segmentor_dice": segmentor_dice,
        "dice": best["dice"] if refine else segmentor_dice,
        "best_refined_dice": best["dice"],
        "table": table,
    }
    chosen = RefineSettings(
        refine=refine,
        steps=best["steps"],
        samples=best["samples"],
        sampler=sampler,
        seed=seed,
        frozen=current.frozen,
        source="validation",
        validation=report,
    )
    if refine:
        logger.info("refinement settings chosen on %s: %s", split, chosen.describe(model.diffusion.num_steps))
    else:
        logger.warning(
            "no refinement setting beat the segmentor on %s (best: steps %s, %d samples, Dice %.2f vs segmentor "
            "%.2f): the model's default output is the segmentor's mask (refinement off)",
            split,
            best["steps"],
            best["samples"],
            100 * best["dice"],
            100 * segmentor_dice,
        )
    return chosen


def format_selection(settings: RefineSettings, num_steps: int | None = None) -> str:
    """Markdown table of a selection's trials (Dice %), with the segmentor's row and the choice marked."""
    report = settings.validation
    if not report:
        return f"settings: {settings.describe(num_steps)} (no validation table)\n"
    lines = [
        f"Refinement settings on {report['split']} ({report['num_images']} images): {settings.describe(num_steps)}",
        "",
        "| steps | samples | Dice (%) | |",
        "|---:|---:|---:|---|",
        f"| - | - | {100 * report['segmentor_dice']:.2f} | segmentor{' (chosen)' if not settings.refine else ''} |",
    ]
    for row in report["table"]:
        chosen = settings.refine and row["steps"] == settings.steps and row["samples"] == settings.samples
        steps = row["steps"] if row["steps"] is not None else (num_steps or "all")
        lines.append(f"| {steps} | {row['samples']} | {100 * row['dice']:.2f} | {'chosen' if chosen else ''} |")
    return "\n".join(lines) + "\n"


def store_settings(checkpoint: str | Path, settings: RefineSettings) -> Path:
    """Writes `settings` into a checkpoint's ``sampling`` entry (atomically; every other entry kept).

    Raises:
        ValueError: the file is not a HiDiff checkpoint (see :func:`hidiff.factory.read_checkpoint`).
    """
    state = read_checkpoint(checkpoint)  # checks the format, names the file on error, brings it to this version
    state["sampling"] = settings.to_dict()
    return save_checkpoint(checkpoint, state)
