"""Cost rules for the aten ops of real-valued models, as a ``TorchDispatchMode`` sees them.

Same conventions as :mod:`hidiff_kernels.counting.core` (tensors as shapes, ``out_shape``).
Composite ops (``linear``, ``matmul``, ``einsum``, ``conv2d``, ``scaled_dot_product_attention``)
need no rule: they reach a dispatch mode as (or are decomposed into) the ops below. The fused
attention kernels are counted as attention; the math fallback as its ``bmm`` and softmax.

Element-wise ops are classified rather than listed one by one (see :func:`elementwise_elements`):
ops tagged ``pointwise`` cost one per output element, reductions one per input element,
normalisations and softmax one per input element, pooling and resampling one per output
element; views, copies, concatenation, indexing, factories and random draws are free.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves

from .core import OpCost, OpRule, Shape, attention_cost, conv_cost, matmul_cost, transposed_conv_cost


def convolution_rule(
    input: Shape,
    weight: Shape,
    bias: Shape | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    *rest: object,
    out_shape: Shape,
) -> OpCost:
    """``aten::convolution`` / ``aten::_convolution`` (any rank, groups, transposed)."""
    if transposed:
        return transposed_conv_cost(input, out_shape, weight, bias=bias is not None)
    return conv_cost(out_shape, weight, bias=bias is not None)


def mm_rule(input: Shape, mat2: Shape, *, out_shape: Shape) -> OpCost:
    """``(M, K) @ (K, N)``."""
    return matmul_cost(1, input[0], input[1], mat2[1])


def addmm_rule(input: Shape, mat1: Shape, mat2: Shape, *, out_shape: Shape, **scalars: object) -> OpCost:
    """``input + mat1 @ mat2`` (``nn.Linear`` with a bias): the product plus one add per output."""
    return matmul_cost(1, mat1[0], mat1[1], mat2[1], bias=True)


def bmm_rule(input: Shape, mat2: Shape, *, out_shape: Shape) -> OpCost:
    """``(B, M, K) @ (B, K, N)``."""
    return matmul_cost(input[0], input[1], input[2], mat2[2])


def baddbmm_rule(input: Shape, batch1: Shape, batch2: Shape, *, out_shape: Shape, **scalars: object) -> OpCost:
    """``input + batch1 @ batch2``."""
    return matmul_cost(batch1[0], batch1[1], batch1[2], batch2[2], bias=True)


def attention_rule(
    query: Shape, key: Shape, value: Shape, *rest: object, out_shape: object, **options: object
) -> OpCost:
    """The fused scaled-dot-product attention kernels: q ``(B, H, L, E)``, k ``(B, H, S, E)``,
    v ``(B, H, S, Ev)``."""
    return attention_cost(query, key, value)


ATEN_RULES: dict[str, OpRule] = {
    "aten::convolution": convolution_rule,
    "aten::_convolution": convolution_rule,
    "aten::mm": mm_rule,
    "aten::addmm": addmm_rule,
    "aten::bmm": bmm_rule,
    "aten::baddbmm": baddbmm_rule,
    "aten::_scaled_dot_product_flash_attention_for_cpu": attention_rule,
    "aten::_scaled_dot_product_flash_attention": attention_rule,
    "aten::_scaled_dot_product_efficient_attention": attention_rule,
    "aten::_scaled_dot_product_cudnn_attention": attention_rule,
}

# One op per input element.
_NORMALISATIONS = frozenset(
    {
        "aten::native_batch_norm",
        "aten::_native_batch_norm_legit",
        "aten::_native_batch_norm_legit_no_training",
        "aten::native_layer_norm",
        "aten::native_group_norm",
        "aten::_softmax",
        "aten::_log_softmax",
        "aten::_safe_softmax",
    }
)

# One op per output element.
_RESAMPLING = frozenset(
    {
        "aten::avg_pool1d",
        "aten::avg_pool2d",
        "aten::avg_pool3d",
        "aten::max_pool2d_with_indices",
        "aten::max_pool3d_with_indices",
        "aten::_adaptive_avg_pool2d",
        "aten::_adaptive_avg_pool3d",
        "aten::adaptive_max_pool2d",
        "aten::upsample_nearest1d",
        "aten::upsample_nearest2d",
        "aten::upsample_nearest3d",
        "aten::upsample_linear1d",
        "aten::upsample_bilinear2d",
        "aten::upsample_bicubic2d",
        "aten::upsample_trilinear3d",
        "aten::grid_sampler_2d",
    }
)

# Tagged pointwise, but a copy of the data, not arithmetic.
_COPIES = frozenset({"aten::clone"})


def _first_tensor(tree: object) -> Tensor | None:
    return next((leaf for leaf in tree_leaves(tree) if isinstance(leaf, Tensor)), None)


def is_elementwise(func: torch._ops.OpOverload) -> bool:
    """Whether :func:`elementwise_elements` counts ``func`` (decided by name and tags only)."""
    name = func._schema.name
    if name in _NORMALISATIONS or name in _RESAMPLING:
        return True
    if name in _COPIES:
        return False
    return torch.Tag.pointwise in func.tags or torch.Tag.reduction in func.tags


def elementwise_elements(func: torch._ops.OpOverload, args: object, out: object) -> int:
    """Element-wise operations of one call of ``func`` (0 for the free ops, see the module doc)."""
    if not is_elementwise(func):
        return 0
    name = func._schema.name
    by_input = name in _NORMALISATIONS or (name not in _RESAMPLING and torch.Tag.reduction in func.tags)
    tensor = _first_tensor(args if by_input else out)
    return 0 if tensor is None else tensor.numel()
