"""Marker op and module for matrix products of binary-valued operands.

A product of two +-1 (or {0, 1}) float tensors is an XNOR-popcount (AND-popcount) product on
binary hardware, so it costs BOPs, not FLOPs. Nothing in a plain ``a @ b`` tells a counter that
its operands are binary, so code that multiplies binary operands calls :func:`binary_matmul`
(or holds a :class:`Matmul` module): the op ``hidiff_markers::binary_matmul`` computes exactly
``torch.matmul(a, b)`` in float, and is visible as itself to every counter (the dispatch-based
:func:`~hidiff_kernels.counting.count` and ``FlopCounterMode``, fvcore's jit trace), while the
module is what thop, which sees only modules, can hook.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NAMESPACE = "hidiff_markers"


def _check_matmul_args(a: Tensor, b: Tensor) -> None:
    if not (a.dtype.is_floating_point and b.dtype.is_floating_point):
        raise TypeError(f"a and b must be floating tensors, got {a.dtype} and {b.dtype}")
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"a and b must have at least 2 dims (..., M, K) and (..., K, N), got {a.dim()} and {b.dim()}")
    # Equal batch dims (no broadcasting) keep the backward a plain pair of matmuls.
    if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"a (..., M, K) and b (..., K, N) must have the same batch dims and matching K, "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )


@torch.library.custom_op(f"{NAMESPACE}::binary_matmul", mutates_args=())
def _binary_matmul_op(a: Tensor, b: Tensor) -> Tensor:
    _check_matmul_args(a, b)
    return torch.matmul(a, b)


@_binary_matmul_op.register_fake
def _binary_matmul_fake(a: Tensor, b: Tensor) -> Tensor:
    _check_matmul_args(a, b)
    return a.new_empty((*a.shape[:-1], b.shape[-1]), dtype=torch.result_type(a, b))


def _binary_matmul_setup(ctx, inputs, output) -> None:
    a, b = inputs
    ctx.save_for_backward(a, b)


def _binary_matmul_backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
    a, b = ctx.saved_tensors
    grad_a = grad @ b.transpose(-1, -2) if ctx.needs_input_grad[0] else None
    grad_b = a.transpose(-1, -2) @ grad if ctx.needs_input_grad[1] else None
    return grad_a, grad_b


_binary_matmul_op.register_autograd(_binary_matmul_backward, setup_context=_binary_matmul_setup)


def binary_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``torch.matmul(a, b)`` for operands whose values are binary (+-1 or {0, 1}), counted as BOPs.

    Args:
        a: float ``(..., M, K)``.
        b: float ``(..., K, N)`` with the same batch dims ``...`` as ``a`` (no broadcasting).

    Returns:
        ``(..., M, N)`` in the promoted dtype: the same values and gradients as ``a @ b``, also
        under autocast (the operands are cast to the autocast dtype, as ``matmul`` does). The
        values are not checked to be binary (that would cost a pass over both operands).
    """
    device_type = a.device.type
    if torch.is_autocast_enabled(device_type):
        # A custom op is outside autocast: cast here, so that the backward sees one dtype too.
        dtype = torch.get_autocast_dtype(device_type)
        a, b = (t.to(dtype) if t.dtype != torch.float64 else t for t in (a, b))
    return torch.ops.hidiff_markers.binary_matmul(a, b)


class Matmul(nn.Module):
    """``a @ b`` as a module, so that module-based counters (thop) see it; binary or real.

    Args:
        binary: the operands are binary-valued (:func:`binary_matmul`, counted as BOPs), or real
            (``torch.matmul``, counted as MACs). Both forms have the same (empty) state.

    Shapes: ``a (..., M, K)``, ``b (..., K, N)`` -> ``(..., M, N)``; the binary form needs equal
    batch dims.
    """

    def __init__(self, binary: bool) -> None:
        super().__init__()
        self.binary = bool(binary)

    def extra_repr(self) -> str:
        return f"binary={self.binary}"

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return binary_matmul(a, b) if self.binary else torch.matmul(a, b)
