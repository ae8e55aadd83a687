"""The deployable (frozen) refiner: :func:`freeze` turns a trained :class:`~hidiff.models.BBDM` into
its inference form :class:`FrozenBBDM`, which computes what ``refiner.eval()`` computes.

What freezing does (HIDIFF_SPEC section 2, last point):

* **Per-step lookup tables.** The time embedding depends on t only, and a sampler visits a few
  known timesteps. Every time-dependent vector (TB thresholds, TA shifts, FiLM scale/shift of the
  condition ResBlocks, the X-Former's TB/TA/LayerScale vectors) is computed once per timestep and
  stored as a ``(S, C)`` table, S = number of frozen timesteps; a step looks its rows up. A t that
  is not in the table raises a ValueError.
* **Folding.** BatchNorm (eval statistics), the XNOR-Net scale alpha and the conv bias become one
  per-channel ``(scale, bias)`` of the popcount; the X-Former's token BatchNorms become
  per-channel affines. Binary weights are packed once (1 bit each) and stored as buffers, so the
  frozen model's ``state_dict`` is the compact deployable artifact.
* **Fusion.** Every binary block is one :func:`hidiff_kernels.binary_conv2d_fused` call (conv ->
  affine -> + shortcut -> TA -> TB and packing of the output for the next layer), so an activation
  is written once and read once. DownBlock's parallel branches read the same TB(x): their packed
  weights are concatenated along O and run as one conv. UpBlock packs at low resolution and
  upsamples the packed words. A merge's input ``concat(up(h), skip)`` is packed part by part and the
  words concatenated when the first part fills whole words (channels % 32 == 0).
* **Condition cache.** The segmentor features and the image are fixed during a refinement:
  :meth:`FrozenBBDM.prepare` computes, once per image, the t-independent part of every condition
  ResBlock (``in_layers(feature)``, its GroupNorm ``out_norm`` and the skip path) and the image's
  share of the input conv (+ its bias); :meth:`FrozenBBDM.step` reuses it at every timestep. The
  X-Former has nothing else to cache: its key/value tokens come from the FiLM-conditioned
  (t-dependent) ResBlock output and every unit shifts its input by a t-dependent threshold.

Float rounding: folding BN and splitting the input conv change float results by about one ulp,
so an activation lying within an ulp of its TB threshold can binarise differently than in the
training-form model; tests/test_frozen.py measures how often that happens and its effect.

The frozen model is inference-only: it has no trainable parameters and the fused op has no
autograd formula.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hidiff_kernels.deploy import FusedBinaryConv2d, FusedConv2d, fold_batchnorm, fold_batchnorm_into_weight
from hidiff_kernels.nn import BinaryConv2d, TimeActivation
from hidiff_kernels.ops import time_activation
from hidiff_kernels.reference import sign_pm1

from .bbdm import BBDM, SIZE_DIVISOR
from .layers import BinaryBlock, ConcatLayer, DownBlock, Head, ResBlock, flip_probability, flip_scale
from .xformer import (
    ATTENTION_THRESHOLD,
    CenteredBinaryLinear,
    CrossAttention,
    FeedForward,
    LayerScale,
    LinearUnit,
    Projection,
    TokenBatchNorm,
    XFormer,
)

__all__ = ["ConditionCache", "FrozenBBDM", "freeze"]

FusedConv = FusedBinaryConv2d | FusedConv2d


def _table(values: Tensor) -> Tensor:
    """A per-step table as a float32 contiguous buffer (detached)."""
    return values.detach().float().contiguous()


def _ta_tables(ta: TimeActivation, emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """TA's ``gamma (S, C)``, ``zeta (S, C)`` for the S embeddings and its slope ``beta (C,)``,
    with the module's own operations (so a row equals the on-the-fly value)."""
    gamma, zeta = ta.shifts(F.silu(emb)).chunk(2, dim=1)
    return _table(gamma), _table(zeta), _table(ta.beta)


def _fused_convs(convs: Sequence[nn.Module], bns: Sequence[nn.Module]) -> FusedConv:
    """Parallel binary (or real) convs + their BatchNorms -> one fused conv."""
    if isinstance(convs[0], BinaryConv2d):
        return FusedBinaryConv2d.from_binary_convs(convs, bns)
    return FusedConv2d.from_convs(convs, bns)


def _fused_linear(linear: nn.Module, bn: TokenBatchNorm) -> FusedConv:
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


