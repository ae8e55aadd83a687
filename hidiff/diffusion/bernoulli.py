"""``BernoulliDiffusion``: the schedule, forward process, loss and samplers of HiDiff in one object."""

from __future__ import annotations

import torch
from torch import Tensor

from . import samplers
from .losses import DiffusionLoss, diffusion_loss
from .modes import FirstStepTerm, ModelPosterior, Sampler
from .process import calibrate, posterior_mean, q_sample
from .samplers import DenoiseFn
from .schedules import BernoulliSchedule, make_schedule

__all__ = ["BernoulliDiffusion"]


def _check_pair(x: Tensor, other: Tensor, x_name: str = "y0", other_name: str = "prior") -> None:
    for name, value in ((x_name, x), (other_name, other)):
        if not isinstance(value, Tensor) or not value.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating tensor, got {getattr(value, 'dtype', type(value).__name__)}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{x_name} must have shape (B, K, ...) with B >= 1, got {tuple(x.shape)}")
    if other.shape != x.shape:
        raise ValueError(f"{other_name} must have the shape of {x_name} {tuple(x.shape)}, got {tuple(other.shape)}")


class BernoulliDiffusion:
    """Bernoulli diffusion of binary (one-hot) masks around a segmentor prior (HiDiff Sec. II-B.1).

    A plain object holding float64 schedule tensors (see :mod:`hidiff.diffusion.schedules` for the
    timestep convention: index ``t`` in ``0..T-1`` has ``abar_t = alphas_cumprod[t]``, the continuous
    schedule at ``s = t + 1``, and ``abar_{-1} = 1``). Models are passed in as a closure
    ``denoise_fn(y_t, t) -> eps_hat``, e.g. ``lambda y_t, t: refiner(image, y_t, prior, t, features)``.

    Args:
        num_steps: T >= 1.
        schedule: ``"cosine"`` (the paper's squared cosine) or ``"cosine-unsquared"`` (the public code's).
        focal_gamma: focal-loss exponent (>= 0); 0 (default) is the binary cross-entropy, a proper
            scoring rule that keeps eps_hat calibrated; the paper's 2 over-predicts flips.
        focal_weight: lambda_focal (>= 0).
        first_step_term: the t = 0 term scores y0 under ``"y0_hat"`` (default, the public code) or
            ``"posterior"`` (Eq. 7 at ``abar_{-1} = 1``).
        model_posterior: how ``p_theta(y_{t-1} | y_t)`` is formed from ``y0_hat`` in the KL term and
            the ancestral sampler: ``"mixture"`` (default, exact for a calibrated ``y0_hat``) or
            ``"plugin"`` (the paper's Eq. 10), see :class:`~hidiff.diffusion.modes.ModelPosterior`.
        dice_weight: weight (>= 0) of a soft Dice loss on ``y0_hat`` (0: the paper's loss).
    """

    def __init__(
        self,
        num_steps: int = 10,
        schedule: str = "cosine",
        focal_gamma: float = 0.0,
        focal_weight: float = 1.0,
        first_step_term: FirstStepTerm | str = FirstStepTerm.Y0_HAT,
        model_posterior: ModelPosterior | str = ModelPosterior.MIXTURE,
        dice_weight: float = 0.0,
        last_step_fraction: float = 0.0,
    ) -> None:
        if not 0.0 <= last_step_fraction <= 1.0:
            raise ValueError(f"last_step_fraction must be in [0, 1], got {last_step_fraction}")
        self.last_step_fraction = float(last_step_fraction)
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
        if focal_weight < 0:
            raise ValueError(f"focal_weight must be >= 0, got {focal_weight}")
        self.first_step_term = FirstStepTerm.parse(first_step_term, "first_step_term")
        self.model_posterior = ModelPosterior.parse(model_posterior, "model_posterior")
        self.schedule: BernoulliSchedule = make_schedule(schedule, num_steps)
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
        self.dice_weight = float(dice_weight)
        self.focal_gamma = float(focal_gamma)
        self.focal_weight = float(focal_weight)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_steps={self.num_steps}, schedule={self.schedule.name!r}, "
            f"focal_gamma={self.focal_gamma}, focal_weight={self.focal_weight}, "
            f"first_step_term={self.first_step_term!r}, model_posterior={self.model_posterior!r}, "
            f"dice_weight={self.dice_weight}, last_step_fraction={self.last_step_fraction})"
        )

    @property
    def num_steps(self) -> int:
        """T, the number of diffusion steps."""
        return self.schedule.num_steps

    @property
    def flip_scales(self) -> tuple[float, ...]:
        """``1 - abar_t`` for t = 0..T-1: the residual refiner's ``prior_flip_rates``."""
        return tuple(float(1 - a) for a in self.alphas_cumprod)

    @property
    def betas(self) -> Tensor:
        """float64 ``(T,)`` ``beta_t``."""
        return self.schedule.betas

    @property
    def alphas(self) -> Tensor:
        """float64 ``(T,)`` ``alpha_t = 1 - beta_t``."""
        return self.schedule.alphas

    @property
    def alphas_cumprod(self) -> Tensor:
        """float64 ``(T,)`` ``abar_t``."""
        return self.schedule.alphas_cumprod

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        """float64 ``(T,)`` ``abar_{t-1}`` (1 at t = 0)."""
        return self.schedule.alphas_cumprod_prev

    def timesteps(self, steps: int | None = None) -> tuple[int, ...]:
        """Descending original timesteps visited by a sampler with ``steps`` steps (see :func:`samplers.respace`)."""
        return samplers.respace(self.num_steps, steps)

    def _check_t(self, t: Tensor, batch: int) -> Tensor:
        if not isinstance(t, Tensor) or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"t must be an integer tensor of timesteps, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.shape != (batch,):
            raise ValueError(f"t must have shape (B,) = ({batch},), got {tuple(t.shape)}")
        if batch and (int(t.min()) < 0 or int(t.max()) >= self.num_steps):
            raise ValueError(f"t must lie in 0..{self.num_steps - 1}, got values in {int(t.min())}..{int(t.max())}")
        return t.long()

    def _gather(self, table: Tensor, t: Tensor) -> Tensor:
        return table.to(t.device)[t]

    def sample_timesteps(
        self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> Tensor:
        """int64 ``(batch,)`` training timesteps in ``0..T-1``: uniform, except that each is ``T - 1`` with
        probability ``last_step_fraction`` (the step a one-step sampler evaluates; 0: uniform, the paper's)."""
        t = torch.randint(0, self.num_steps, (batch,), generator=generator, device=device)
        if self.last_step_fraction > 0:
            # Always drawn when the option is on, so that the stream of the forward noise does not depend on it.
            last = torch.rand(batch, generator=generator, device=device) < self.last_step_fraction
            t = torch.where(last, torch.full_like(t, self.num_steps - 1), t)
        return t

    def q_sample(
        self, y0: Tensor, prior: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draws ``y_t ~ Bernoulli(abar_t y0 + (1 - abar_t) p)`` as ``y0 XOR eps``.

        The flips are ``eps ~ Bernoulli((1 - abar_t) |p - y0|)``.

        Args:
            y0: float32 ``(B, K, H, W)`` in {0, 1}.
            prior: float32 ``(B, K, H, W)`` in [0, 1].
            t: int64 ``(B,)`` in ``0..T-1``.
            generator: optional torch generator on y0's device.

        Returns:
            ``(y_t, eps)``, y0's dtype and shape, in {0, 1}.
        """
        _check_pair(y0, prior)
        t = self._check_t(t, y0.shape[0])
        return q_sample(y0, prior, self._gather(self.alphas_cumprod, t), generator)

    def posterior(self, y_t: Tensor, y0: Tensor, prior: Tensor, t: Tensor) -> Tensor:
        """``P(y_{t-1} = 1 | y_t, y0, p)`` (Eq. 7) per sample timestep, in the inputs' promoted dtype.

        Args:
            y_t: float ``(B, K, H, W)`` in {0, 1}.
            y0: float, y_t's shape, in [0, 1] (the true mask or a calibrated estimate).
            prior: float, y_t's shape, in [0, 1].
            t: int64 ``(B,)``.
        """
        _check_pair(y_t, prior, "y_t", "prior")
        _check_pair(y_t, y0, "y_t", "y0")
        t = self._check_t(t, y_t.shape[0])
        return posterior_mean(y_t, y0, prior, self._gather(self.alphas, t), self._gather(self.alphas_cumprod_prev, t))

    @staticmethod
    def calibrate(y_t: Tensor, eps_hat: Tensor) -> Tensor:
        """``y0_hat = |y_t - eps_hat|`` (Eq. 10), y_t's shape."""
        return calibrate(y_t, eps_hat)

    def training_loss(
        self,
        denoise_fn: DenoiseFn,
        y0: Tensor,
        prior: Tensor,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DiffusionLoss:
        """``L_Diff`` (Eq. 11-13) for one batch, with a single ``denoise_fn`` call.

        Args:
            denoise_fn: ``(y_t, t) -> eps_hat`` in [0, 1], y0's shape.
            y0: float32 ``(B, K, H, W)`` one-hot in {0, 1}.
            prior: float32 ``(B, K, H, W)`` in (0, 1); gradients flow into it through the posteriors.
            t: int64 ``(B,)`` timesteps; drawn uniformly (with ``generator``) when None.
            generator: optional torch generator for t and the forward noise.

        Returns:
            :class:`DiffusionLoss` (total, kl, focal) of scalar tensors; samples with t = 0 use the
            decoder NLL instead of the KL.
        """
        _check_pair(y0, prior)
        if t is None:
            t = self.sample_timesteps(y0.shape[0], y0.device, generator)
        t = self._check_t(t, y0.shape[0])
        y_t, eps = q_sample(y0, prior, self._gather(self.alphas_cumprod, t), generator)
        eps_hat = denoise_fn(y_t, t)
        if not isinstance(eps_hat, Tensor) or eps_hat.shape != y0.shape:
            shape = tuple(eps_hat.shape) if isinstance(eps_hat, Tensor) else type(eps_hat).__name__
            raise ValueError(f"denoise_fn must return eps_hat of the shape of y0 {tuple(y0.shape)}, got {shape}")
        return diffusion_loss(
            eps_hat,
            y_t,
            eps,
            y0,
            prior,
            self._gather(self.alphas, t),
            self._gather(self.alphas_cumprod_prev, t),
            t == 0,
            self.focal_gamma,
            self.focal_weight,
            self.first_step_term,
            self.model_posterior,
            self.dice_weight,
        )

    def sample(
        self,
        denoise_fn: DenoiseFn,
        prior: Tensor,
        steps: int | None = None,
        sampler: Sampler | str = Sampler.DDIM,
        samples: int = 1,
        seed: int = 0,
    ) -> Tensor:
        """Refined continuous map ``y0_hat``: ensemble mean of ``samples`` reverse runs (no gradients).

        Args:
            denoise_fn: ``(y_t, t) -> eps_hat``, called once per visited timestep and ensemble member.
            prior: float32 ``(B, K, H, W)`` in [0, 1]; the start is ``y ~ Bernoulli(prior)``.
            steps: timesteps visited (None: all T; fewer respaces, see :meth:`timesteps`).
            sampler: ``"ddim"`` (Alg. 2) or ``"ancestral"`` (posterior of Eq. 7).
            samples: ensemble size >= 1.
            seed: counter RNG seed; it fully determines the result on every backend.

        Returns:
            float32 ``(B, K, H, W)`` in [0, 1].
        """
        return samplers.sample(denoise_fn, prior, self.schedule, steps, sampler, samples, seed, self.model_posterior)

    @staticmethod
    def to_mask(y0_hat: Tensor) -> Tensor:
        """float32 ``(B, K, H, W)`` mask in {0, 1}: threshold 0.5 for K = 1, one-hot argmax for K > 1."""
        return samplers.to_mask(y0_hat)
