"""``count(model, inputs)``: FLOPs, BOPs, element-wise ops, parameters and storage of one forward.

How it counts: one forward pass under ``torch.no_grad()`` inside a ``TorchDispatchMode`` that
prices every op with the rules of :mod:`~hidiff_kernels.counting.core` (``hidiff::`` ops and the
binary matmul marker) and :mod:`~hidiff_kernels.counting.aten_rules` (aten ops), plus module
hooks that keep the stack of running modules for the per-module breakdown.

Binary layers (:class:`~hidiff_kernels.nn.BinaryConv2d`, ``BinaryLinear`` and subclasses) are
priced by their layer rule (the BOPs and element-wise work of their packed path) and every op
they run is ignored: in training mode they run a float straight-through simulation whose
``F.conv2d`` on +-1 tensors must not count as FLOPs, in eval mode their packed kernels. Either
way they cost the same, so a model counts the same in both modes (up to what the mode changes
outside the binary layers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from hidiff_kernels.nn import BinaryConv2d, BinaryLinear

from .aten_rules import ATEN_RULES, elementwise_elements, is_elementwise
from .core import BOPS_PER_OP, OP_RULES, OpCost, OpRule, binary_conv_layer_cost, binary_linear_layer_cost
from .storage import binary_layers, parameter_storage


@dataclass(frozen=True)
class Counts:
    """Costs of a forward pass (or of one module within it) and the storage of the parameters.

    Attributes:
        flops: real multiply-accumulates (the paper's FLOPs; bias adds are not MACs).
        bops: binary multiply-accumulates.
        elementwise: element-wise operations (never part of ``flops`` or ``ops``).
        params: parameter elements, each shared parameter once.
        storage_bits: 1 bit per binary weight, 32 per other parameter (buffers not counted).
        by_module: the same for every module by qualified name (``""`` is the model), in
            ``named_modules`` order; empty inside the per-module entries. A module's costs include
            everything run while it was running (its children's included).
    """

    flops: int
    bops: int
    elementwise: int
    params: int
    storage_bits: int
    by_module: Mapping[str, Counts] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ops(self) -> float:
        """``flops + bops / 64`` (in FLOPs)."""
        return self.flops + self.bops / BOPS_PER_OP

    @property
    def storage_bytes(self) -> float:
        """``storage_bits / 8``."""
        return self.storage_bits / 8

    def table(self, max_depth: int | None = None) -> str:
        """:attr:`by_module` as a text table, see :func:`format_table`."""
        return format_table(self, max_depth)


def format_table(counts: Counts, max_depth: int | None = None) -> str:
    """A text table of the per-module breakdown: one row per module, indented by depth.

    Args:
        counts: the result of :func:`count`.
        max_depth: omit modules nested deeper than this (0: the model's row only); None: all.

    Returns:
        Columns: module, FLOPs (MACs), BOPs, OPs, element-wise ops, params, storage in bytes.
    """
    header = ("module", "FLOPs", "BOPs", "OPs", "elementwise", "params", "storage (B)")
    rows = [header]
    for name, c in counts.by_module.items():
        depth = name.count(".") + 1 if name else 0
        if max_depth is not None and depth > max_depth:
            continue
        label = "  " * depth + (name.rsplit(".", 1)[-1] if name else "(model)")
        rows.append(
            (
                label,
                f"{c.flops:,}",
                f"{c.bops:,}",
                f"{c.ops:,.0f}",
                f"{c.elementwise:,}",
                f"{c.params:,}",
                f"{c.storage_bytes:,.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def layer_cost(module: nn.Module, args: tuple, output: Any) -> OpCost | None:
    """The cost of a binary layer's call (its packed path), or None if ``module`` is no binary layer.

    Args:
        module: the called module.
        args: its positional arguments (the input first).
        output: its output tensor.
    """
    if isinstance(module, BinaryConv2d):
        bias = module.bias is not None
        return binary_conv_layer_cost(
            tuple(args[0].shape), tuple(output.shape), tuple(module.weight.shape), module.groups, bias=bias
        )
    if isinstance(module, BinaryLinear):
        return binary_linear_layer_cost(tuple(args[0].shape), module.out_features, bias=module.bias is not None)
    return None


def _shape_of(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, Tensor) else value


def op_rule(func: torch._ops.OpOverload) -> OpRule | None:
    """The rule of ``func`` from :data:`~.core.OP_RULES` or :data:`~.aten_rules.ATEN_RULES`, if any."""
    name = func._schema.name
    return OP_RULES.get(name) or ATEN_RULES.get(name)


class _Tally:
    """Accumulates costs for the modules on the call stack (each distinct module once per op)."""

    def __init__(self, names: list[str]) -> None:
        self.costs: dict[str, OpCost] = {name: OpCost() for name in names}
        self.stack: list[str] = []
        self.inside_binary_layer = 0

    def add(self, cost: OpCost) -> None:
        for name in set(self.stack):
            self.costs[name] = self.costs[name] + cost


class _CountingMode(TorchDispatchMode):
    """Prices every op reaching the dispatcher, except inside binary layers (priced by their rule)."""

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.tally.inside_binary_layer:
            return func(*args, **kwargs)
        rule = op_rule(func)
        if rule is None and not is_elementwise(func):
            # Composite ops without a rule of their own are counted through their parts.
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if rule is not None:
            shapes_args, shapes_kwargs, out_shape = tree_map(_shape_of, (args, kwargs, out))
            self.tally.add(rule(*shapes_args, out_shape=out_shape, **shapes_kwargs))
        else:
            self.tally.add(OpCost(elementwise=elementwise_elements(func, args, out)))
        return out


@contextlib.contextmanager
def _module_hooks(model: nn.Module, names: dict[nn.Module, str], tally: _Tally) -> Iterator[None]:
    def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
        tally.stack.append(names[module])
        if isinstance(module, (BinaryConv2d, BinaryLinear)):
            tally.inside_binary_layer += 1

    def after(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        # Binary layers take their input as the first argument, named x.
        cost = layer_cost(module, args or (kwargs.get("x"),), output)
        if cost is not None:
            tally.inside_binary_layer -= 1
            if not tally.inside_binary_layer:
                tally.add(cost)
        tally.stack.pop()

    handles = []
    try:
        for module in names:
            handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(module.register_forward_hook(after, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _normalise_inputs(inputs: Tensor | tuple | list, kwargs: Mapping[str, Any] | None) -> tuple[tuple, dict]:
    if isinstance(inputs, Tensor):
        args: tuple = (inputs,)
    elif isinstance(inputs, (tuple, list)):
        args = tuple(inputs)
    else:
        raise TypeError(f"inputs must be a tensor or a tuple/list of positional arguments, got {type(inputs).__name__}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs must be a mapping of keyword arguments, got {type(kwargs).__name__}")
    return args, dict(kwargs or {})


@contextlib.contextmanager
def _preserved_state(model: nn.Module, train: bool | None) -> Iterator[None]:
    """Sets the mode for the count, restores the modes and buffers (BatchNorm statistics) after."""
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    if train is not None:
        model.train(train)
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def count(
    model: nn.Module,
    inputs: Tensor | tuple | list,
    kwargs: Mapping[str, Any] | None = None,
    *,
    train: bool | None = None,
) -> Counts:
    """Counts FLOPs (real MACs), BOPs, element-wise ops, parameters and storage of ``model(*inputs, **kwargs)``.

    Args:
        model: any module; binary layers are priced by their layer rule (see the module doc).
        inputs: a tensor (the single positional argument) or a tuple/list of positional arguments.
        kwargs: keyword arguments of the forward.
        train: run in training mode (True), eval mode (False) or the model's current modes (None).

    Returns:
        :class:`Counts` of the whole forward, with :attr:`Counts.by_module`. The forward runs once
        under ``torch.no_grad()``; the modules' training flags and all buffers (e.g. BatchNorm
        running statistics updated by a training-mode pass) are restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if train is not None and not isinstance(train, bool):
        raise TypeError(f"train must be True, False or None, got {train!r}")
    args, kwargs = _normalise_inputs(inputs, kwargs)
    names = {module: name for name, module in model.named_modules()}
    tally = _Tally(list(names.values()))
    with _preserved_state(model, train), torch.no_grad(), _module_hooks(model, names, tally):
        with _CountingMode(tally):
            model(*args, **kwargs)
    binary_weights = {id(layer.weight) for layer in binary_layers(model).values()}
    by_module = {}
    for module, name in names.items():
        cost = tally.costs[name]
        params, bits = parameter_storage(module, binary_weights)
        by_module[name] = Counts(cost.macs, cost.bops, cost.elementwise, params, bits)
    total = by_module[""]
    return Counts(total.flops, total.bops, total.elementwise, total.params, total.storage_bits, by_module)
