"""Op handles for fvcore's ``FlopCountAnalysis`` (jit-trace based).

In a jit trace the library's ops appear as nodes of kind ``hidiff::binary_conv2d`` etc. (and
the binary matmul marker as ``hidiff_markers::binary_matmul``). fvcore counts one MAC as one
flop, and its handles may return a ``Counter`` with several keys, all summed by ``total()``. The
handles here return, per op:

* ``{"<op>": MACs}`` for real multiply-accumulates (none of the library's ops has any),
* ``{"<op>.bops/64": BOPs / 64}`` for binary ones,

so ``total()`` is the paper's OPs (``MACs + BOPs / 64``), and :func:`split_counts` recovers
FLOPs and BOPs from ``by_operator()`` / ``by_module_and_operator()``. Element-wise work is not
reported. fvcore itself counts ``aten::_convolution``, ``linear``, ``matmul``, ``bmm``,
``addmm``, ``einsum`` as MACs (as :func:`~hidiff_kernels.counting.count` does);
:func:`flop_count_analysis` turns off its handles for normalisation, pooling and upsampling,
which are element-wise in this convention.

Like any trace, fvcore sees what ran: binary layers are priced right when they run their packed
kernels (eval mode; :func:`flop_count_analysis` traces under ``torch.no_grad()``). In training
mode their straight-through ``F.conv2d`` would be a real convolution to fvcore.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .core import BOPS_PER_OP, OP_RULES, OpRule
from .counter import _normalise_inputs

if TYPE_CHECKING:
    from fvcore.nn import FlopCountAnalysis

#: Suffix of the keys that hold ``BOPs / 64``.
BOPS_SUFFIX = ".bops/64"

# fvcore's default handles for element-wise work, which the paper's FLOPs leave out.
_ELEMENTWISE_DEFAULTS = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
    "aten::adaptive_avg_pool2d",
    "aten::grid_sampler",
)

Handle = Callable[[list[torch._C.Value], list[torch._C.Value]], "Counter[str]"]


def _value(value: torch._C.Value) -> Any:
    """A traced value as a rule argument: a tensor's shape, None, or the constant itself."""
    kind = value.type()
    if isinstance(kind, torch._C.TensorType):
        sizes = kind.sizes()
        if sizes is None:
            raise ValueError(f"the trace has no shape for tensor value {value.debugName()}")
        return tuple(sizes)
    if isinstance(kind, torch._C.NoneType):
        return None
    return value.toIValue()


def _handle(name: str, rule: OpRule) -> Handle:
    short = name.split("::")[1]

    def handle(inputs: list[torch._C.Value], outputs: list[torch._C.Value]) -> Counter[str]:
        shapes = [_value(v) for v in outputs]
        out_shape = shapes[0] if len(shapes) == 1 else tuple(shapes)
        cost = rule(*(_value(v) for v in inputs), out_shape=out_shape)
        counts: Counter[str] = Counter()
        if cost.macs:
            counts[short] = cost.macs
        if cost.bops:
            counts[short + BOPS_SUFFIX] = cost.bops / BOPS_PER_OP
        return counts

    return handle


def _elementwise_handle(inputs: list[torch._C.Value], outputs: list[torch._C.Value]) -> Counter[str]:
    """Reports nothing: element-wise work is not part of FLOPs or OPs."""
    return Counter()


def fvcore_handles() -> dict[str, Handle]:
    """``{"hidiff::op": handle}`` for every op with a rule, for ``FlopCountAnalysis.set_op_handle``."""
    return {name: _handle(name, rule) for name, rule in OP_RULES.items()}


def split_counts(counts: Mapping[str, float]) -> tuple[float, float]:
    """``(FLOPs, BOPs)`` from an fvcore per-operator counter (``by_operator()``)."""
    bops = sum(v for k, v in counts.items() if k.endswith(BOPS_SUFFIX)) * BOPS_PER_OP
    flops = sum(v for k, v in counts.items() if not k.endswith(BOPS_SUFFIX))
    return flops, bops


def flop_count_analysis(model: nn.Module, inputs: Tensor | tuple | list) -> FlopCountAnalysis:
    """A ``FlopCountAnalysis`` with these handles, traced at once under ``torch.no_grad()``.

    Args:
        model: the model, in the mode to count (eval for the packed binary kernels).
        inputs: a tensor or a tuple/list of positional arguments.

    Returns:
        The analysis: ``total()`` in OPs (MACs + BOPs / 64), ``by_operator()`` keys as in the module
        doc. fvcore's logged warnings about unsupported ops (the element-wise ones) and uncalled
        modules are off; it filters tracer warnings itself, and the deprecation warnings of its
        import are ignored.
    """
    with warnings.catch_warnings():
        # fvcore scripts helper functions at import; torch deprecates torch.jit.script.
        warnings.simplefilter("ignore", DeprecationWarning)
        from fvcore.nn import FlopCountAnalysis

    args, _ = _normalise_inputs(inputs, None)
    analysis = FlopCountAnalysis(model, args)
    pairs: list[Any] = []
    for name, handle in fvcore_handles().items():
        pairs += [name, handle]
    # A handle of None would only mark the op ignored: fvcore would still run its default handle.
    for name in _ELEMENTWISE_DEFAULTS:
        pairs += [name, _elementwise_handle]
    analysis.set_op_handle(*pairs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        analysis.total()  # traces now, so that the trace runs without autograd
    return analysis
