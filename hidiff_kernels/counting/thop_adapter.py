"""Rules for thop (``thop.profile(model, inputs, custom_ops=...)``), which counts modules, not ops.

thop keeps one number per module, ``total_ops``, in MACs for its built-in rules (``nn.Conv2d``,
``nn.Linear``, ...). The rules here report the paper's OPs in the same unit:
``MACs + BOPs / 64`` (element-wise work is 0):

* :class:`~hidiff_kernels.nn.BinaryConv2d`, ``BinaryLinear`` and their subclasses:
  ``BOPs / 64`` of their packed path (the same layer rule as
  :func:`~hidiff_kernels.counting.count`, in either mode);
* :class:`~hidiff_kernels.counting.markers.Matmul`: ``BOPs / 64`` when binary, MACs when real.

thop looks rules up by exact type, so :func:`thop_custom_ops` lists the subclasses found in the
model. TimeBinarize and TimeActivation need no rule: their own work is element-wise (0 OPs) and
their only MACs are those of their child ``nn.Linear``, which thop counts itself. A rule for them
would hide those children (thop does not descend into a module that has a rule), and
``TimeBinarize.threshold`` runs outside the module's forward. thop sees modules only: a library
op called as a function (``bernoulli_step``, or ``binary_conv2d_fused`` outside a module with a
rule) is invisible to it; :func:`op_units` prices such calls in thop's unit.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from hidiff_kernels.nn import BinaryConv2d, BinaryLinear

from .core import OP_RULES, OpCost, OpRule, binary_matmul_rule, matmul_cost, numel
from .counter import _normalise_inputs, layer_cost
from .markers import Matmul

Hook = Callable[[nn.Module, tuple, Any], None]

# thop's buffers, registered on every module during a profile.
_THOP_BUFFERS = ("total_ops", "total_params")


def thop_units(cost: OpCost) -> float:
    """``cost`` in thop's unit: ``MACs + BOPs / 64``."""
    return cost.ops


def op_units() -> dict[str, Callable[..., float]]:
    """``{"hidiff::op": units}``: each op's cost in thop's unit, from its arguments with tensors as
    shapes and ``out_shape`` (to add functional calls that thop cannot see)."""

    def units(rule: OpRule) -> Callable[..., float]:
        return lambda *args, out_shape, **kwargs: thop_units(rule(*args, out_shape=out_shape, **kwargs))

    return {name: units(rule) for name, rule in OP_RULES.items()}


def _add(module: nn.Module, value: float) -> None:
    module.total_ops += torch.tensor([value], dtype=torch.float64)


def _binary_layer_hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
    _add(module, thop_units(layer_cost(module, inputs, output)))


def _matmul_hook(module: Matmul, inputs: tuple, output: Tensor) -> None:
    a, b = (tuple(t.shape) for t in inputs)
    if module.binary:
        cost = binary_matmul_rule(a, b, out_shape=tuple(output.shape))
    else:
        cost = matmul_cost(numel(output.shape[:-2]), a[-2], a[-1], b[-1])
    _add(module, thop_units(cost))


def thop_custom_ops(model: nn.Module) -> dict[type[nn.Module], Hook]:
    """``custom_ops`` for ``thop.profile``: a rule for every binary layer and Matmul type in ``model``."""
    rules: dict[type[nn.Module], Hook] = {}
    for module in model.modules():
        if isinstance(module, (BinaryConv2d, BinaryLinear)):
            rules[type(module)] = _binary_layer_hook
        elif isinstance(module, Matmul):
            rules[type(module)] = _matmul_hook
    return rules


@contextlib.contextmanager
def _quiet_thop() -> Iterator[None]:
    """thop's import runs deprecated distutils version checks (its prints are off: verbose=False)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def thop_profile(model: nn.Module, inputs: Tensor | tuple | list) -> float:
    """Runs ``thop.profile`` with :func:`thop_custom_ops`, quietly, and returns its total in OPs.

    thop switches the model to eval mode (binary layers then run their packed kernels) and back,
    and runs under ``torch.no_grad()``. The ``total_ops`` / ``total_params`` buffers thop adds to
    every module (and leaves on modules without a rule) are removed.

    Args:
        model: the model.
        inputs: a tensor or a tuple of positional arguments.

    Returns:
        ``MACs + BOPs / 64`` of the modules thop sees (see the module doc).
    """
    with _quiet_thop():
        import thop

        args, _ = _normalise_inputs(inputs, None)
        already = {m for m in model.modules() if any(b in m._buffers for b in _THOP_BUFFERS)}
        if already:
            raise ValueError(f"model already has thop buffers ({', '.join(_THOP_BUFFERS)}) on {len(already)} modules")
        try:
            total, _ = thop.profile(model, args, custom_ops=thop_custom_ops(model), verbose=False)
        finally:
            for module in model.modules():
                for name in _THOP_BUFFERS:
                    module._buffers.pop(name, None)
    return float(total)
