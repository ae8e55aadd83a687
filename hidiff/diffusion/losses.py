"""The diffusion loss of HiDiff (paper Eq. 11-13): Bernoulli KL (or decoder NLL at t = 0) + focal loss on eps.

All probabilities are clamped to ``[1e-7, 1 - 1e-7]`` before logs. Per-pixel terms are averaged
over every non-batch dimension (a mean per sample), then over the batch; the KL is in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses import soft_dice_loss
from .modes import FirstStepTerm, ModelPosterior
from .process import calibrate, model_posterior_mean, posterior_mean

__all__ = [
    "PROB_CLAMP",
    "DiffusionLoss",
    "bernoulli_kl",
    "bernoulli_nll",
    "diffusion_loss",
    "focal_loss",
]

PROB_CLAMP = 1e-7

"""How the t = 0 term scores y0: under ``y0_hat = |y_t - eps_hat|`` itself (the public code; a proper
scoring rule on eps_hat) or under the posterior of Eq. 7 at ``abar_{-1} = 1`` (nearly flat in eps_hat)."""


@dataclass
class DiffusionLoss:
    """Scalar terms of the diffusion loss.

    Attributes:
        total: ``kl + focal_weight * focal + dice_weight * dice``, the tensor to back-propagate.
        kl: batch mean of the per-sample KL term (decoder NLL for samples with t = 0).
        focal: batch mean of the focal loss between eps_hat and eps (BCE at gamma = 0).
        dice: soft Dice loss of ``y0_hat`` against ``y0`` (computed whatever its weight).
    """

    total: Tensor
    kl: Tensor
    focal: Tensor
    dice: Tensor


def _clamp(p: Tensor) -> Tensor:
    return p.clamp(PROB_CLAMP, 1 - PROB_CLAMP)


def bernoulli_kl(q: Tensor, p: Tensor) -> Tensor:
    """Elementwise ``KL(Bernoulli(q) || Bernoulli(p))`` in nats, both clamped to [1e-7, 1 - 1e-7].

    Exactly 0 where ``q == p``; positive elsewhere (the clamped distributions still differ).
    """
    q, p = _clamp(q), _clamp(p)
    return q * (torch.log(q) - torch.log(p)) + (1 - q) * (torch.log1p(-q) - torch.log1p(-p))


def bernoulli_nll(target: Tensor, mean: Tensor) -> Tensor:
    """Elementwise ``-log Bernoulli(target; mean)`` (binary cross-entropy), ``mean`` clamped to [1e-7, 1 - 1e-7]."""
    mean = _clamp(mean)
    return -(target * torch.log(mean) + (1 - target) * torch.log1p(-mean))


def focal_loss(eps_hat: Tensor, eps: Tensor, gamma: float = 2.0) -> Tensor:
    """Elementwise focal loss ``(1 - pt)^gamma * BCE`` with ``pt = exp(-BCE)`` (Lin et al. 2017).

    Args:
        eps_hat: predicted flip probability in [0, 1].
        eps: target flips in {0, 1}, eps_hat's shape.
        gamma: focusing exponent (>= 0).
    """
    bce = bernoulli_nll(eps, eps_hat)
    return (1 - torch.exp(-bce)) ** gamma * bce


def _mean_per_sample(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def diffusion_loss(
    eps_hat: Tensor,
    y_t: Tensor,
    eps: Tensor,
    y0: Tensor,
    prior: Tensor,
    alpha: Tensor,
    alpha_bar_prev: Tensor,
    first_step: Tensor,
    focal_gamma: float = 0.0,
    focal_weight: float = 1.0,
    first_step_term: FirstStepTerm | str = FirstStepTerm.Y0_HAT,
    model_posterior: ModelPosterior | str = ModelPosterior.MIXTURE,
    dice_weight: float = 0.0,
) -> DiffusionLoss:
    """``L_Diff = KL(q(y_{t-1} | y_t, y0, p) || p_theta(y_{t-1} | y_t, p)) + focal_weight * Focal(eps_hat, eps)``.

    The model posterior ``mu_hat`` is formed from the calibrated ``y0_hat = |y_t - eps_hat|``
    (``model_posterior``: the mixture of the exact posteriors, whose KL is minimised by the true
    ``P(y0 | y_t)``, or the paper's plug-in into Eq. 7); the true one is Eq. 7 at ``y0``. For samples
    with ``first_step`` (t = 0) the KL is replaced by the decoder negative
    log-likelihood of ``y0`` under ``y0_hat`` (``first_step_term="y0_hat"``, the public code) or
    under ``mu_hat`` (``"posterior"``). Every sample of the batch takes its own branch.

    With ``focal_gamma = 0`` the eps term is the binary cross-entropy, a proper scoring rule: its
    minimiser is the true flip probability, which DDIM uses as one. The paper's focal loss
    (``gamma = 2``) is minimised near ``(q / 3)^(1/3)`` for a true rate ``q``, so it over-predicts
    flips; it stays selectable.

    Args:
        eps_hat: float ``(B, K, H, W)`` prediction in [0, 1] (any float dtype; computed in >= float32).
        y_t, eps, y0: float, eps_hat's shape, in {0, 1} (``y_t = y0 XOR eps``).
        prior: float, eps_hat's shape, in [0, 1].
        alpha, alpha_bar_prev: ``(B,)`` ``alpha_t`` and ``abar_{t-1}`` per sample.
        first_step: bool ``(B,)``, True where t = 0.
        focal_gamma, focal_weight: focal exponent (0: BCE) and weight (lambda_focal).
        first_step_term: ``"y0_hat"`` or ``"posterior"`` (see :class:`~hidiff.diffusion.modes.FirstStepTerm`).
        model_posterior: ``"mixture"`` or ``"plugin"`` (see :class:`~hidiff.diffusion.modes.ModelPosterior`).
        dice_weight: weight of the soft Dice loss of ``y0_hat = |y_t - eps_hat|`` against ``y0`` (0: the
            paper's loss). Thresholded ``y0_hat`` is the final mask, and the segmentor's L_Disc has the same term.

    Returns:
        :class:`DiffusionLoss` of scalar tensors, differentiable in eps_hat and prior.
    """
    first_step_term = FirstStepTerm.parse(first_step_term, "first_step_term")
    model_posterior = ModelPosterior.parse(model_posterior, "model_posterior")
    for name, t in (("y_t", y_t), ("eps", eps), ("y0", y0), ("prior", prior)):
        if t.shape != eps_hat.shape:
            raise ValueError(f"{name} must have the shape of eps_hat {tuple(eps_hat.shape)}, got {tuple(t.shape)}")
    dtype = torch.promote_types(torch.promote_types(eps_hat.dtype, prior.dtype), torch.float32)
    eps_hat, prior = eps_hat.to(dtype), prior.to(dtype)
    y_t, eps, y0 = y_t.to(dtype), eps.to(dtype), y0.to(dtype)

    mu_hat = model_posterior_mean(y_t, calibrate(y_t, eps_hat), prior, alpha, alpha_bar_prev, model_posterior)
    mu_true = posterior_mean(y_t, y0, prior, alpha, alpha_bar_prev)
    kl = _mean_per_sample(bernoulli_kl(mu_true, mu_hat))
    y0_hat = calibrate(y_t, eps_hat)
    decoder = y0_hat if first_step_term is FirstStepTerm.Y0_HAT else mu_hat
    nll = _mean_per_sample(bernoulli_nll(y0, decoder))
    vb = torch.where(first_step.to(kl.device), nll, kl).mean()
    focal = focal_loss(eps_hat, eps, focal_gamma).mean()
    dice = soft_dice_loss(y0_hat, y0)
    total = vb + focal_weight * focal + (dice_weight * dice if dice_weight else 0.0)
    return DiffusionLoss(total=total, kl=vb, focal=focal, dice=dice)
