"""Noise schedules of the Bernoulli diffusion process (HiDiff paper Sec. II-B.1).

Timestep convention
-------------------
Timesteps are integers ``t = 0 .. T-1``. The continuous schedule ``abar(s)`` is defined on
``s in [0, T]`` with ``abar(0) = 1``; step ``t`` goes from ``s = t`` to ``s = t + 1``:

- ``betas[t] = min(1 - abar(t + 1) / abar(t), 0.999)``;
- ``alphas[t] = 1 - betas[t]``;
- ``alphas_cumprod[t] = prod_{i <= t} alphas[i]``, which equals ``abar(t + 1)`` wherever no beta was
  clipped (with both cosine schedules only the last step, ``t = T - 1``, is clipped, because
  ``abar(T) = 0``: there ``alphas_cumprod[T-1] = 0.001 * abar(T - 1)``);
- ``alphas_cumprod_prev[t] = alphas_cumprod[t - 1]`` with ``alphas_cumprod_prev[0] = 1``
  (``abar_{-1} = 1``: the clean mask ``y0``).

So the state ``y_t`` at index ``t`` has the marginal ``Bernoulli(alphas_cumprod[t] * y0 + (1 -
alphas_cumprod[t]) * p)``; index 0 is already (slightly) noisy and index ``T - 1`` is almost pure
prior noise. This is the convention of the public DDPM code bases (``betas_for_alpha_bar``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "MAX_BETA",
    "SCHEDULES",
    "BernoulliSchedule",
    "continuous_alpha_bar",
    "make_betas",
    "make_schedule",
]

SCHEDULES = ("cosine", "cosine-unsquared")
MAX_BETA = 0.999
# Offset of the cosine schedule (Nichol & Dhariwal 2021): keeps beta_0 away from 0.
_COSINE_OFFSET = 0.008


def _check_schedule_args(name: str, num_steps: int) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


def continuous_alpha_bar(name: str, s: Tensor | float, num_steps: int) -> Tensor:
    """The continuous schedule ``abar(s)`` on ``s in [0, num_steps]``, normalised so that ``abar(0) = 1``.

    - ``"cosine"`` (the paper): ``cos(((s/T + 0.008) / 1.008) * pi/2)^2 / cos((0.008 / 1.008) * pi/2)^2``.
    - ``"cosine-unsquared"`` (the public code's default): the same without the squares.

    Args:
        name: one of :data:`SCHEDULES`.
        s: float positions, any shape (converted to float64).
        num_steps: T >= 1.

    Returns:
        float64 tensor of ``s``'s shape.
    """
    _check_schedule_args(name, num_steps)
    s = torch.as_tensor(s, dtype=torch.float64)
    power = 2 if name == "cosine" else 1
    f = torch.cos((s / num_steps + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * (math.pi / 2)) ** power
    f0 = math.cos(_COSINE_OFFSET / (1 + _COSINE_OFFSET) * (math.pi / 2)) ** power
    return f / f0


def make_betas(name: str, num_steps: int) -> Tensor:
    """``betas[t] = min(1 - abar(t + 1) / abar(t), 0.999)`` for ``t = 0 .. T-1``.

    Returns:
        float64 tensor ``(T,)``.
    """
    alpha_bar = continuous_alpha_bar(name, torch.arange(num_steps + 1, dtype=torch.float64), num_steps)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=MAX_BETA)


@dataclass(frozen=True)
class BernoulliSchedule:
    """All schedule tensors of one diffusion process, float64 ``(T,)`` on the CPU.

    Attributes:
        name: the schedule name.
        num_steps: T.
        betas: ``beta_t``.
        alphas: ``alpha_t = 1 - beta_t``.
        alphas_cumprod: ``abar_t = prod_{i <= t} alpha_i``.
        alphas_cumprod_prev: ``abar_{t-1}``, with ``abar_{-1} = 1``.
    """

    name: str
    num_steps: int
    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor


def make_schedule(name: str = "cosine", num_steps: int = 10) -> BernoulliSchedule:
    """Builds the float64 schedule tensors (see the module docstring for the timestep convention).

    Raises:
        ValueError: unknown ``name`` or ``num_steps < 1``.
    """
    betas = make_betas(name, num_steps)
    alphas = 1 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return BernoulliSchedule(name, num_steps, betas, alphas, alphas_cumprod, alphas_cumprod_prev)
