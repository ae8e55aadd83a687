"""Inference form of the X-Former (:mod:`hidiff.models.xformer`).

The frozen X-Former works on token maps ``(B, C, N, 1)``, channels first: the layout the fused conv
reads and writes, and the bottleneck map ``(B, C, H, W)`` reshaped without a copy. Its wiring is the
training form's :func:`~hidiff.models.xformer.exchange` and its formulas are the functions of that
module, called with ``channel_dim=1``.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from hidiff_kernels.deploy import FusedBinaryConv2d, FusedConv2d, fold_batchnorm, fold_batchnorm_into_weight
from hidiff_kernels.nn import TimeActivation
from hidiff_kernels.ops import time_activation

from ..layers import BlockTables
from ..xformer import (
    CenteredBinaryLinear,
    CrossAttention,
    FeedForward,
    LayerScale,
    LinearUnit,
    Projection,
    TokenBatchNorm,
    XFormer,
    attend,
    exchange,
    grouped_channel_mean,
    layer_scale,
    repeat_channels,
    time_shift,
)
from .layers import FrozenAffine, FrozenBlock, FrozenCondition, FusedConv, rows, table

#: Channels of a token map ``(B, C, N, 1)``.
CHANNELS = 1


def fused_linear(linear: nn.Module, bn: TokenBatchNorm) -> FusedConv:
    """An X-Former linear + its token BatchNorm -> a fused 1x1 conv on ``(B, C, N, 1)`` token maps."""
    if isinstance(linear, CenteredBinaryLinear):
        if linear.threshold is not None:
            raise ValueError(f"{linear} has a learnable threshold, which freezing does not fold")
        centred = linear.centred_weight().detach()
        scale, bias = fold_batchnorm(centred.abs().mean(dim=1), linear.bias, bn)
        return FusedBinaryConv2d(centred[:, :, None, None], scale, bias)
    if isinstance(linear, nn.Linear):
        weight, bias = fold_batchnorm_into_weight(linear.weight, linear.bias, bn)
        return FusedConv2d(weight[:, :, None, None], bias)
    raise TypeError(f"expected a CenteredBinaryLinear or nn.Linear, got {type(linear).__name__}")


def frozen_unit(unit: LinearUnit, ta: TimeActivation, emb: Tensor) -> FrozenBlock:
    """An X-Former ``TA(unit(x) + residual)`` as a 1x1 :class:`FrozenBlock` on token maps."""
    tables = BlockTables(unit.tb.threshold(emb), *ta.time_tables(emb))
    return FrozenBlock(fused_linear(unit.linear, unit.bn), tables, ta.beta)


def run_unit(unit: FrozenBlock, x: Tensor, residual: Tensor, idx: Tensor) -> Tensor:
    """``TA(unit(x) + residual)`` at the steps ``idx`` on token maps."""
    out, _ = unit(unit.prepare(x, idx), residual, idx)
    return out


class FrozenLayerScale(nn.Module):
    """:class:`~hidiff.models.xformer.LayerScale`, per-step tables ``scale``, ``shift`` ``(S, C)``, on token maps."""

    def __init__(self, layer: LayerScale, emb: Tensor) -> None:
        super().__init__()
        scale, shift = layer.time_tables(emb)
        self.register_buffer("scale", table(scale))
        self.register_buffer("shift", table(shift))

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        return layer_scale(x, rows(self.scale, idx), rows(self.shift, idx), CHANNELS)


class FrozenCrossAttention(nn.Module):
    """:class:`~hidiff.models.xformer.CrossAttention` on token maps ``(B, D, N, 1)``.

    The binary attention (+-1 queries/keys/values, 0/1 probabilities) is exact integer arithmetic
    in float, so it equals the training form's for any layout.
    """

    def __init__(self, attn: CrossAttention, emb: Tensor) -> None:
        super().__init__()
        self.heads = attn.heads
        self.binary = attn.binary
        self.q = frozen_unit(attn.q, attn.ta_q, emb)
        self.k = frozen_unit(attn.k, attn.ta_k, emb)
        self.v = frozen_unit(attn.v, attn.ta_v, emb)
        self.register_buffer("shift_q", table(attn.tb_q.threshold(emb)))
        self.register_buffer("shift_k", table(attn.tb_k.threshold(emb)))
        self.register_buffer("shift_v", table(attn.tb_v.threshold(emb)))
        self.norm_out = FrozenAffine(attn.bn_out)
        gamma, zeta = attn.ta_out.time_tables(emb)
        self.register_buffer("gamma", table(gamma))
        self.register_buffer("zeta", table(zeta))
        self.register_buffer("beta", table(attn.ta_out.beta))

    def _heads(self, x: Tensor, shift: Tensor, idx: Tensor) -> Tensor:
        """``(B, D, N, 1)`` -> TB-binarised (binary) or shifted (real) ``(B, heads, N, D/heads)`` (a view)."""
        b, d, n, _ = x.shape
        shifted = time_shift(x, rows(shift, idx), self.binary, CHANNELS)
        return shifted.view(b, self.heads, d // self.heads, n).transpose(-1, -2)

    def forward(self, x_q: Tensor, x_kv: Tensor, idx: Tensor) -> Tensor:
        """Queries from ``x_q (B, D, N, 1)``, keys/values from ``x_kv (B, D, N, 1)`` -> ``(B, D, N, 1)``."""
        q_mix = run_unit(self.q, x_q, x_q, idx)
        k_mix = run_unit(self.k, x_kv, x_kv, idx)
        v_mix = run_unit(self.v, x_kv, x_kv, idx)
        q = self._heads(q_mix, self.shift_q, idx)
        k = self._heads(k_mix, self.shift_k, idx)
        v = self._heads(v_mix, self.shift_v, idx)
        context = attend(q, k, v, self.binary).transpose(-1, -2).reshape(q_mix.shape)
        u = self.norm_out(context) + q_mix + k_mix + v_mix
        return time_activation(u, rows(self.gamma, idx), rows(self.zeta, idx), self.beta)


class FrozenProjection(nn.Module):
    """:class:`~hidiff.models.xformer.Projection`: ``LayerScale(TA(unit(x) + x))`` on token maps."""

    def __init__(self, projection: Projection, emb: Tensor) -> None:
        super().__init__()
        self.unit = frozen_unit(projection.unit, projection.ta, emb)
        self.scale = FrozenLayerScale(projection.scale, emb)

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        return self.scale(run_unit(self.unit, x, x, idx), idx)


class FrozenFeedForward(nn.Module):
    """:class:`~hidiff.models.xformer.FeedForward` on token maps ``(B, D, N, 1)``."""

    def __init__(self, ffn: FeedForward, emb: Tensor) -> None:
        super().__init__()
        self.ratio = ffn.ratio
        self.norm = FrozenAffine(ffn.norm)
        self.expand = frozen_unit(ffn.expand, ffn.ta_expand, emb)
        self.reduce = frozen_unit(ffn.reduce, ffn.ta_reduce, emb)
        self.scale = FrozenLayerScale(ffn.scale, emb)
        self.local_pools = copy.deepcopy(ffn.local_pools)
        self.local_scales = nn.ModuleList(FrozenLayerScale(layer, emb) for layer in ffn.local_scales)

    def forward(self, stream: Tensor, update: Tensor, idx: Tensor, size: tuple[int, int]) -> Tensor:
        """``stream``, ``update`` ``(B, D, N, 1)`` with ``N = size[0] * size[1]`` -> ``(B, D, N, 1)``."""
        hidden = stream + update
        x = self.norm(hidden)
        inter = run_unit(self.expand, x, repeat_channels(x, self.ratio, CHANNELS), idx)
        reduced = run_unit(self.reduce, inter, grouped_channel_mean(inter, self.ratio, CHANNELS), idx)
        out = hidden + self.scale(reduced, idx)
        b, d, n, _ = x.shape
        x_map = x.view(b, d, *size)
        for pool, scale in zip(self.local_pools, self.local_scales, strict=True):
            out = out + scale(pool(x_map).view(b, d, n, 1), idx)
        return out


class FrozenXFormer(nn.Module):
    """:class:`~hidiff.models.xformer.XFormer` with its condition ResBlock split like :class:`FrozenCondition`.

    Same call as :class:`~hidiff.models.frozen.layers.FrozenConcat`, so the frozen refiner runs
    either fusion layer alike; its output is not prepared for the next layer.
    """

    def __init__(self, xformer: XFormer, emb: Tensor) -> None:
        super().__init__()
        self.condition = FrozenCondition(xformer.condition, emb)
        self.norm_c1 = FrozenAffine(xformer.norm_c1)
        self.norm_h1 = FrozenAffine(xformer.norm_h1)
        self.attn1 = FrozenCrossAttention(xformer.attn1, emb)
        self.proj1 = FrozenProjection(xformer.proj1, emb)
        self.ffn1 = FrozenFeedForward(xformer.ffn1, emb)
        self.norm_c2 = FrozenAffine(xformer.norm_c2)
        self.norm_h2 = FrozenAffine(xformer.norm_h2)
        self.attn2 = FrozenCrossAttention(xformer.attn2, emb)
        self.proj2 = FrozenProjection(xformer.proj2, emb)
        self.ffn2 = FrozenFeedForward(xformer.ffn2, emb)

    def entry_threshold(self, idx: Tensor) -> None:
        """None: the X-Former reads its input in float."""
        return None

    def forward(
        self, h: Tensor, h_in: Tensor | None, c: Tensor, idx: Tensor, next_threshold: Tensor | None = None
    ) -> tuple[Tensor, None]:
        """``h (B, D, H, W)`` and ``c``, the output of :attr:`condition` at the steps ``idx``, ->
        ``((B, D, H, W), None)`` (``h_in`` and ``next_threshold`` are unused)."""
        b, d, height, width = h.shape
        c0 = c.reshape(b, d, height * width, 1)
        h1 = exchange(self, c0, h.reshape(b, d, height * width, 1), idx, (height, width))
        return h1.view(b, d, height, width), None
