"""Evaluation of a trained HiDiff: the segmentor alone and after refinement, with the paper's metrics.

Both predictions of an image come from one segmentor pass (the prior), so the comparison isolates
what the refiner adds. Images larger than the training crops (DRIVE, CHASE_DB1) are evaluated by a
sliding window; the others in batches at the dataset's resolution.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import sliding_window_inference
from .metrics import SegmentationMetrics
from .models import HiDiff, RefineSettings

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Metrics of the segmentor alone and of HiDiff, with the time each part took.

    ``segmentor`` and ``refined`` are :meth:`SegmentationMetrics.compute` dicts (``refined`` is
    None when refinement was not run). Times are wall-clock seconds summed over the whole set.
    """

    segmentor: dict
    refined: dict | None
    num_images: int
    segmentor_seconds: float
    refine_seconds: float
    settings: dict = field(default_factory=dict)
    per_image: dict = field(default_factory=dict)
    """``{"segmentor": {metric: (N, classes)}, "refined": ...}`` float64 arrays, images in dataset order."""


def _timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def predict(
    model: HiDiff, images: Tensor, settings: RefineSettings | None = None, refine: bool = True
) -> dict[str, Tensor | float]:
    """Prior and HiDiff's probability maps of a batch.

    Args:
        model: a HiDiff in eval mode.
        images: float32 ``(B, C, H, W)``, H and W divisible by 32.
        settings: refinement settings (default: the model's, ``model.settings``). With ``settings.refine`` False
            HiDiff's output is the prior itself (no refiner runs).
        refine: False to skip HiDiff's output altogether (the prior only).

    Returns:
        ``{"prior": (B, K, H, W), "refined": (B, K, H, W) or absent, "segmentor_seconds",
        "refine_seconds"}``, maps float32 in [0, 1].
    """
    settings = model.settings if settings is None else settings
    (prior, features), seg_seconds = _timed(lambda: model.prior(images))
    out: dict[str, Tensor | float] = {"prior": prior, "segmentor_seconds": seg_seconds, "refine_seconds": 0.0}
    if refine and not settings.refine:
        out["refined"] = prior
    elif refine:
        refined, refine_seconds = _timed(
            lambda: model.refine_from_prior(
                images,
                prior,
                features,
                steps=settings.steps,
                samples=settings.samples,
                sampler=settings.sampler,
                seed=settings.seed,
                frozen=settings.frozen,
            )
        )
        out["refined"] = refined
        out["refine_seconds"] = refine_seconds
    return out


def _predict_windowed(
    model: HiDiff, image: Tensor, settings: RefineSettings, refine: bool, window: int, overlap: float
) -> dict[str, Tensor | float]:
    """Sliding-window prediction of one large image; both maps from the same windows."""
    times = {"segmentor_seconds": 0.0, "refine_seconds": 0.0}
    refined_windows: list[Tensor] = []

    def prior_fn(crop: Tensor) -> Tensor:
        result = predict(model, crop, settings, refine)
        times["segmentor_seconds"] += float(result["segmentor_seconds"])
        times["refine_seconds"] += float(result["refine_seconds"])
        if refine:
            refined_windows.append(result["refined"])  # type: ignore[arg-type]
        return result["prior"]  # type: ignore[return-value]

    prior = sliding_window_inference(prior_fn, image, window=window, overlap=overlap)
    out: dict[str, Tensor | float] = {"prior": prior, **times}
    if refine:
        replay = iter(refined_windows)
        out["refined"] = sliding_window_inference(lambda crop: next(replay), image, window=window, overlap=overlap)
    return out


def _within(mask: Tensor, fov: Tensor | None) -> Tensor:
    """Zeroes a (B, K, H, W) mask outside a (B, 1, H, W) field of view (None: unchanged)."""
    return mask if fov is None else mask * (fov > 0.5).to(mask.dtype)


@torch.no_grad()
def evaluate(
    model: HiDiff,
    dataset: Dataset,
    *,
    settings: RefineSettings | None = None,
    refine: bool = True,
    batch_size: int = 4,
    window: int | None = None,
    overlap: float = 0.5,
    spacing: tuple[float, float] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> EvaluationResult:
    """Evaluates the segmentor alone and HiDiff on a dataset.

    Args:
        model: the trained HiDiff (put in eval mode here).
        dataset: yields the contract dicts ``{"image", "mask", "id"}``; with ``window`` the images
            may have any size and are evaluated one at a time.
        settings: refinement settings (default: the model's, ``model.settings``; with ``settings.refine`` False
            HiDiff's scores are the segmentor's).
        refine: False to evaluate the segmentor only.
        batch_size: images per batch without a sliding window.
        window: sliding-window size for images larger than the training crops (DRIVE, CHASE_DB1).
        overlap: fraction of overlap between windows.
        spacing: pixel spacing (sy, sx) for HD95, pixel units when None.
        device: where to run.
        progress: show a tqdm bar.

    Returns:
        an :class:`EvaluationResult`.
    """
    settings = model.settings if settings is None else settings
    model.eval().to(device)
    num_classes = model.segmentor.num_classes
    class_names = getattr(dataset, "class_names", None)
    seg_metrics = SegmentationMetrics(num_classes, class_names=class_names, spacing=spacing)
    ref_metrics = SegmentationMetrics(num_classes, class_names=class_names, spacing=spacing) if refine else None
    loader = DataLoader(dataset, batch_size=1 if window else batch_size, shuffle=False)
    seg_seconds = refine_seconds = 0.0
    count = 0
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        images = batch["image"].to(device)
        masks = batch["mask"].to(device)
        if window:
            result = _predict_windowed(model, images, settings, refine, window, overlap)
        else:
            result = predict(model, images, settings, refine)
        seg_seconds += float(result["segmentor_seconds"])
        refine_seconds += float(result["refine_seconds"])
        # Retinal images are scored inside their field of view only (outside it both masks are empty).
        fov = batch["fov"].to(device) if "fov" in batch else None
        seg_metrics.update(_within(model.diffusion.to_mask(result["prior"]), fov), _within(masks, fov))
        if ref_metrics is not None:
            ref_metrics.update(_within(model.diffusion.to_mask(result["refined"]), fov), _within(masks, fov))
        count += images.shape[0]
    logger.info("evaluated %d images (segmentor %.1f s, refinement %.1f s)", count, seg_seconds, refine_seconds)
    return EvaluationResult(
        segmentor=seg_metrics.compute(),
        refined=ref_metrics.compute() if ref_metrics is not None else None,
        per_image={"segmentor": seg_metrics.per_image()}
        | ({"refined": ref_metrics.per_image()} if ref_metrics is not None else {}),
        num_images=count,
        segmentor_seconds=seg_seconds,
        refine_seconds=refine_seconds,
        settings=settings.to_dict() | {"evaluated_refinement": refine, "window": window},
    )
