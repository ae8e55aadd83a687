"""Polynomial ("poly") learning-rate decay: lr_i = lr * (1 - i / iterations) ** power (power 0.9 in the paper)."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["PolyLambda", "poly_scheduler"]


class PolyLambda:
    """The multiplicative factor ``(1 - min(step, iterations) / iterations) ** power`` of the base learning rate.

    A callable object rather than a closure so that ``LambdaLR.state_dict()`` records its attributes (and a
    checkpoint written by it stays loadable with ``weights_only=True``).

    Args:
        iterations: the number of optimiser steps over which the rate decays to 0 (> 0).
        power: the exponent (>= 0; 0 keeps the rate constant).
    """

    def __init__(self, iterations: int, power: float = 0.9) -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations <= 0:
            raise ValueError(f"iterations must be a positive int, got {iterations!r}")
        if power < 0:
            raise ValueError(f"power must be >= 0, got {power}")
        self.iterations = iterations
        self.power = float(power)

    def __call__(self, step: int) -> float:
        return (1.0 - min(step, self.iterations) / self.iterations) ** self.power


def poly_scheduler(optimizer: torch.optim.Optimizer, iterations: int, power: float = 0.9) -> LambdaLR:
    """A LambdaLR applying :class:`PolyLambda` to every parameter group; call ``step()`` once per optimiser step."""
    return LambdaLR(optimizer, PolyLambda(iterations, power))
