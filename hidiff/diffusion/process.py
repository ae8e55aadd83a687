"""Forward process, posterior (paper Eq. 7) and calibration (Eq. 10) of Bernoulli diffusion.

Functions here take per-sample coefficients (``abar_t``, ``alpha_t``, ``abar_{t-1}``) as tensors of
shape ``(B,)`` and broadcast them over the remaining dimensions, so they know nothing about timestep
indices; :class:`hidiff.diffusion.BernoulliDiffusion` gathers the coefficients from its schedule.
Every channel is an independent Bernoulli variable with its own prior channel (also for K > 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hidiff_kernels.reference import POSTERIOR_EPS

from .modes import ModelPosterior

__all__ = [
    "POSTERIOR_EPS",
    "calibrate",
    "model_posterior_mean",
    "per_sample",
    "posterior_mean",
    "prior_flip_rate",
    "q_sample",
]


def per_sample(coef: Tensor, like: Tensor) -> Tensor:
    """Reshapes a ``(B,)`` coefficient to ``(B, 1, ..., 1)`` in ``like``'s dtype and device."""
    if coef.dim() != 1 or coef.shape[0] != like.shape[0]:
        raise ValueError(f"per-sample coefficients must have shape (B,) = ({like.shape[0]},), got {tuple(coef.shape)}")
    return coef.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def q_sample(
    y0: Tensor, prior: Tensor, alpha_bar: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draws ``y_t ~ q(y_t | y0, p) = Bernoulli(abar_t * y0 + (1 - abar_t) * p)`` by the XOR reparameterisation.

    ``eps ~ Bernoulli((1 - abar_t) * |p - y0|)`` and ``y_t = y0 XOR eps``: a pixel flips away from
    ``y0`` with the probability that the noisy marginal puts on the other value.

    Args:
        y0: float ``(B, K, H, W)`` (or any ``(B, ...)``) in {0, 1}.
        prior: float, y0's shape, in [0, 1]. No gradient flows through the draw.
        alpha_bar: ``(B,)`` ``abar_t`` per sample.
        generator: optional torch generator for the uniform draw (on y0's device).

    Returns:
        ``(y_t, eps)``: y0's dtype and shape, both in {0, 1}, with ``eps = y_t XOR y0``.
    """
    if prior.shape != y0.shape:
        raise ValueError(f"prior must have the shape of y0 {tuple(y0.shape)}, got {tuple(prior.shape)}")
    flip = (1 - per_sample(alpha_bar, y0)) * (prior.detach().to(y0.dtype) - y0).abs()
    uniform = torch.rand(y0.shape, generator=generator, device=y0.device, dtype=y0.dtype)
    eps = (uniform < flip).to(y0.dtype)
    y_t = (y0 - eps).abs()  # XOR of {0, 1} values
    return y_t, eps


def posterior_mean(y_t: Tensor, y0: Tensor, prior: Tensor, alpha: Tensor, alpha_bar_prev: Tensor) -> Tensor:
    """``phi_post = P(y_{t-1} = 1 | y_t, y0, p)``, the posterior of paper Eq. 7.

    theta1 = [alpha_t y_t + (1 - alpha_t) |1 - y_t - p|] [abar_{t-1} y0 + (1 - abar_{t-1}) p]
    theta0 = [alpha_t (1 - y_t) + (1 - alpha_t) |1 - y_t - p|] [abar_{t-1} (1 - y0) + (1 - abar_{t-1}) (1 - p)]
    phi_post = theta1 / max(theta0 + theta1, 1e-12)

    The denominator is 0 only for impossible states (``p`` and ``y0`` saturated at 0 or 1 and ``y_t``
    on the other side); the guard then returns 0 instead of NaN. The operation order is the one of
    :func:`hidiff_kernels.reference.bernoulli_mean`, so float32 results match the sampling op. ``y0``
    may be continuous (the calibrated ``y0_hat``); the formula is then the same linear mixture.

    Args:
        y_t: float ``(B, ...)`` in {0, 1}.
        y0: float, y_t's shape, in [0, 1].
        prior: float, y_t's shape, in [0, 1].
        alpha: ``(B,)`` ``alpha_t`` (for respaced steps: ``abar_t / abar_{prev}``).
        alpha_bar_prev: ``(B,)`` ``abar_{t-1}`` (1 at t = 0).

    Returns:
        tensor of y_t's shape in [0, 1], in the promoted dtype of the inputs (differentiable in y0 and prior).
    """
    dtype = torch.promote_types(torch.promote_types(y_t.dtype, y0.dtype), prior.dtype)
    y_t, y0, prior = y_t.to(dtype), y0.to(dtype), prior.to(dtype)
    a, b = per_sample(alpha, y_t), per_sample(alpha_bar_prev, y_t)
    likelihood = ((1 - y_t) - prior).abs()  # p^y_t (1 - p)^(1 - y_t) for binary y_t
    mix = (1 - a) * likelihood
    prior1 = b * y0 + (1 - b) * prior
    prior0 = b * (1 - y0) + (1 - b) * (1 - prior)
    theta1 = (a * y_t + mix) * prior1
    theta0 = (a * (1 - y_t) + mix) * prior0
    return theta1 / (theta0 + theta1).clamp_min(POSTERIOR_EPS)


def model_posterior_mean(
    y_t: Tensor,
    y0_hat: Tensor,
    prior: Tensor,
    alpha: Tensor,
    alpha_bar_prev: Tensor,
    form: ModelPosterior | str = ModelPosterior.MIXTURE,
) -> Tensor:
    """The model's ``P(y_{t-1} = 1 | y_t)`` from the calibrated estimate ``y0_hat`` (see :class:`ModelPosterior`).

    Args:
        y_t: float ``(B, ...)`` in {0, 1}.
        y0_hat: float, y_t's shape, in [0, 1] (differentiable).
        prior: float, y_t's shape, in [0, 1].
        alpha, alpha_bar_prev: ``(B,)`` per-sample coefficients as in :func:`posterior_mean`.
        form: ``"mixture"`` or ``"plugin"``.

    Returns:
        tensor of y_t's shape in [0, 1].
    """
    if ModelPosterior.parse(form, "form") is ModelPosterior.PLUGIN:
        return posterior_mean(y_t, y0_hat, prior, alpha, alpha_bar_prev)
    one = posterior_mean(y_t, torch.ones_like(y_t), prior, alpha, alpha_bar_prev)
    zero = posterior_mean(y_t, torch.zeros_like(y_t), prior, alpha, alpha_bar_prev)
    return torch.lerp(zero, one, y0_hat.to(zero.dtype))


def calibrate(y_t: Tensor, eps_hat: Tensor) -> Tensor:
    """Calibrated clean estimate ``y0_hat = |y_t - eps_hat|`` (paper Eq. 10).

    Args:
        y_t: float ``(B, ...)`` in {0, 1}.
        eps_hat: float, y_t's shape: predicted flip probability in [0, 1].

    Returns:
        tensor of y_t's shape in [0, 1] (differentiable in eps_hat).
    """
    if eps_hat.shape != y_t.shape:
        raise ValueError(f"eps_hat must have the shape of y_t {tuple(y_t.shape)}, got {tuple(eps_hat.shape)}")
    return (y_t - eps_hat).abs()


def prior_flip_rate(y_t: Tensor, prior: Tensor, flip_scale: Tensor) -> Tensor:
    """``(1 - abar_t) |y_t - p|``: the exact flip probability of the prior-only Bayes denoiser.

    When ``y0 ~ Bernoulli(p)`` independently per pixel (all a denoiser can know from the prior
    alone), the marginal of ``y_t`` is again ``Bernoulli(p)`` and
    ``P(y0 != y_t | y_t) = (1 - abar_t) (1 - p)`` for ``y_t = 1`` and ``(1 - abar_t) p`` for
    ``y_t = 0``. A refiner that predicts exactly this leaves the prior unchanged in expectation;
    whatever it learns beyond it comes from the image and the segmentor's features.

    Args:
        y_t: float ``(B, ...)`` in {0, 1}.
        prior: float, y_t's shape, in [0, 1].
        flip_scale: ``(B,)`` ``1 - abar_t`` per sample.

    Returns:
        tensor of y_t's shape in [0, 1 - abar_t].
    """
    return per_sample(flip_scale, y_t) * (y_t - prior).abs()
