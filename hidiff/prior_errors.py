"""How wrong a segmentor's prior is, and how: on the (augmented) training images vs held-out images.

The refiner learns to correct the prior it sees on training images; at test time it corrects priors of unseen images.
When the two differ (a converged segmentor is nearly perfect on its own training images), the refiner learns to fix
errors it will not meet. :func:`prior_error_statistics` measures, per image of a split, the thresholded prior's Dice,
the prior's binary cross-entropy against the mask, and three kinds of error:

- false-positive blobs: predicted connected components that touch no true foreground (count per image, and their
  share of the image's pixels);
- missed components: true connected components that no predicted pixel touches (count per image);
- boundary error: the share of wrongly labelled pixels lying within ``boundary_width`` pixels of the true boundary
  (the rest are errors away from any true edge: blobs, holes, missed objects).

:func:`compare_splits` puts two splits side by side (``hidiff diagnose`` prints it for the training split and the one
diagnosed; the trainer logs both at each alternate-phase validation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset, Subset

from .models import HiDiff

__all__ = ["PriorErrors", "compare_splits", "format_prior_errors", "prior_error_statistics"]


@dataclass
class PriorErrors:
    """Means over the images of one split (fractions, counts per image)."""

    split: str
    num_images: int
    dice: float
    bce: float
    false_positive_blobs: float
    false_positive_blob_pixels: float
    missed_components: float
    boundary_error_share: float
    error_pixels: float

    def to_dict(self) -> dict:
        return asdict(self)


def _foreground(mask: np.ndarray) -> np.ndarray:
    """bool ``(H, W)``: the only channel for K = 1, the union of the non-background channels for K > 1."""
    return mask[0] > 0.5 if mask.shape[0] == 1 else (mask[1:] > 0.5).any(0)


def _image_errors(pred: np.ndarray, true: np.ndarray, boundary_width: int) -> dict[str, float]:
    """Error statistics of one binary prediction ``(H, W)`` against its mask."""
    total = pred.sum() + true.sum()
    dice = 1.0 if total == 0 else 2.0 * (pred & true).sum() / total
    predicted, count_predicted = ndimage.label(pred)
    truth, count_truth = ndimage.label(true)
    false_blobs = [c for c in range(1, count_predicted + 1) if not true[predicted == c].any()]
    blob_pixels = float(np.isin(predicted, false_blobs).sum()) if false_blobs else 0.0
    missed = sum(1 for c in range(1, count_truth + 1) if not pred[truth == c].any())
    wrong = pred ^ true
    if wrong.any() and true.any() and not true.all():
        edge = true ^ ndimage.binary_erosion(true, border_value=1)
        near_edge = ndimage.distance_transform_edt(~edge) <= boundary_width
        boundary_share = float((wrong & near_edge).sum() / wrong.sum())
    else:
        boundary_share = 0.0 if wrong.any() else float("nan")
    return {
        "dice": float(dice),
        "false_positive_blobs": float(len(false_blobs)),
        "false_positive_blob_pixels": blob_pixels / pred.size,
        "missed_components": float(missed),
        "boundary_error_share": boundary_share,
        "error_pixels": float(wrong.sum() / pred.size),
    }


@torch.no_grad()
def prior_error_statistics(
    model: HiDiff,
    dataset: Dataset,
    *,
    split: str = "val",
    max_images: int | None = None,
    batch_size: int = 8,
    boundary_width: int = 2,
    device: torch.device | str = "cpu",
) -> PriorErrors:
    """Error statistics of the segmentor's prior (thresholded as :meth:`HiDiff.segment` does) on a dataset.

    Args:
        model: a HiDiff (its segmentor runs in eval mode).
        dataset: contract dicts; for the training split, build it as training does (with its augmentation) to see
            the priors the refiner learns from.
        split: the name recorded in the result.
        max_images: only the first images (None: all).
        batch_size: images per segmentor pass.
        boundary_width: pixels from the true boundary within which an error counts as a boundary error.
        device: where the segmentor runs.

    Returns:
        :class:`PriorErrors` (means over images; ``boundary_error_share`` over the images with errors).
    """
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be None or >= 1, got {max_images}")
        dataset = Subset(dataset, range(min(max_images, len(dataset))))  # type: ignore[arg-type]
    model.eval().to(device)
    rows: list[dict[str, float]] = []
    bce_sum, pixel_count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images, masks = batch["image"].to(device), batch["mask"].to(device)
        prior, _ = model.prior(images)
        bce = torch.nn.functional.binary_cross_entropy(prior.clamp(1e-6, 1 - 1e-6), masks, reduction="sum")
        bce_sum += float(bce)
        pixel_count += masks.numel()
        predicted = model.diffusion.to_mask(prior).cpu().numpy()
        for pred, true in zip(predicted, masks.cpu().numpy(), strict=True):
            rows.append(_image_errors(_foreground(pred), _foreground(true), boundary_width))
    if not rows:
        raise ValueError("the dataset holds no images")
    means = {key: float(np.nanmean([row[key] for row in rows])) for key in rows[0]}
    return PriorErrors(split=split, num_images=len(rows), bce=bce_sum / pixel_count, **means)


def compare_splits(model: HiDiff, splits: dict[str, Dataset], **kwargs) -> list[PriorErrors]:
    """:func:`prior_error_statistics` of each named dataset (e.g. ``{"train (augmented)": ..., "val": ...}``)."""
    return [prior_error_statistics(model, dataset, split=name, **kwargs) for name, dataset in splits.items()]


def format_prior_errors(results: list[PriorErrors]) -> str:
    """Markdown table, one row per split."""
    lines = [
        "| split | images | Dice (%) | BCE | false-positive blobs / image | their pixels (%) | missed components / "
        "image | boundary share of errors (%) | error pixels (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.split} | {r.num_images} | {100 * r.dice:.2f} | {r.bce:.4f} | {r.false_positive_blobs:.2f} | "
            f"{100 * r.false_positive_blob_pixels:.2f} | {r.missed_components:.2f} | "
            f"{100 * r.boundary_error_share:.1f} | {100 * r.error_pixels:.2f} |"
        )
    return "\n".join(lines) + "\n"