class FrozenBlock(nn.Module):
    """A binary (or real) block at inference: ``TA(conv(TB(x)) * scale + bias + residual)``.

    Buffers: the fused conv's (packed) weights and folded affine, and the per-step tables
    ``threshold (S, I)`` (TB), ``gamma``, ``zeta`` ``(S, O)`` (TA) and ``beta (O,)``.

    Args:
        conv: the fused conv (:class:`FusedBinaryConv2d` or :class:`FusedConv2d`).
        threshold: float ``(S, I)``; gamma, zeta: float ``(S, O)``; beta: float ``(O,)``.
    """

    def __init__(self, conv: FusedConv, threshold: Tensor, gamma: Tensor, zeta: Tensor, beta: Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("threshold", _table(threshold))
        self.register_buffer("gamma", _table(gamma))
        self.register_buffer("zeta", _table(zeta))
        self.register_buffer("beta", _table(beta))

    @classmethod
    def from_block(cls, block: BinaryBlock | DownBlock, emb: Tensor) -> FrozenBlock:
        """From a BinaryBlock / UpBlock (one conv + BN) or a DownBlock (parallel convs + BNs).

        ``emb (S, E)``: the time embeddings of the frozen timesteps.
        """
        if isinstance(block, DownBlock):
            conv = _fused_convs(list(block.convs), list(block.bns))
        else:
            conv = _fused_convs([block.conv], [block.bn])
        return cls(conv, block.tb.threshold(emb), *_ta_tables(block.ta, emb))

    @classmethod
    def from_unit(cls, unit: LinearUnit, ta: TimeActivation, emb: Tensor) -> FrozenBlock:
        """From an X-Former ``TA(unit(x) + residual)``: a 1x1 block on ``(B, C, N, 1)`` token maps."""
        return cls(_fused_linear(unit.linear, unit.bn), unit.tb.threshold(emb), *_ta_tables(ta, emb))

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def thresholds(self, idx: Tensor) -> Tensor:
        """TB thresholds of the steps ``idx`` (int64 ``(B,)``): float32 ``(B, I)``."""
        return self.threshold.index_select(0, idx)

    def prefix_threshold(self, idx: Tensor, channels: int) -> Tensor | None:
        """Thresholds of the first ``channels`` input channels, when the producer of those channels can
        prepare them apart from the rest of the (concatenated) input; else None. ``(B, channels)``."""
        if not self.conv.can_split(channels):
            return None
        return self.thresholds(idx)[:, :channels].contiguous()

    def prepare(self, x: Tensor, idx: Tensor) -> Tensor:
        """TB of the block's input ``x (B, I, H, W)`` for the steps ``idx``: packed (binary) or shifted (real)."""
        return self.conv.prepare(x, self.thresholds(idx))

    def prepare_concat(self, a: Tensor, a_in: Tensor | None, b: Tensor, idx: Tensor) -> Tensor:
        """The prepared input ``concat(a, b)`` along channels.

        Args:
            a, b: float ``(B, Ca, H, W)``, ``(B, Cb, H, W)`` with ``Ca + Cb = I``.
            a_in: ``a`` already prepared by its producer at :meth:`prefix_threshold`, or None.
        """
        threshold = self.thresholds(idx)
        channels = a.shape[1]
        if a_in is None and not self.conv.can_split(channels):
            return self.conv.prepare(torch.cat([a, b], dim=1), threshold)
        if a_in is None:
            a_in = self.conv.prepare(a, threshold[:, :channels].contiguous())
        b_in = self.conv.prepare(b, threshold[:, channels:].contiguous())
        return self.conv.concat_inputs([a_in, b_in], [channels, b.shape[1]])

    def forward(
        self, x_in: Tensor, residual: Tensor, idx: Tensor, next_threshold: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The block at the steps ``idx``.

        Args:
            x_in: the prepared input (:meth:`prepare`), int32 ``(B, H, W, words)`` or float ``(B, I, H, W)``.
            residual: float32 ``(B, O, Ho, Wo)``, the block's shortcut.
            idx: int64 ``(B,)`` step indices.
            next_threshold: float32 ``(B, O)`` TB threshold of the single binary layer that reads
                the output, or None.

        Returns:
            ``(out, next_in)``: float32 ``(B, O, Ho, Wo)`` and the output prepared at
            ``next_threshold`` (None when no threshold is given).
        """
        return self.conv(
            x_in,
            residual,
            self.gamma.index_select(0, idx),
            self.zeta.index_select(0, idx),
            self.beta,
            next_threshold,
            next_threshold is not None,
        )


def _pair_mean(x: Tensor, out: Tensor | None = None) -> Tensor:
    """:func:`~hidiff.models.layers.channel_pair_mean` as one strided add: ``(B, 2C, H, W) -> (B, C, H, W)``.

    Bit-identical to the mean of the pair (``a + b`` rounds once, halving is exact) and several
    times faster than a reduction over a length-2 dimension. ``out`` may be a channel slice of a
    larger tensor, so a concatenation of pair means is written in place.
    """
    return torch.add(x[:, 0::2], x[:, 1::2], out=out).mul_(0.5)


def _avg_pool2x2(x: Tensor) -> Tensor:
    """``F.avg_pool2d(x, 2)`` as three strided adds: ``(B, C, H, W) -> (B, C, H/2, W/2)``, H and W even.

    Bit-identical (the window is summed in the same row-major order, and the division by 4 is
    exact) and faster than the pooling kernel on NCHW maps.
    """
    top, bottom = x[:, :, 0::2], x[:, :, 1::2]
    return (top[..., 0::2] + top[..., 1::2]).add_(bottom[..., 0::2]).add_(bottom[..., 1::2]).mul_(0.25)


def _upsample2x(x: Tensor, out: Tensor | None = None) -> Tensor:
    """Nearest x2 upsampling ``(B, C, H, W) -> (B, C, 2H, 2W)`` as one copy, into ``out`` when given."""
    b, c, h, w = x.shape
    if out is None:
        out = x.new_empty((b, c, 2 * h, 2 * w))
    out.view(b, c, h, 2, w, 2).copy_(x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2))
    return out


def _pair_mean_of_concat(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``channel_pair_mean(concat(a, b))``, without the concatenation when no pair straddles a and b.

    ``out`` (``(B, (Ca + Cb) / 2, H, W)``) receives the result when given.
    """
    if a.shape[1] % 2:
        return _pair_mean(torch.cat([a, b], dim=1))
    half = a.shape[1] // 2
    if out is None:
        out = a.new_empty((a.shape[0], half + b.shape[1] // 2, *a.shape[2:]))
    _pair_mean(a, out[:, :half])
    _pair_mean(b, out[:, half:])
    return out


class FrozenCondition(nn.Module):
    """A condition :class:`~hidiff.models.layers.ResBlock` split into its t-independent part
    (:meth:`prepare`, once per image) and the FiLM-conditioned rest (:meth:`forward`, per step).

    ``prepare(f) = (out_norm(in_layers(f)), skip(f))``; ``forward = skip + out_conv(SiLU(normed *
    (1 + s_t) + b_t))`` with the FiLM tables ``film_scale = 1 + s (S, E)``, ``film_shift (S, E)``.
    """

    def __init__(self, block: ResBlock, emb: Tensor) -> None:
        super().__init__()
        self.in_layers = copy.deepcopy(block.in_layers)
        self.out_norm = copy.deepcopy(block.out_norm)
        self.out_conv = copy.deepcopy(block.out_conv)
        self.skip = copy.deepcopy(block.skip)
        scale, shift = block.film(emb).chunk(2, dim=1)
        self.register_buffer("film_scale", _table(1 + scale))
        self.register_buffer("film_shift", _table(shift))

    def prepare(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """``feature (B, F, H, W)`` -> ``(normed, skip)``, float ``(B, E, H, W)`` each."""
        return self.out_norm(self.in_layers(feature)), self.skip(feature)

    def forward(self, cached: tuple[Tensor, Tensor], idx: Tensor) -> Tensor:
        """The block's output ``(B, E, H, W)`` at the steps ``idx`` from :meth:`prepare`'s result."""
        normed, skip = cached
        scale = self.film_scale.index_select(0, idx)[:, :, None, None]
        shift = self.film_shift.index_select(0, idx)[:, :, None, None]
        return skip + self.out_conv(F.silu(normed * scale + shift))


class FrozenConcat(nn.Module):
    """A :class:`~hidiff.models.layers.ConcatLayer`: ``block(concat(h, condition))`` with a cached condition."""

    def __init__(self, layer: ConcatLayer, emb: Tensor) -> None:
        super().__init__()
        self.condition = FrozenCondition(layer.condition, emb)
        self.block = FrozenBlock.from_block(layer.block, emb)

    def head_threshold(self, idx: Tensor) -> Tensor | None:
        """The threshold at which the producer of ``h`` may pack it (see :meth:`FrozenBlock.prefix_threshold`)."""
        return self.block.prefix_threshold(idx, self.block.out_channels)

    def forward(
        self,
        h: Tensor,
        h_in: Tensor | None,
        cached: tuple[Tensor, Tensor],
        idx: Tensor,
        next_threshold: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``h (B, E, H, W)`` (and ``h_in``, h prepared at :meth:`head_threshold`, or None) -> ``(out, next_in)``."""
        c = self.condition(cached, idx)
        x_in = self.block.prepare_concat(h, h_in, c, idx)
        return self.block(x_in, _pair_mean_of_concat(h, c), idx, next_threshold)


class FrozenAffine(nn.Module):
    """A folded eval-mode BatchNorm: ``x * scale + bias`` per channel of ``(B, C, ...)``."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        scale, bias = fold_batchnorm(None, None, bn)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(view) + self.bias.view(view)


class FrozenLayerScale(nn.Module):
    """LayerScale ``x * s_t + b_t`` with per-step tables ``scale``, ``shift`` ``(S, C)``, on ``(B, C, N, 1)``."""

    def __init__(self, layer: LayerScale, emb: Tensor) -> None:
        super().__init__()
        e = F.silu(emb)
        self.register_buffer("scale", _table(layer.scale(e)))
        self.register_buffer("shift", _table(layer.shift(e)))

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        scale = self.scale.index_select(0, idx)[:, :, None, None]
        return x * scale + self.shift.index_select(0, idx)[:, :, None, None]


# The frozen X-Former works on token maps (B, C, N, 1), channels first: the layout the fused conv
# reads and writes, and the bottleneck map (B, C, H, W) reshaped without a copy.


class FrozenCrossAttention(nn.Module):
    """:class:`~hidiff.models.xformer.CrossAttention` on token maps ``(B, D, N, 1)``.

    The binary attention (+-1 queries/keys/values, 0/1 probabilities) is exact integer arithmetic
    in float, so it equals the training form's for any layout.
    """

    def __init__(self, attn: CrossAttention, emb: Tensor) -> None:
        super().__init__()
        self.heads = attn.heads
        self.binary = attn.binary
        self.q = FrozenBlock.from_unit(attn.q, attn.ta_q, emb)
        self.k = FrozenBlock.from_unit(attn.k, attn.ta_k, emb)
        self.v = FrozenBlock.from_unit(attn.v, attn.ta_v, emb)
        self.register_buffer("shift_q", _table(attn.tb_q.threshold(emb)))
        self.register_buffer("shift_k", _table(attn.tb_k.threshold(emb)))
        self.register_buffer("shift_v", _table(attn.tb_v.threshold(emb)))
        self.norm_out = FrozenAffine(attn.bn_out)
        gamma, zeta, beta = _ta_tables(attn.ta_out, emb)
        self.register_buffer("gamma", gamma)
        self.register_buffer("zeta", zeta)
        self.register_buffer("beta", beta)

    def _heads(self, x: Tensor, shift: Tensor, idx: Tensor) -> Tensor:
        """``(B, D, N, 1)`` -> TB-binarised (binary) or shifted (real) ``(B, heads, D/heads, N)``."""
        b, d, n, _ = x.shape
        shifted = x - shift.index_select(0, idx)[:, :, None, None]
        if self.binary:
            shifted = sign_pm1(shifted)
        return shifted.view(b, self.heads, d // self.heads, n)

    def forward(self, x_q: Tensor, x_kv: Tensor, idx: Tensor) -> Tensor:
        """Queries from ``x_q (B, D, N, 1)``, keys/values from ``x_kv (B, D, N, 1)`` -> ``(B, D, N, 1)``."""
        q_mix, _ = self.q(self.q.prepare(x_q, idx), x_q, idx)
        k_mix, _ = self.k(self.k.prepare(x_kv, idx), x_kv, idx)
        v_mix, _ = self.v(self.v.prepare(x_kv, idx), x_kv, idx)
        q = self._heads(q_mix, self.shift_q, idx)
        k = self._heads(k_mix, self.shift_k, idx)
        v = self._heads(v_mix, self.shift_v, idx)
        scores = q.transpose(-1, -2) @ k / math.sqrt(q.shape[2])
        if self.binary:
            probs = (scores > ATTENTION_THRESHOLD * scores.amax(dim=-1, keepdim=True)).to(scores.dtype)
        else:
            probs = torch.softmax(scores, dim=-1)
        context = (v @ probs.transpose(-1, -2)).reshape(q_mix.shape)
        u = self.norm_out(context) + q_mix + k_mix + v_mix
        return time_activation(u, self.gamma.index_select(0, idx), self.zeta.index_select(0, idx), self.beta)


class FrozenProjection(nn.Module):
    """:class:`~hidiff.models.xformer.Projection`: ``LayerScale(TA(unit(x) + x))`` on token maps."""

    def __init__(self, projection: Projection, emb: Tensor) -> None:
        super().__init__()
        self.unit = FrozenBlock.from_unit(projection.unit, projection.ta, emb)
        self.scale = FrozenLayerScale(projection.scale, emb)

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        out, _ = self.unit(self.unit.prepare(x, idx), x, idx)
        return self.scale(out, idx)


class FrozenFeedForward(nn.Module):
    """:class:`~hidiff.models.xformer.FeedForward` on token maps ``(B, D, N, 1)``."""

    def __init__(self, ffn: FeedForward, emb: Tensor) -> None:
        super().__init__()
        self.ratio = ffn.ratio
        self.local_kernels = tuple(FeedForward.LOCAL_KERNELS)
        self.norm = FrozenAffine(ffn.norm)
        self.expand = FrozenBlock.from_unit(ffn.expand, ffn.ta_expand, emb)
        self.reduce = FrozenBlock.from_unit(ffn.reduce, ffn.ta_reduce, emb)
        self.scale = FrozenLayerScale(ffn.scale, emb)
        self.local_scales = nn.ModuleList(FrozenLayerScale(layer, emb) for layer in ffn.local_scales)

    def forward(self, stream: Tensor, update: Tensor, idx: Tensor, size: tuple[int, int]) -> Tensor:
        """``stream``, ``update`` ``(B, D, N, 1)`` with ``N = size[0] * size[1]`` -> ``(B, D, N, 1)``."""
        hidden = stream + update
        x = self.norm(hidden)
        # Channel c feeds the expanded channels 4c..4c+3 (see FeedForward), so the shortcut of the
        # expansion repeats each channel in place and the reduction's shortcut averages them back.
        inter, _ = self.expand(self.expand.prepare(x, idx), x.repeat_interleave(self.ratio, dim=1), idx)
        b, d, n, _ = x.shape
        grouped_mean = inter.view(b, d, self.ratio, n).mean(dim=2).unsqueeze(-1)
        reduced, _ = self.reduce(self.reduce.prepare(inter, idx), grouped_mean, idx)
        out = hidden + self.scale(reduced, idx)
        x_map = x.view(b, d, *size)
        for kernel, scale in zip(self.local_kernels, self.local_scales, strict=True):
            pooled = F.avg_pool2d(x_map, kernel, 1, (kernel[0] // 2, kernel[1] // 2), count_include_pad=True)
            out = out + scale(pooled.view(b, d, n, 1), idx)
        return out


class FrozenXFormer(nn.Module):
    """:class:`~hidiff.models.xformer.XFormer` with its condition ResBlock split like :class:`FrozenCondition`."""

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

    def forward(self, h: Tensor, cached: tuple[Tensor, Tensor], idx: Tensor) -> Tensor:
        """``h (B, D, H, W)`` and the condition cache of F3 -> ``(B, D, H, W)``."""
        b, d, height, width = h.shape
        size = (height, width)
        c0 = self.condition(cached, idx).reshape(b, d, height * width, 1)
        h0 = h.reshape(b, d, height * width, 1)
        c1 = self.ffn1(c0, self.proj1(self.attn1(self.norm_h1(h0), self.norm_c1(c0), idx), idx), idx, size)
        h1 = self.ffn2(h0, self.proj2(self.attn2(self.norm_c2(c1), self.norm_h2(h0), idx), idx), idx, size)
        return h1.view(b, d, height, width)


@dataclass(frozen=True)
class ConditionCache:
    """What :meth:`FrozenBBDM.prepare` computes once per image and every step reuses.

    Attributes:
        image_term: float32 ``(B, C, H, W)``: the image's share of the input conv, plus its bias
            (and the prior's share when the prior was given to :meth:`FrozenBBDM.prepare`).
        conditions: per condition ResBlock (concat1, concat2, concat3 at H/4..H/16, then the
            bottleneck's at H/32), ``(normed, skip)`` float32 ``(B, E_i, H_i, W_i)`` each.
        prior: the prior whose share ``image_term`` includes, or None.
        input_buffer: float32 ``(B, C, H * W)`` that every step's input-conv output is written into
            (with a cached prior).
        workspace: reusable per-step tensors (the decoder's upsampled shortcuts and pair means),
            created at the first step. Large fresh allocations are mapped anew by the C library
            on every call and pay a page fault per 4 KiB on first touch (milliseconds per
            full-resolution map); reusing them removes that. A cache therefore serves one
            refinement at a time.
    """

    image_term: Tensor
    conditions: tuple[tuple[Tensor, Tensor], ...]
    prior: Tensor | None = None
    input_buffer: Tensor | None = None
    workspace: dict[str, Tensor] = field(default_factory=dict)

    def buffer(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The workspace tensor ``name`` of ``shape`` (dtype and device of ``like``), created once."""
        tensor = self.workspace.get(name)
        if tensor is None or tuple(tensor.shape) != tuple(shape):
            tensor = like.new_empty(shape)
            self.workspace[name] = tensor
        return tensor


def _check_timesteps(timesteps: Sequence[int]) -> tuple[int, ...]:
    values = tuple(timesteps)
    if not values or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in values):
        raise ValueError(f"timesteps must be a non-empty sequence of non-negative ints, got {timesteps!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"timesteps must be distinct, got {values}")
    return values


class FrozenHead(nn.Module):
    """:class:`~hidiff.models.layers.Head` (GroupNorm -> SiLU -> conv3x3 ``C -> K``, logits) for few outputs.

    A 3x3 convolution to K = 1 or a few channels is a poor fit for GEMM-based convolution kernels
    (oneDNN ran 128 -> 1 at 256x256 at a few GMAC/s, the cost of a whole binary block). Here one
    GEMM ``(9K, C) x (C, H*W)`` computes every tap's per-pixel products, reading the activation
    once, and the nine shifted tap maps are summed with zero padding: the same convolution, summed
    in another order (float rounding differs in the last bits). Same submodules and ``state_dict``
    keys as the Head it copies. Shapes: ``(B, C, H, W) -> (B, K, H, W)``.
    """

    def __init__(self, head: Head) -> None:
        super().__init__()
        conv = head.conv
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.dilation != (1, 1):
            raise ValueError(f"the head must be a 3x3 convolution with stride 1 and padding 1, got {conv}")
        self.norm = copy.deepcopy(head.norm)
        self.conv = copy.deepcopy(conv)

    def forward(self, h: Tensor) -> Tensor:
        x = F.silu(self.norm(h), inplace=True)  # in place: no second full-resolution map
        batch, channels, height, width = x.shape
        k = self.conv.out_channels
        taps = self.conv.weight.permute(2, 3, 0, 1).reshape(9 * k, channels)  # rows (kh, kw, o)
        products = torch.matmul(taps, x.reshape(batch, channels, height * width))
        # Zero padding of the tap maps = the conv's zero padding of x (padded pixels contribute 0).
        padded = F.pad(products.view(batch, 9 * k, height, width), (1, 1, 1, 1)).view(
            batch, 3, 3, k, height + 2, width + 2
        )
        out = self.conv.bias.view(1, k, 1, 1).expand(batch, k, height, width)
        for kh in range(3):
            for kw in range(3):
                out = out + padded[:, kh, kw, :, kh : kh + height, kw : kw + width]
        return out


class FrozenBBDM(nn.Module):
    """Inference form of a :class:`~hidiff.models.BBDM` for a fixed set of timesteps.

    Build it with :func:`freeze` (or ``FrozenBBDM(refiner, timesteps)``); reload a saved one with
    :meth:`from_state_dict` or ``load_state_dict`` into :meth:`from_config`'s shell.

    Args:
        refiner: the trained refiner (binary or real; its eval-mode BatchNorm statistics are used,
            whatever its mode).
        timesteps: the timesteps the frozen model can be called at (e.g. the ones a sampler
            visits, :func:`hidiff.diffusion.respace`).

    Shapes:
        ``prepare(image, features)``: image float ``(B, Cimg, H, W)``, features 4 float tensors
        ``(B, cond_channels[i], H / 2^(i+2), W / 2^(i+2))`` -> :class:`ConditionCache`.
        ``step(cache, y_t, prior, t)``: y_t, prior float ``(B, K, H, W)``, t int ``(B,)``, a scalar
        tensor or an int -> ``eps_hat`` float32 ``(B, K, H, W)`` in (0, 1).
        ``forward(image, y_t, prior, t, features)``: both at once (BBDM's signature).
    """

    def __init__(self, refiner: BBDM, timesteps: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(refiner, BBDM):
            raise TypeError(f"refiner must be a BBDM, got {type(refiner).__name__}")
        timesteps = _check_timesteps(timesteps)
        self.image_channels = refiner.image_channels
        self.num_classes = refiner.num_classes
        self.model_channels = refiner.model_channels
        self.cond_channels = tuple(refiner.cond_channels)
        self.binary = refiner.binary
        self.use_xformer = refiner.use_xformer
        self.prior_flip_rates = refiner.prior_flip_rates
        self.frozen_timesteps = timesteps
        device = refiner.input_conv.weight.device
        with torch.no_grad():
            emb = refiner.time_embed(torch.tensor(timesteps, dtype=torch.int64, device=device))
            self.register_buffer("timesteps", torch.tensor(timesteps, dtype=torch.int64, device=device))
            weight = refiner.input_conv.weight.detach().float()
            self.register_buffer("input_image_weight", weight[:, : self.image_channels].contiguous())
            self.register_buffer("input_state_weight", weight[:, self.image_channels :].contiguous())
            self.register_buffer("input_bias", refiner.input_conv.bias.detach().float().contiguous())
            for name in ("block1", "down1", "block2", "down2", "block3", "down3", "block4", "down4", "block5"):
                setattr(self, name, FrozenBlock.from_block(getattr(refiner, name), emb))
            self.concat1 = FrozenConcat(refiner.concat1, emb)
            self.concat2 = FrozenConcat(refiner.concat2, emb)
            self.concat3 = FrozenConcat(refiner.concat3, emb)
            self.down5 = FrozenBlock.from_block(refiner.down5, emb)
            self.mid1 = FrozenBlock.from_block(refiner.mid1, emb)
            self.fuse: FrozenXFormer | FrozenConcat = (
                FrozenXFormer(refiner.fuse, emb) if self.use_xformer else FrozenConcat(refiner.fuse, emb)
            )
            self.mid2 = FrozenBlock.from_block(refiner.mid2, emb)
            for level in range(1, 6):
                setattr(self, f"up{level}", FrozenBlock.from_block(getattr(refiner, f"up{level}"), emb))
                setattr(self, f"merge{level}", FrozenBlock.from_block(getattr(refiner, f"merge{level}"), emb))
            self.head = FrozenHead(refiner.head)
        self.requires_grad_(False)
        self.eval()

    # --- construction and serialisation ---------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The constructor configuration (plain Python values): :meth:`from_config` builds the shell."""
        return {
            "image_channels": self.image_channels,
            "num_classes": self.num_classes,
            "model_channels": self.model_channels,
            "cond_channels": list(self.cond_channels),
            "binary": self.binary,
            "xformer": self.use_xformer,
            "prior_flip_rates": None if self.prior_flip_rates is None else list(self.prior_flip_rates),
            "timesteps": list(self.frozen_timesteps),
        }

    def get_extra_state(self) -> dict[str, Any]:
        """The config travels in the ``state_dict`` (key ``_extra_state``), making it self-describing."""
        return self.config

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state != self.config:
            raise ValueError(f"state_dict was saved from a FrozenBBDM with config {state}, this one has {self.config}")

    @classmethod
    def from_config(cls, config: dict[str, Any], device: torch.device | str = "cpu") -> FrozenBBDM:
        """An uninitialised frozen model of the given :attr:`config` (fill it with ``load_state_dict``).

        The shell is built by freezing a refiner on the meta device (no memory, no computation),
        so its buffers have the shapes of the real artifact.
        """
        config = dict(config)
        timesteps = config.pop("timesteps", None)
        if timesteps is None:
            raise ValueError(f"config must hold 'timesteps', got keys {sorted(config)}")
        with torch.device("meta"):
            refiner = BBDM(**config)
        return cls(refiner, [int(t) for t in timesteps]).to_empty(device=device)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Any], device: torch.device | str = "cpu") -> FrozenBBDM:
        """Rebuilds a frozen model from its ``state_dict`` (e.g. ``torch.load(path, weights_only=True)``).

        Raises:
            ValueError: the state_dict has no ``_extra_state`` config (it is not a FrozenBBDM's).
        """
        config = state_dict.get("_extra_state")
        if not isinstance(config, dict):
            raise ValueError("state_dict has no '_extra_state' config: it was not saved from a FrozenBBDM")
        model = cls.from_config(config, device)
        model.load_state_dict(state_dict)
        return model

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.config.items())

    # --- inference --------------------------------------------------------------------------

    def step_index(self, t: Tensor | int, batch: int) -> Tensor:
        """Row of every sample's timestep in the per-step tables.

        Args:
            t: int ``(batch,)`` tensor, a scalar tensor or an int.
            batch: B.

        Returns:
            int64 ``(batch,)`` on the model's device.

        Raises:
            ValueError: a timestep is not one of the frozen timesteps (the message names it), or
                t has the wrong shape.
        """
        if isinstance(t, int) and not isinstance(t, bool):
            t = torch.tensor(t)
        if not isinstance(t, Tensor) or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"t must be an int or a tensor of timesteps, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() == 0:
            t = t.expand(batch)
        if tuple(t.shape) != (batch,):
            raise ValueError(f"t must have shape ({batch},) or be a scalar, got {tuple(t.shape)}")
        match = t.to(self.timesteps.device, torch.float64)[:, None] == self.timesteps.to(torch.float64)[None, :]
        found = match.any(dim=1)
        if not bool(found.all()):
            missing = sorted({v.item() for v in t[~found.to(t.device)]})
            raise ValueError(
                f"t={missing} is not one of the frozen timesteps {self.frozen_timesteps}: freeze the refiner "
                "for the timesteps the sampler visits (HiDiff.freeze(steps) or freeze(refiner, timesteps))"
            )
        return match.to(torch.int64).argmax(dim=1)

    def _check_image(self, image: Tensor, features: Sequence[Tensor]) -> None:
        if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != self.image_channels:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"image must be a (B, {self.image_channels}, H, W) tensor, got {shape}")
        batch, _, height, width = image.shape
        if height % SIZE_DIVISOR or width % SIZE_DIVISOR:
            raise ValueError(f"image height and width must be divisible by {SIZE_DIVISOR}, got {height}x{width}")
        if not isinstance(features, (list, tuple)) or len(features) != 4:
            raise ValueError(f"features must be a list of 4 tensors at H/4, H/8, H/16, H/32, got {type(features)}")
        for i, (feature, channels) in enumerate(zip(features, self.cond_channels, strict=True)):
            stride = 4 * 2**i
            want = (batch, channels, height // stride, width // stride)
            if not isinstance(feature, Tensor) or tuple(feature.shape) != want:
                shape = tuple(feature.shape) if isinstance(feature, Tensor) else type(feature).__name__
                raise ValueError(f"features[{i}] must have shape {want} (B, C, H/{stride}, W/{stride}), got {shape}")

    def prepare(self, image: Tensor, features: Sequence[Tensor], prior: Tensor | None = None) -> ConditionCache:
        """The per-image, t-independent part of the refiner (see :class:`ConditionCache`).

        Args:
            image: float ``(B, Cimg, H, W)``; features: the segmentor's 4 feature maps.
            prior: optional float ``(B, K, H, W)``: the prior every :meth:`step` of this refinement
                will pass; its share of the input conv is then computed here once as well.
        """
        self._check_image(image, features)
        image_term = F.conv2d(image.float(), self.input_image_weight, self.input_bias, padding=1)
        input_buffer = None
        if prior is not None:
            expected = (image.shape[0], self.num_classes, *image.shape[2:])
            if not isinstance(prior, Tensor) or tuple(prior.shape) != expected:
                shape = tuple(prior.shape) if isinstance(prior, Tensor) else type(prior).__name__
                raise ValueError(f"prior must have shape {expected} (B, K, H, W) of the image, got {shape}")
            image_term = self._prior_term(image_term, prior)
            input_buffer = image_term.new_empty((image_term.shape[0], image_term.shape[1], image_term[0, 0].numel()))
        conditions = (self.concat1, self.concat2, self.concat3, self.fuse)
        return ConditionCache(
            image_term,
            tuple(layer.condition.prepare(f.float()) for layer, f in zip(conditions, features, strict=True)),
            prior,
            input_buffer,
        )

    def _prior_term(self, image_term: Tensor, prior: Tensor) -> Tensor:
        """``image_term`` plus the prior's share of the input conv (``(B, C, H, W)``, a new tensor)."""
        prior_weight = self.input_state_weight[:, self.num_classes :]
        return F.conv2d(prior.float(), prior_weight, None, padding=1).add_(image_term)

    def _input_conv(self, cache: ConditionCache, y_t: Tensor, prior: Tensor) -> Tensor:
        """The input conv of ``concat(image, y_t, prior)``: ``(B, C, H, W)`` float32.

        Only y_t's K channels change per step: their 3x3 conv is one small GEMM over the 9K
        shifted copies of y_t, accumulated onto the image and prior terms (cached by
        :meth:`prepare` when it was given the prior, then written into the cache's buffer).
        """
        if cache.prior is None:
            base, buffer = self._prior_term(cache.image_term, prior), None
        else:
            if prior is not cache.prior and not torch.equal(prior, cache.prior):
                raise ValueError("prior must be the prior given to prepare(), whose share of the input conv is cached")
            base, buffer = cache.image_term, cache.input_buffer
        batch, channels, height, width = base.shape
        weight = self.input_state_weight[:, : self.num_classes].reshape(1, channels, -1).expand(batch, -1, -1)
        columns = F.unfold(y_t.float(), 3, padding=1)
        out = torch.baddbmm(base.view(batch, channels, -1), weight, columns, out=buffer)
        return out.view(batch, channels, height, width)

    @staticmethod
    def _down(
        block: FrozenBlock, h: Tensor, h_in: Tensor, idx: Tensor, next_threshold: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """A DownBlock: every branch adds AvgPool2d(2)(x); the branches are one conv with concatenated outputs."""
        pooled = _avg_pool2x2(h)
        branches = block.out_channels // block.in_channels
        residual = pooled if branches == 1 else torch.cat([pooled] * branches, dim=1)
        return block(h_in, residual, idx, next_threshold)

    @staticmethod
    def _up(
        block: FrozenBlock,
        h: Tensor,
        h_in: Tensor,
        idx: Tensor,
        next_threshold: Tensor | None,
        residual_out: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """An UpBlock from ``h`` packed at low resolution: nearest x2 commutes with TB and with the
        channel-pair-mean shortcut, so both run before the upsampling (into ``residual_out``)."""
        shortcut = h if block.in_channels == block.out_channels else _pair_mean(h)
        residual = _upsample2x(shortcut, residual_out)
        return block(block.conv.upsample_input(h_in), residual, idx, next_threshold)

    def step(self, cache: ConditionCache, y_t: Tensor, prior: Tensor, t: Tensor | int) -> Tensor:
        """One refiner evaluation ``eps_hat`` float32 ``(B, K, H, W)`` from the cache of :meth:`prepare`.

        Raises:
            ValueError: y_t/prior do not match the cached image's shape, or t is not a frozen timestep.
        """
        batch, _, height, width = cache.image_term.shape
        expected = (batch, self.num_classes, height, width)
        for name, value in (("y_t", y_t), ("prior", prior)):
            if not isinstance(value, Tensor) or tuple(value.shape) != expected:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} must have shape {expected} (B, K, H, W) of the cached image, got {shape}")
        idx = self.step_index(t, batch)
        h = self._input_conv(cache, y_t, prior)

        # Encoder: each block packs its output for the next binary layer.
        h, h_in = self.block1(self.block1.prepare(h, idx), h, idx, self.down1.thresholds(idx))
        skips = [h]
        h, h_in = self._down(self.down1, h, h_in, idx, self.block2.thresholds(idx))
        h, h_in = self.block2(h_in, h, idx, self.down2.thresholds(idx))
        skips.append(h)
        h, h_in = self._down(self.down2, h, h_in, idx, self.block3.thresholds(idx))
        for block, concat, down, following, cached in (
            (self.block3, self.concat1, self.down3, self.block4, cache.conditions[0]),
            (self.block4, self.concat2, self.down4, self.block5, cache.conditions[1]),
            (self.block5, self.concat3, self.down5, self.mid1, cache.conditions[2]),
        ):
            h, h_in = block(h_in, h, idx, concat.head_threshold(idx))
            h, h_in = concat(h, h_in, cached, idx, down.thresholds(idx))
            skips.append(h)
            h, h_in = self._down(down, h, h_in, idx, following.thresholds(idx))

        # Bottleneck.
        if isinstance(self.fuse, FrozenXFormer):
            h, _ = self.mid1(h_in, h, idx)
            h = self.fuse(h, cache.conditions[3], idx)
            h_in = self.mid2.prepare(h, idx)
        else:
            h, h_in = self.mid1(h_in, h, idx, self.fuse.head_threshold(idx))
            h, h_in = self.fuse(h, h_in, cache.conditions[3], idx, self.mid2.thresholds(idx))
        h, h_in = self.mid2(h_in, h, idx, self.up1.thresholds(idx))

        # Decoder: UpBlock, then a block on concat(h, skip) packed part by part.
        pairs = (
            (self.up1, self.merge1),
            (self.up2, self.merge2),
            (self.up3, self.merge3),
            (self.up4, self.merge4),
            (self.up5, self.merge5),
        )
        for i, (up, merge) in enumerate(pairs):
            skip = skips.pop()
            batch, _, height, width = skip.shape
            upsampled = cache.buffer(f"up{i}", (batch, up.out_channels, height, width), skip)
            h, h_in = self._up(up, h, h_in, idx, merge.prefix_threshold(idx, up.out_channels), upsampled)
            merge_in = merge.prepare_concat(h, h_in, skip, idx)
            following = pairs[i + 1][0].thresholds(idx) if i + 1 < len(pairs) else None
            pair_mean = cache.buffer(f"merge{i}", (batch, merge.out_channels, height, width), skip)
            h, h_in = merge(merge_in, _pair_mean_of_concat(h, skip, pair_mean), idx, following)
        scale = flip_scale(self.prior_flip_rates, self.timesteps[idx])
        return flip_probability(self.head(h), y_t, prior, scale)

    def forward(self, image: Tensor, y_t: Tensor, prior: Tensor, t: Tensor | int, features: Sequence[Tensor]) -> Tensor:
        """``step(prepare(image, features), y_t, prior, t)``: BBDM's call signature."""
        return self.step(self.prepare(image, features), y_t, prior, t)


def freeze(refiner: BBDM, timesteps: Sequence[int]) -> FrozenBBDM:
    """The deployable inference form of ``refiner`` for the given timesteps.

    Args:
        refiner: a trained :class:`~hidiff.models.BBDM` (binary or real). Its eval-mode behaviour
            is frozen (BatchNorm running statistics), whatever its current mode; it is not modified.
        timesteps: distinct non-negative ints, e.g. ``diffusion.timesteps(steps)`` for a sampler.

    Returns:
        a :class:`FrozenBBDM` on the refiner's device, in eval mode, without trainable parameters.
    """
    return FrozenBBDM(refiner, timesteps)
