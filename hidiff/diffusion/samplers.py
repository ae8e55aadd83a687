"""Reverse samplers of Bernoulli diffusion: ancestral (posterior of Eq. 7) and DDIM (paper Alg. 2).

Every random draw goes through ``hidiff_kernels.bernoulli_step`` and its counter-based RNG: a draw
of ``n`` elements uses counters ``offset .. offset + n - 1`` and advances ``offset`` by ``n``, so
``seed`` alone determines the result, on every backend and thread count.

A run visits a descending list of original timesteps (``respace``), starting from
``y ~ Bernoulli(p)`` as the state of the first (largest) one. Each visit calls the denoiser once;
between visits ``t -> s`` the state is redrawn with

- ancestral: ``coef = (abar_t / abar_s, abar_s)``, the posterior of Eq. 7 for the jump t -> s
  (``(alpha_t, abar_{t-1})`` when no step is skipped), formed from ``y0_hat`` as the mixture of the
  exact posteriors of y0 = 1 and y0 = 0 (default) or by the paper's plug-in of ``y0_hat`` into Eq. 7
  (``posterior="plugin"``; see :class:`~hidiff.diffusion.modes.ModelPosterior`);
- DDIM: ``coef = (sigma, abar_s - sigma * abar_t)`` with ``sigma = (1 - abar_s) / (1 - abar_t)``.

With an exact denoiser (one that knows y0) both keep the forward marginals
``Bernoulli(abar_s y0 + (1 - abar_s) p)``. The
last visit (timestep 0 unless a single step is asked for) returns the continuous ``y0_hat = |y_t -
eps_hat|`` instead of drawing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

import hidiff_kernels

from .modes import ModelPosterior, Sampler
from .process import calibrate, model_posterior_mean
from .schedules import BernoulliSchedule

__all__ = [
    "DenoiseFn",
    "StepTrace",
    "draw_bernoulli",
    "draw_prior",
    "respace",
    "sample",
    "sample_chain",
    "step_coefficients",
    "to_mask",
]

#: The ``mode`` of ``hidiff_kernels.bernoulli_step`` that runs each sampler's step.
_KERNEL_MODES = {Sampler.DDIM: "ddim", Sampler.ANCESTRAL: "posterior"}

StepTrace = Callable[[int, Tensor, Tensor], None]
"""``trace(t, y_t, eps_hat)``: called by :func:`sample_chain` after each denoiser call with the
visited timestep, the chain state (float32 in {0, 1}) and the prediction (diagnostics)."""

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``denoise_fn(y_t, t) -> eps_hat``: float32 ``(B, K, H, W)`` state and int64 ``(B,)`` timesteps to
the predicted flip probability in [0, 1] of y_t's shape."""


