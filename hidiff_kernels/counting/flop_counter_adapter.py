"""Formulas for ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode counts FLOPs as 2 per real MAC. Its formulas return one number per op, so for
the ops of this library (and the binary matmul marker) they return ``2 * OPs = 2 * MACs +
BOPs / 32``: a binary MAC counts 1/64 of a real one, as in the paper, and totals stay comparable
with the aten ops FlopCounterMode counts itself. Element-wise work is not reported (0).

Two ways to use them, neither touching global state at import:

* :func:`flop_counter_mode` (or ``FlopCounterMode(custom_mapping=flop_formulas())``);
* :func:`register_flop_formulas`, which registers them in torch's global registry (idempotent),
  so every ``FlopCounterMode`` sees them.

FlopCounterMode prices ops, not layers: a binary layer is priced right only when it runs its
packed kernels (eval mode under ``torch.no_grad()``); in training mode its straight-through
``F.conv2d`` is a real convolution to FlopCounterMode. :func:`~hidiff_kernels.counting.count`
prices binary layers in both modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter

from . import markers  # noqa: F401  (defines the marker op the formulas refer to)
from .core import BOPS_PER_OP, OP_RULES, OpCost, OpRule

#: FlopCounterMode's FLOPs per real MAC.
FLOPS_PER_MAC = 2


def flop_units(cost: OpCost) -> int | float:
    """``cost`` in FlopCounterMode's units: ``2 * (macs + bops / 64)`` (an int when integral)."""
    value = FLOPS_PER_MAC * cost.macs + FLOPS_PER_MAC * cost.bops / BOPS_PER_OP
    return int(value) if float(value).is_integer() else value


def _packet(qualified_name: str) -> torch._ops.OpOverloadPacket:
    namespace, name = qualified_name.split("::")
    return getattr(getattr(torch.ops, namespace), name)


def _formula(rule: OpRule) -> Callable[..., int | float]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int | float:
        return flop_units(rule(*args, out_shape=out_shape, **kwargs))

    formula.__name__ = f"{rule.__name__}_flops"
    return formula


def flop_formulas() -> dict[torch._ops.OpOverloadPacket, Callable[..., int | float]]:
    """``{op packet: formula}`` for every op with a rule, for ``FlopCounterMode(custom_mapping=...)``.

    Each formula takes the op's arguments with tensors as shapes and ``out_shape`` (what
    FlopCounterMode passes) and returns ``2 * MACs + BOPs / 32``.
    """
    return {_packet(name): _formula(rule) for name, rule in OP_RULES.items()}


def register_flop_formulas() -> None:
    """Registers :func:`flop_formulas` in torch's global FlopCounterMode registry.

    Idempotent: ops that already have a formula (from an earlier call, or from elsewhere) keep it.
    """
    for packet, formula in flop_formulas().items():
        if packet not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(packet)(formula)


def flop_counter_mode(**kwargs: Any) -> flop_counter.FlopCounterMode:
    """A ``FlopCounterMode`` with these formulas and without the table printed on exit.

    Args:
        kwargs: passed to ``FlopCounterMode`` (``depth``; ``display`` to print the table;
            ``custom_mapping`` entries override the formulas here).
    """
    kwargs.setdefault("display", False)
    kwargs["custom_mapping"] = {**flop_formulas(), **kwargs.get("custom_mapping", {})}
    return flop_counter.FlopCounterMode(**kwargs)
