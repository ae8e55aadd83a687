"""Paired comparison of HiDiff against its own segmentor: per image, over several sampling seeds.

Both predictions of an image come from the same checkpoint and the same segmentor pass, so the
per-image difference isolates what the refiner adds. The refinement is random (Bernoulli draws);
each seed gives one refined result, and the per-image differences are averaged over the seeds
before a bootstrap over images gives a confidence interval of the mean gain.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from .evaluation import evaluate
from .models import HiDiff, RefineSettings

__all__ = ["PairedComparison", "bootstrap_interval", "compare", "format_comparison"]

#: Metrics compared (HD95 is skipped where undefined for either prediction).
METRICS = ("dice", "iou", "hd95")


@dataclass
class PairedComparison:
    """Segmentor vs HiDiff on one dataset.

    Attributes:
        segmentor: metric -> mean over images of the segmentor alone.
        refined: metric -> mean over seeds of HiDiff's mean over images.
        refined_per_seed: metric -> one mean per seed.
        gain: metric -> mean per-image (refined - segmentor), averaged over seeds.
        interval: metric -> (low, high) bootstrap confidence interval of ``gain``.
        num_images: images compared.
        seeds: the sampling seeds.
        settings: sampler settings (steps, samples, sampler).
        confidence: the interval's confidence level.
    """

    segmentor: dict[str, float]
    refined: dict[str, float]
    refined_per_seed: dict[str, list[float]]
    gain: dict[str, float]
    interval: dict[str, tuple[float, float]]
    num_images: int
    seeds: list[int]
    settings: dict = field(default_factory=dict)
    confidence: float = 0.95


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """NaN-ignoring mean that gives NaN for an all-NaN slice without a warning (HD95 of empty masks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def bootstrap_interval(
    values: np.ndarray, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (1-D, NaN-free).

    Raises:
        ValueError: ``values`` is empty or ``confidence`` is not in (0, 1).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def compare(
    model: HiDiff,
    dataset: Dataset,
    settings: RefineSettings,
    seeds: Sequence[int],
    *,
    batch_size: int = 8,
    window: int | None = None,
    device: torch.device | str = "cpu",
    resamples: int = 2000,
    confidence: float = 0.95,
    progress: bool = True,
) -> PairedComparison:
    """Evaluates HiDiff once per seed and compares it per image with its segmentor.

    Args:
        model: the trained HiDiff.
        dataset: contract dicts (e.g. the test split).
        settings: sampler settings; ``settings.seed`` is replaced by each of ``seeds``.
        seeds: sampling seeds (at least one).
        batch_size, window, device, progress: as in :func:`hidiff.evaluation.evaluate`.
        resamples, confidence: the bootstrap over images.

    Returns:
        a :class:`PairedComparison` (means over the foreground classes for K > 1).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (a repeated seed draws the same masks again), got {seeds}")
    segmentor_values: dict[str, np.ndarray] | None = None
    refined_runs: list[dict[str, np.ndarray]] = []
    for seed in seeds:
        result = evaluate(
            model,
            dataset,
            settings=replace(settings, seed=seed),
            batch_size=batch_size,
            window=window,
            device=device,
            progress=progress,
        )
        # Per image, the mean over classes (NaN-aware for HD95); the segmentor's are the same for every seed.
        if segmentor_values is None:
            segmentor_values = {m: _nanmean(result.per_image["segmentor"][m], axis=1) for m in METRICS}
        refined_runs.append({m: _nanmean(result.per_image["refined"][m], axis=1) for m in METRICS})
    refined_mean = {m: np.mean([run[m] for run in refined_runs], axis=0) for m in METRICS}
    gain, interval = {}, {}
    for m in METRICS:
        difference = refined_mean[m] - segmentor_values[m]
        difference = difference[np.isfinite(difference)]
        gain[m] = float(difference.mean()) if difference.size else float("nan")
        interval[m] = bootstrap_interval(difference, resamples, confidence) if difference.size else (float("nan"),) * 2
    return PairedComparison(
        segmentor={m: float(_nanmean(segmentor_values[m])) for m in METRICS},
        refined={m: float(np.mean([_nanmean(run[m]) for run in refined_runs])) for m in METRICS},
        refined_per_seed={m: [float(_nanmean(run[m])) for run in refined_runs] for m in METRICS},
        gain=gain,
        interval=interval,
        num_images=len(segmentor_values["dice"]),
        seeds=seeds,
        settings={key: getattr(settings, key) for key in ("refine", "steps", "samples", "sampler")},
        confidence=confidence,
    )


def format_comparison(result: PairedComparison) -> str:
    """Markdown table: segmentor, HiDiff (mean over seeds, and per seed), paired gain with its interval."""
    level = f"{100 * result.confidence:.0f}%"
    lines = [
        f"Paired over {result.num_images} images, {len(result.seeds)} sampling seeds {result.seeds}; "
        f"sampler {result.settings}",
        "",
        f"| metric | segmentor | HiDiff (mean of seeds) | HiDiff per seed | paired gain | {level} bootstrap CI |",
        "|---|---:|---:|---|---:|---|",
    ]
    for m in METRICS:
        scale, unit = (100.0, "%") if m != "hd95" else (1.0, " px")
        per_seed = ", ".join(f"{scale * v:.2f}" for v in result.refined_per_seed[m])
        low, high = result.interval[m]
        lines.append(
            f"| {m} ({unit.strip()}) | {scale * result.segmentor[m]:.2f} | {scale * result.refined[m]:.2f} | "
            f"{per_seed} | {scale * result.gain[m]:+.2f} | [{scale * low:+.2f}, {scale * high:+.2f}] |"
        )
    return "\n".join(lines) + "\n"
