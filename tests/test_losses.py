"""Discriminative losses: cross-entropy, soft Dice and L_Disc against hand computations and torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hidiff.losses import cross_entropy_loss, dice_loss, discriminative_loss, discriminative_loss_terms


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def test_cross_entropy_matches_torch_binary_and_multiclass():
    logits = torch.randn(2, 1, 5, 6)
    y0 = (torch.rand(2, 1, 5, 6) > 0.5).float()
    torch.testing.assert_close(cross_entropy_loss(logits, y0), F.binary_cross_entropy_with_logits(logits, y0))

    logits = torch.randn(3, 4, 5, 6)
    labels = torch.randint(0, 4, (3, 5, 6))
    torch.testing.assert_close(cross_entropy_loss(logits, _one_hot(labels, 4)), F.cross_entropy(logits, labels))


def test_dice_by_hand():
    # One sample, one class, 4 pixels; probabilities sigmoid(0) = 0.5 everywhere, target has 2 foreground pixels:
    # intersection 1.0, sums 2 + 2, smooth 1 -> dice (2 + 1) / (4 + 1) = 0.6, loss 0.4.
    logits = torch.zeros(1, 1, 2, 2)
    y0 = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    torch.testing.assert_close(dice_loss(logits, y0), torch.tensor(0.4))
    # Without smoothing effect (tiny smooth) the same example gives 1 - 2 * 1 / 4 = 0.5.
    torch.testing.assert_close(dice_loss(logits, y0, smooth=1e-9), torch.tensor(0.5))


def test_dice_extremes_and_empty_class():
    labels = torch.randint(0, 3, (2, 8, 8))
    y0 = _one_hot(labels, 3)
    perfect = (y0 * 2 - 1) * 50.0
    assert dice_loss(perfect, y0, smooth=1e-6).item() < 1e-4
    assert dice_loss(-perfect, y0, smooth=1e-6).item() > 0.99
    # A class absent from both prediction and target scores a perfect Dice thanks to the smoothing (no 0/0).
    empty = torch.zeros(1, 1, 4, 4)
    assert dice_loss(torch.full((1, 1, 4, 4), -30.0), empty).item() < 1e-6


def test_losses_of_a_batch_are_the_mean_over_equal_halves():
    # What gradient accumulation relies on: no term couples the samples of a batch.
    logits = torch.randn(4, 3, 8, 8)
    y0 = _one_hot(torch.randint(0, 3, (4, 8, 8)), 3)
    for fn in (cross_entropy_loss, dice_loss, discriminative_loss):
        whole = fn(logits, y0)
        halves = (fn(logits[:2], y0[:2]) + fn(logits[2:], y0[2:])) / 2
        torch.testing.assert_close(whole, halves)


def test_discriminative_loss_is_ce_plus_weighted_dice():
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    y0 = (torch.rand(2, 1, 8, 8) > 0.5).float()
    terms = discriminative_loss_terms(logits, y0, dice_weight=0.5)
    torch.testing.assert_close(terms.total, terms.ce + 0.5 * terms.dice)
    torch.testing.assert_close(discriminative_loss(logits, y0), terms.ce + terms.dice)
    torch.testing.assert_close(discriminative_loss(logits, y0, dice_weight=0.0), cross_entropy_loss(logits, y0))
    discriminative_loss(logits, y0).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_low_precision_logits_give_float32_losses():
    logits = torch.randn(2, 3, 8, 8)
    y0 = _one_hot(torch.randint(0, 3, (2, 8, 8)), 3)
    loss = discriminative_loss(logits.bfloat16(), y0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, discriminative_loss(logits.bfloat16().float(), y0))


def test_bad_inputs():
    y0 = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        discriminative_loss(torch.zeros(2, 2, 4, 4), y0)
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        dice_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(TypeError, match="floating point"):
        cross_entropy_loss(torch.zeros(2, 1, 4, 4, dtype=torch.long), y0)
    with pytest.raises(ValueError, match="dice_weight"):
        discriminative_loss(torch.zeros(2, 1, 4, 4), y0, dice_weight=-1.0)
    with pytest.raises(ValueError, match="smooth"):
        dice_loss(torch.zeros(2, 1, 4, 4), y0, smooth=0.0)
    with pytest.raises(TypeError, match="tensors"):
        dice_loss([[0.0]], y0)