def respace(num_steps: int, steps: int | None = None) -> tuple[int, ...]:
    """The original timesteps a sampler visits, in the order visited (descending).

    ``steps`` timesteps equally spaced over ``[0, T-1]``, both ends included and rounded half up:
    ``None`` or ``T`` gives ``(T-1, ..., 0)``; 5 of 10 gives ``(9, 7, 5, 2, 0)``. A single step
    gives ``(T-1,)``: the denoiser then sees the start ``y ~ Bernoulli(p)`` at the timestep whose
    marginal it matches and returns its ``y0_hat``.

    Raises:
        TypeError: ``steps`` is not an int or None.
        ValueError: ``steps`` outside ``1 .. T``.
    """
    if steps is None:
        steps = num_steps
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int or None, got {type(steps).__name__}")
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be in 1..{num_steps} (the number of diffusion steps), got {steps}")
    if steps == 1:
        return (num_steps - 1,)
    span, gaps = num_steps - 1, steps - 1
    # round(i * span / gaps) half up in integers; the spacing is >= 1, so the values are distinct.
    return tuple((2 * i * span + gaps) // (2 * gaps) for i in reversed(range(steps)))


def step_coefficients(schedule: BernoulliSchedule, sampler: Sampler | str, t: int, s: int) -> tuple[float, float]:
    """The ``coef`` pair of ``hidiff_kernels.bernoulli_step`` for the jump from timestep ``t`` to ``s < t``.

    ``s = -1`` means the clean state (``abar_{-1} = 1``). Computed in float64.
    """
    sampler = Sampler.parse(sampler, "sampler")
    if not -1 <= s < t < schedule.num_steps:
        raise ValueError(f"need -1 <= s < t < {schedule.num_steps}, got t={t}, s={s}")
    abar_t = float(schedule.alphas_cumprod[t])
    abar_s = float(schedule.alphas_cumprod[s]) if s >= 0 else 1.0
    if sampler is Sampler.ANCESTRAL:
        # Product of the per-step alphas rather than abar_t / abar_s: exactly alpha_t when s = t - 1.
        return float(schedule.alphas[s + 1 : t + 1].prod()), abar_s
    sigma = (1 - abar_s) / (1 - abar_t)
    return sigma, abar_s - sigma * abar_t


def _coef(a: float, b: float, like: Tensor) -> Tensor:
    return torch.tensor([[a, b]], dtype=torch.float32, device=like.device).expand(like.shape[0], 2).contiguous()


def draw_bernoulli(mean: Tensor, seed: int, offset: int) -> Tensor:
    """``y ~ Bernoulli(mean)`` with the counter RNG: one ``bernoulli_step`` whose mean is exactly ``mean``.

    In DDIM mode with ``y_t = 0``, ``eps_hat = mean`` and ``coef = (0, 1)`` the step mean is
    ``0 * 0 + 1 * |0 - mean| = mean``; the draw consumes ``mean.numel()`` counters from ``offset``.

    Args:
        mean: float32 contiguous ``(B, ...)`` in [0, 1].

    Returns:
        float32 tensor of mean's shape in {0, 1}.
    """
    zeros, coef = torch.zeros_like(mean), _coef(0.0, 1.0, mean)
    return hidiff_kernels.bernoulli_step(zeros, mean, mean, coef, _KERNEL_MODES[Sampler.DDIM], seed, offset)


def draw_prior(prior: Tensor, seed: int, offset: int) -> Tensor:
    """``y ~ Bernoulli(p)``, the start of every chain (:func:`draw_bernoulli` of the prior)."""
    return draw_bernoulli(prior, seed, offset)


def _check_prior(prior: Tensor) -> Tensor:
    if not isinstance(prior, Tensor) or not prior.dtype.is_floating_point:
        raise TypeError(f"prior must be a floating tensor, got {type(prior).__name__}")
    if prior.dim() < 2 or prior.shape[0] == 0:
        raise ValueError(f"prior must have shape (B, K, ...) with B >= 1, got {tuple(prior.shape)}")
    return prior.detach().to(torch.float32).contiguous()


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must fit in a signed 64-bit integer, got {seed}")


def _denoise(denoise_fn: DenoiseFn, y: Tensor, t: int) -> Tensor:
    timesteps = torch.full((y.shape[0],), t, dtype=torch.int64, device=y.device)
    eps_hat = denoise_fn(y, timesteps)
    if not isinstance(eps_hat, Tensor) or eps_hat.shape != y.shape:
        shape = tuple(eps_hat.shape) if isinstance(eps_hat, Tensor) else type(eps_hat).__name__
        raise ValueError(f"denoise_fn must return eps_hat of the shape of y_t {tuple(y.shape)}, got {shape}")
    return eps_hat.to(torch.float32).contiguous()


def sample_chain(
    denoise_fn: DenoiseFn,
    prior: Tensor,
    schedule: BernoulliSchedule,
    timesteps: Sequence[int],
    sampler: Sampler | str = Sampler.DDIM,
    seed: int = 0,
    offset: int = 0,
    trace: StepTrace | None = None,
    posterior: ModelPosterior | str = ModelPosterior.MIXTURE,
) -> tuple[Tensor, int]:
    """One reverse run over ``timesteps`` (descending original timesteps, see :func:`respace`).

    Args:
        denoise_fn: ``(y_t, t) -> eps_hat``, called once per timestep.
        prior: float ``(B, K, H, W)`` in [0, 1] (used as float32, without gradient).
        schedule: the diffusion schedule.
        timesteps: strictly descending timesteps in ``0 .. T-1``.
        sampler: ``"ddim"`` or ``"ancestral"``.
        seed, offset: counter RNG position of the first draw.
        trace: optional :data:`StepTrace` called at every visited timestep.
        posterior: how the ancestral sampler forms ``p(y_{t-1} | y_t)`` from ``y0_hat``:
            ``"mixture"`` or ``"plugin"`` (ignored by DDIM).

    Returns:
        ``(y0_hat, offset)``: float32 ``(B, K, H, W)`` in [0, 1] and the counter offset after the last draw.
    """
    sampler = Sampler.parse(sampler, "sampler")
    posterior = ModelPosterior.parse(posterior, "posterior")
    timesteps = [int(t) for t in timesteps]
    if not timesteps or any(s >= t for t, s in zip(timesteps, timesteps[1:], strict=False)):
        raise ValueError(f"timesteps must be a non-empty strictly descending sequence, got {timesteps}")
    if timesteps[-1] < 0 or timesteps[0] >= schedule.num_steps:
        raise ValueError(f"timesteps must lie in 0..{schedule.num_steps - 1}, got {timesteps}")
    _check_seed(seed)
    prior = _check_prior(prior)
    with torch.no_grad():
        y = draw_prior(prior, seed, offset)
        offset += y.numel()
        for t, s in zip(timesteps[:-1], timesteps[1:], strict=True):
            eps_hat = _denoise(denoise_fn, y, t)
            if trace is not None:
                trace(t, y, eps_hat)
            coef = _coef(*step_coefficients(schedule, sampler, t, s), y)
            if sampler is Sampler.ANCESTRAL and posterior is ModelPosterior.MIXTURE:
                mean = model_posterior_mean(y, calibrate(y, eps_hat), prior, coef[:, 0], coef[:, 1])
                y = draw_bernoulli(mean.contiguous(), seed, offset)
            else:
                y = hidiff_kernels.bernoulli_step(y, eps_hat, prior, coef, _KERNEL_MODES[sampler], seed, offset)
            offset += y.numel()
        eps_hat = _denoise(denoise_fn, y, timesteps[-1])
        if trace is not None:
            trace(timesteps[-1], y, eps_hat)
        return calibrate(y, eps_hat).clamp(0.0, 1.0), offset


def sample(
    denoise_fn: DenoiseFn,
    prior: Tensor,
    schedule: BernoulliSchedule,
    steps: int | None = None,
    sampler: Sampler | str = Sampler.DDIM,
    samples: int = 1,
    seed: int = 0,
    posterior: ModelPosterior | str = ModelPosterior.MIXTURE,
) -> Tensor:
    """Mean ``y0_hat`` of an ensemble of ``samples`` reverse runs.

    Member ``k`` continues the counter offsets where member ``k - 1`` stopped, so the members are
    distinct draws and member 0 equals a single run with the same seed.

    Args:
        denoise_fn: ``(y_t, t) -> eps_hat``.
        prior: float ``(B, K, H, W)`` in [0, 1].
        schedule: the diffusion schedule.
        steps: number of timesteps visited (None: all T), see :func:`respace`.
        sampler: ``"ddim"`` or ``"ancestral"``.
        samples: ensemble size >= 1.
        seed: counter RNG seed.
        posterior: ``"mixture"`` or ``"plugin"``, see :func:`sample_chain`.

    Returns:
        float32 ``(B, K, H, W)`` in [0, 1].
    """
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise TypeError(f"samples must be an int, got {type(samples).__name__}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    timesteps = respace(schedule.num_steps, steps)
    total, offset = None, 0
    for _ in range(samples):
        y0_hat, offset = sample_chain(
            denoise_fn, prior, schedule, timesteps, sampler, seed, offset, posterior=posterior
        )
        total = y0_hat if total is None else total + y0_hat
    return total / samples


def to_mask(y0_hat: Tensor) -> Tensor:
    """Final mask: ``y0_hat > 0.5`` for K = 1, one-hot of the argmax over channels for K > 1.

    Args:
        y0_hat: float ``(B, K, H, W)`` in [0, 1].

    Returns:
        float32 ``(B, K, H, W)`` in {0, 1} (one-hot over K when K > 1).
    """
    if not isinstance(y0_hat, Tensor) or not y0_hat.dtype.is_floating_point:
        raise TypeError(f"y0_hat must be a floating tensor, got {type(y0_hat).__name__}")
    if y0_hat.dim() < 2 or y0_hat.shape[1] == 0:
        raise ValueError(f"y0_hat must have shape (B, K, ...) with K >= 1, got {tuple(y0_hat.shape)}")
    if y0_hat.shape[1] == 1:
        return (y0_hat > 0.5).to(torch.float32)
    index = y0_hat.argmax(dim=1, keepdim=True)
    return torch.zeros_like(y0_hat, dtype=torch.float32).scatter_(1, index, 1.0)
