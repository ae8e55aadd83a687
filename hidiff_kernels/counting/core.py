"""Cost rules: pure functions from shapes and ints to an :class:`OpCost`.

Units (paper Table XI, HIDIFF_SPEC section 8):

* ``macs``: multiply-accumulates of real-valued products (convolutions, linears, matmuls). These
  are the paper's FLOPs; a bias add is not a MAC.
* ``bops``: binary multiply-accumulates (one XNOR/AND + popcount lane per +-1 or {0, 1} product).
  ``OPs = MACs + BOPs / 64``.
* ``elementwise``: everything else that touches each element once (binarisation, TA, affine
  epilogues, normalisation, the Bernoulli step): one per element written by each stage. It is
  reported separately and never enters FLOPs or OPs.

Rule convention (shared by every counter and adapter): a rule takes the op's arguments in schema
order and with schema names, where every tensor argument is replaced by its shape (a tuple of
ints, or ``None`` for an absent optional tensor), plus the keyword ``out_shape`` (the output's
shape, or a tuple of shapes for ops with several outputs). This is the form
``torch.utils.flop_counter`` passes to its formulas; the other adapters convert to it.

A fused op counts what its unfused sequence of ops counts, so fusing never changes a total.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hidiff_kernels.reference import packed_words

Shape = Sequence[int]

#: Binary MACs that count as one real MAC (one FLOP in the paper's convention).
BOPS_PER_OP = 64


@dataclass(frozen=True)
class OpCost:
    """The cost of one op or layer.

    Attributes:
        macs: real multiply-accumulates (the paper's FLOPs).
        bops: binary multiply-accumulates.
        elementwise: element-wise operations (not MACs, never part of FLOPs or OPs).
    """

    macs: int = 0
    bops: int = 0
    elementwise: int = 0

    def __add__(self, other: OpCost) -> OpCost:
        return OpCost(self.macs + other.macs, self.bops + other.bops, self.elementwise + other.elementwise)

    def __mul__(self, times: int) -> OpCost:
        return OpCost(self.macs * times, self.bops * times, self.elementwise * times)

    @property
    def ops(self) -> float:
        """``macs + bops / 64``: the paper's OPs (in FLOPs)."""
        return self.macs + self.bops / BOPS_PER_OP


OpRule = Callable[..., OpCost]


def numel(shape: Shape) -> int:
    """Number of elements of a tensor of this shape (1 for a scalar's empty shape)."""
    return math.prod(int(s) for s in shape)


def _present(*optional: Shape | None) -> int:
    """How many of the optional tensors are given (each given epilogue tensor is one stage)."""
    return sum(t is not None for t in optional)


# --- shape-level formulas --------------------------------------------------------------------


def conv_cost(out_shape: Shape, weight_shape: Shape, *, bias: bool) -> OpCost:
    """A real convolution: one MAC per output element per weight of its group.

    Args:
        out_shape: ``(N, O, *spatial_out)``.
        weight_shape: ``(O, I / groups, *kernel)``.
        bias: whether a bias is added (one element-wise op per output element).
    """
    out = numel(out_shape)
    return OpCost(macs=out * numel(weight_shape[1:]), elementwise=out if bias else 0)


def transposed_conv_cost(in_shape: Shape, out_shape: Shape, weight_shape: Shape, *, bias: bool) -> OpCost:
    """A transposed convolution: every input element scatters into ``O / groups * prod(kernel)`` outputs.

    Args:
        in_shape: ``(N, I, *spatial_in)``; out_shape: ``(N, O, *spatial_out)``;
        weight_shape: ``(I, O / groups, *kernel)``; bias: as in :func:`conv_cost`.
    """
    return OpCost(macs=numel(in_shape) * numel(weight_shape[1:]), elementwise=numel(out_shape) if bias else 0)


def matmul_cost(batch: int, m: int, k: int, n: int, *, binary: bool = False, bias: bool = False) -> OpCost:
    """``batch`` products of ``(m, k) @ (k, n)``: ``batch * m * k * n`` MACs (or BOPs when binary).

    ``bias`` adds one element-wise op per output element (``addmm``, ``baddbmm``).
    """
    products = batch * m * k * n
    elementwise = batch * m * n if bias else 0
    return OpCost(bops=products, elementwise=elementwise) if binary else OpCost(macs=products, elementwise=elementwise)


def attention_cost(query_shape: Shape, key_shape: Shape, value_shape: Shape) -> OpCost:
    """Softmax attention ``softmax(q k^T) v`` with q ``(..., L, E)``, k ``(..., S, E)``, v ``(..., S, Ev)``.

    MACs of both products; the softmax is one element-wise op per score.
    """
    batch = numel(query_shape[:-2])
    length, embed = query_shape[-2], query_shape[-1]
    source, value_embed = key_shape[-2], value_shape[-1]
    scores = batch * length * source
    return OpCost(macs=scores * (embed + value_embed), elementwise=scores)


# --- rules of the library's ops (``hidiff::``) and of the marker op --------------------------


def binarize_pack_rule(x: Shape, threshold: Shape | None = None, *, out_shape: Shape) -> OpCost:
    """TB + packing: one comparison per input element (the threshold subtraction is the comparison)."""
    return OpCost(elementwise=numel(x))


def pack_weight_rule(w: Shape, *, out_shape: Shape) -> OpCost:
    """Weight packing: one sign per weight (a one-off cost when the packed weights are cached)."""
    return OpCost(elementwise=numel(w))


def binary_conv2d_rule(
    x_packed: Shape,
    w_packed: Shape,
    in_channels: int,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    scale: Shape | None = None,
    bias: Shape | None = None,
    *,
    out_shape: Shape,
) -> OpCost:
    """XNOR-popcount convolution: ``N * O * Ho * Wo * in_channels * KH * KW`` BOPs.

    Padded taps count like real taps (as real convolutions are counted). The epilogue costs one
    element-wise op per output element for each of ``scale`` and ``bias`` that is given.

    Args:
        x_packed: ``(N, H, W, words)``; w_packed: ``(O, KH, KW, words)``; in_channels: the
            logical input channels (the packed words round them up to 32).
        out_shape: ``(N, O, Ho, Wo)``.
    """
    out = numel(out_shape)
    return OpCost(bops=out * in_channels * w_packed[1] * w_packed[2], elementwise=out * _present(scale, bias))


def binary_conv2d_fused_rule(
    x_packed: Shape,
    w_packed: Shape,
    in_channels: int,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    scale: Shape | None,
    bias: Shape | None,
    residual: Shape | None,
    gamma: Shape | None,
    zeta: Shape | None,
    beta: Shape | None,
    threshold: Shape | None,
    pack: bool,
    *,
    out_shape: tuple[Shape, Shape],
) -> OpCost:
    """:func:`binary_conv2d_rule`, then one element-wise stage per output element for each fused
    step: the residual add, TA (``gamma`` given) and the next layer's binarisation (``pack``).

    ``out_shape`` is ``((N, O, Ho, Wo), packed shape)``.
    """
    out_float = out_shape[0]
    conv = binary_conv2d_rule(
        x_packed, w_packed, in_channels, stride, padding, dilation, scale, bias, out_shape=out_float
    )
    stages = _present(residual, gamma) + (1 if pack else 0)
    return conv + OpCost(elementwise=numel(out_float) * stages)


def time_activation_rule(u: Shape, gamma: Shape, zeta: Shape, beta: Shape, *, out_shape: Shape) -> OpCost:
    """TA (RPReLU with time-dependent shifts): one element-wise op per element of ``u``."""
    return OpCost(elementwise=numel(u))


def bernoulli_step_rule(
    y_t: Shape, eps_hat: Shape, prior: Shape, coef: Shape, mode: str, seed: int, offset: int, *, out_shape: Shape
) -> OpCost:
    """One fused reverse diffusion step (mean and Bernoulli draw): one element-wise op per element."""
    return OpCost(elementwise=numel(y_t))


def binary_matmul_rule(a: Shape, b: Shape, *, out_shape: Shape) -> OpCost:
    """Matmul of binary-valued operands ``(..., M, K) @ (..., K, N)``: ``prod(...) * M * K * N`` BOPs."""
    return OpCost(bops=numel(out_shape) * a[-1])


#: Rule of every op of the library and of the counting marker op, by qualified name. Ops added to
#: the ``hidiff`` namespace need an entry here (a test enumerates the registry).
OP_RULES: dict[str, OpRule] = {
    "hidiff::binarize_pack": binarize_pack_rule,
    "hidiff::pack_weight": pack_weight_rule,
    "hidiff::binary_conv2d": binary_conv2d_rule,
    "hidiff::binary_conv2d_fused": binary_conv2d_fused_rule,
    "hidiff::time_activation": time_activation_rule,
    "hidiff::bernoulli_step": bernoulli_step_rule,
    "hidiff_markers::binary_matmul": binary_matmul_rule,
}

#: Torch namespaces whose every op must have a rule in :data:`OP_RULES`.
NAMESPACES = ("hidiff", "hidiff_markers")


# --- rules of binary layers (the cost of what they run in their packed form) -----------------


def binary_conv_layer_cost(x_shape: Shape, out_shape: Shape, weight_shape: Shape, groups: int, *, bias: bool) -> OpCost:
    """A :class:`~hidiff_kernels.nn.BinaryConv2d` as its packed path runs it, per group:
    ``binarize_pack`` of the input slice, then ``binary_conv2d`` with the scale (always) and bias.

    Args:
        x_shape: ``(N, I, H, W)``; out_shape: ``(N, O, Ho, Wo)``;
        weight_shape: ``(O, I / groups, KH, KW)``; groups: convolution groups; bias: has a bias.
    """
    n, in_channels, h, w = x_shape
    o, per_group_in, kh, kw = weight_shape
    per_group_out = o // groups
    x_group = (n, per_group_in, h, w)
    packed_x = (n, h, w, packed_words(per_group_in))
    packed_w = (per_group_out, kh, kw, packed_words(per_group_in))
    affine = (per_group_out,)
    out_group = (out_shape[0], per_group_out, *out_shape[2:])
    per_group = binarize_pack_rule(x_group, out_shape=packed_x) + binary_conv2d_rule(
        packed_x, packed_w, per_group_in, scale=affine, bias=affine if bias else None, out_shape=out_group
    )
    return per_group * groups


def binary_linear_layer_cost(x_shape: Shape, out_features: int, *, bias: bool) -> OpCost:
    """A :class:`~hidiff_kernels.nn.BinaryLinear` as its packed path runs it: the tokens
    ``(..., I)`` viewed as a ``(B, I, L, 1)`` image, ``binarize_pack``, then a 1x1 ``binary_conv2d``
    with the scale (always) and bias.
    """
    in_features = x_shape[-1]
    tokens = numel(x_shape[:-1])
    image = (1, in_features, tokens, 1)
    packed_x = (1, tokens, 1, packed_words(in_features))
    packed_w = (out_features, 1, 1, packed_words(in_features))
    affine = (out_features,)
    out = (1, out_features, tokens, 1)
    return binarize_pack_rule(image, out_shape=packed_x) + binary_conv2d_rule(
        packed_x, packed_w, in_features, scale=affine, bias=affine if bias else None, out_shape=out
    )
