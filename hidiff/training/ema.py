"""Exponential moving average of a module's weights (the refiner's EMA, decay 0.9999 in the paper)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Keeps ``shadow = decay * shadow + (1 - decay) * param`` for every floating-point parameter of a module.

    Floating-point buffers (e.g. BatchNorm running statistics) and integer buffers (``num_batches_tracked``) are
    copied as they are: they are statistics, not weights, and averaging them would lag twice. The shadow lives on the
    module's device in the parameters' dtype.

    Args:
        module: the module to track; its current weights initialise the shadow.
        decay: the decay in [0, 1).
        warmup: when True the n-th update (n = 0, 1, ...) uses ``min(decay, (1 + n) / (10 + n))``, so the average
            forgets the random initialisation early in training.
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: tensor.detach().clone() for name, tensor in module.state_dict(keep_vars=False).items()
        }

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    def _check_keys(self, module: nn.Module) -> dict[str, torch.Tensor]:
        state = module.state_dict(keep_vars=True)
        if state.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - state.keys()) + sorted(state.keys() - self.shadow.keys())
            raise ValueError(f"module does not match the EMA: differing keys {missing[:5]}")
        return state

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Moves the shadow towards the module's current weights (call after each optimiser step)."""
        decay = self.current_decay()
        params = {name for name, _ in module.named_parameters()}
        for name, value in self._check_keys(module).items():
            shadow = self.shadow[name]
            if name in params and shadow.is_floating_point():
                shadow.lerp_(value.detach().to(shadow.dtype), 1.0 - decay)
            else:
                shadow.copy_(value.detach())
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrites the module's weights and buffers with the shadow."""
        # In-place copies through the tensors themselves (not ``.data``) move their version counters, which is how
        # the binary layers notice that their cached packed weights are stale.
        for name, value in self._check_keys(module).items():
            value.copy_(self.shadow[name])

    @contextlib.contextmanager
    def apply_to(self, module: nn.Module) -> Iterator[nn.Module]:
        """Context manager: the module holds the EMA weights inside the block and its own weights again after it."""
        backup = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
        self.copy_to(module)
        try:
            yield module
        finally:
            module.load_state_dict(backup)

    def state_dict(self) -> dict[str, Any]:
        """Shadow tensors and counters (torch.load(weights_only=True)-safe)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": {name: tensor.clone() for name, tensor in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict`; the shadow keys must match the tracked module."""
        shadow = state["shadow"]
        if shadow.keys() != self.shadow.keys():
            raise ValueError("EMA state does not match the tracked module's keys")
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for name, tensor in shadow.items():
            self.shadow[name].copy_(tensor)
