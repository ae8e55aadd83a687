"""Discriminative segmentation losses: cross-entropy, soft Dice and their sum L_Disc (spec section 5).

Every function takes the segmentor's raw ``logits`` (B, K, H, W) and the one-hot ground truth ``y0`` (B, K, H, W),
float, values in {0, 1}. For K = 1 the single channel is the foreground probability ``sigmoid(logits)``; for K > 1
the channels (background included) are a categorical distribution ``softmax(logits, dim=1)``, the same convention as
``hidiff.models.prior_from_logits``.

All reductions are means over samples (and classes, pixels), so the loss of a batch equals the mean of the losses of
its equal-sized halves: gradient accumulation over micro-batches then gives the gradient of the full batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "DiscriminativeLoss",
    "cross_entropy_loss",
    "dice_loss",
    "discriminative_loss",
    "discriminative_loss_terms",
    "soft_dice_loss",
]


class DiscriminativeLoss(NamedTuple):
    """L_Disc and its two terms, each a scalar float32 tensor (differentiable w.r.t. the logits)."""

    total: torch.Tensor
    ce: torch.Tensor
    dice: torch.Tensor


def _check(logits: torch.Tensor, y0: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(y0, torch.Tensor):
        raise TypeError(f"logits and y0 must be tensors, got {type(logits).__name__} and {type(y0).__name__}")
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (B, K, H, W), got {tuple(logits.shape)}")
    if y0.shape != logits.shape:
        raise ValueError(f"y0 must have the shape of logits {tuple(logits.shape)}, got {tuple(y0.shape)}")
    if not logits.is_floating_point() or not y0.is_floating_point():
        raise TypeError(f"logits and y0 must be floating point, got {logits.dtype} and {y0.dtype}")


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    # Computed in float32 even under autocast: a bf16 softmax loses the small probabilities Dice sums over.
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def cross_entropy_loss(logits: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy, averaged over samples and pixels.

    Args:
        logits: float (B, K, H, W) raw segmentor outputs.
        y0: float (B, K, H, W) one-hot target in {0, 1} (a single foreground channel when K = 1).

    Returns:
        Scalar float32 tensor: binary cross-entropy with logits (mean over pixels) for K = 1; for K > 1 the
        categorical cross-entropy ``-sum_k y0_k log softmax_k`` averaged over pixels.
    """
    _check(logits, y0)
    logits, y0 = logits.float(), y0.float()
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, y0)
    return -(y0 * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def dice_loss(logits: torch.Tensor, y0: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 |P Y| + s) / (|P| + |Y| + s)``, per sample and class, averaged over both.

    Args:
        logits: float (B, K, H, W) raw segmentor outputs (probabilities by sigmoid for K = 1, softmax for K > 1).
        y0: float (B, K, H, W) one-hot target in {0, 1}.
        smooth: the smoothing constant s > 0; it makes a class absent from both prediction and target score 1
            (loss 0) instead of 0/0.

    Returns:
        Scalar float32 tensor in [0, 1]. Every channel counts, background included for K > 1.
    """
    _check(logits, y0)
    if not smooth > 0:
        raise ValueError(f"smooth must be > 0, got {smooth}")
    return soft_dice_loss(_probabilities(logits), y0, smooth)


def soft_dice_loss(probs: torch.Tensor, y0: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """:func:`dice_loss` on probabilities: ``1 - (2 |P Y| + s) / (|P| + |Y| + s)`` per sample and class, averaged.

    Args:
        probs: float (B, K, H, W) probabilities in [0, 1] (e.g. the refiner's ``y0_hat``).
        y0: float (B, K, H, W) target in {0, 1}.
        smooth: the smoothing constant s > 0.

    Returns:
        Scalar float32 tensor in [0, 1].
    """
    probs, y0 = probs.float(), y0.float()
    intersection = (probs * y0).sum(dim=(2, 3))
    total = probs.sum(dim=(2, 3)) + y0.sum(dim=(2, 3))
    return 1.0 - ((2.0 * intersection + smooth) / (total + smooth)).mean()


def discriminative_loss_terms(
    logits: torch.Tensor, y0: torch.Tensor, dice_weight: float = 1.0, smooth: float = 1.0
) -> DiscriminativeLoss:
    """L_Disc = CE + lambda_Dice * Dice with its terms (see :func:`discriminative_loss`)."""
    if dice_weight < 0:
        raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
    ce = cross_entropy_loss(logits, y0)
    dice = dice_loss(logits, y0, smooth=smooth)
    return DiscriminativeLoss(total=ce + dice_weight * dice, ce=ce, dice=dice)


def discriminative_loss(
    logits: torch.Tensor, y0: torch.Tensor, dice_weight: float = 1.0, smooth: float = 1.0
) -> torch.Tensor:
    """The segmentor's discriminative loss L_Disc = CE + lambda_Dice * Dice (spec section 5, lambda_Dice = 1).

    Args:
        logits: float (B, K, H, W) raw segmentor outputs.
        y0: float (B, K, H, W) one-hot target in {0, 1}.
        dice_weight: lambda_Dice >= 0.
        smooth: Dice smoothing constant > 0.

    Returns:
        Scalar float32 tensor.
    """
    return discriminative_loss_terms(logits, y0, dice_weight=dice_weight, smooth=smooth).total
