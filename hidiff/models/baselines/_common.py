"""Argument checks shared by the baseline networks."""

from __future__ import annotations

from torch import Tensor


def check_positive_int(name: str, value: object) -> int:
    """Returns ``value`` if it is a positive int (bools rejected), else raises ``ValueError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_map(name: str, x: object, channels: int, size: int | None = None) -> Tensor:
    """Checks that ``x`` is a float ``(B, channels, H, W)`` tensor (with ``H = W = size`` when given).

    Raises:
        ValueError: naming ``name`` and the shape it got.
    """
    shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
        raise ValueError(f"{name} must be a float (B, {channels}, H, W) tensor, got {shape}")
    if size is not None and tuple(x.shape[2:]) != (size, size):
        raise ValueError(f"{name} must be {size}x{size}, got {x.shape[2]}x{x.shape[3]}")
    return x


def check_timesteps(t: object, batch: int) -> Tensor:
    """Checks that ``t`` is an integer ``(batch,)`` tensor of diffusion timesteps."""
    if not isinstance(t, Tensor) or t.shape != (batch,) or t.is_floating_point() or t.is_complex():
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"t must be an integer ({batch},) tensor of timesteps, got {shape}")
    return t
