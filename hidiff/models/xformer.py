"""X-Former / BX-Former (HIDIFF_SPEC section 4): the refiner's bottleneck exchanges information
with the deepest segmentor feature through two cross-attention transformer blocks.

Layout (following the public code's parameterisation, so that the refiner's parameter count
matches; the choices the spec leaves open are noted):

* The feature ``F3`` is projected by a full-precision :class:`~hidiff.models.layers.ResBlock` to
  ``D = 4C``; both maps become ``(B, N, D)`` token sequences, ``N = H/32 * W/32``.
* Block 1 (segmentor stream ``c``): queries from the diffusion tokens, keys/values from the
  segmentor tokens; ``c <- FFN(c + LayerScale(proj(attn)))``.
  Block 2 (diffusion stream ``h``): queries from the updated segmentor tokens, keys/values from
  the diffusion tokens; ``h <- FFN(h + LayerScale(proj(attn)))``. Each block normalises its
  inputs with its own token BatchNorms (block 2 normalises the raw diffusion tokens; the public
  code normalised them twice).
* Every projection is a *unit*: ``BN(Linear(x shifted by tau(t))) + residual(x)`` followed by TA
  (RPReLU with time-dependent shifts). Binary form: the linear is a :class:`CenteredBinaryLinear`
  and the shift is TB's threshold; real form: ``nn.Linear`` on the shifted input.
* Attention (4 heads): Q, K, V units, then a time-dependent shift (binary form: a sign, TB), scores
  ``q k^T / sqrt(d)``; binary form: probabilities binarised in the forward pass (1 where the
  score is above 0.35 times the row maximum) with the softmax gradient (straight through); real
  form: softmax. Output: ``TA(BN(context) + q + k + v)`` (the units' outputs as residuals).
* FFN (expansion 4): ``inter = TA(BN(Linear_{D->4D}(x)) + x repeated)``, ``out = TA(BN(Linear_{4D->D}
  (inter)) + mean of groups of 4 channels of inter)``. Each channel is repeated 4 times in place
  (``repeat_interleave``) so that the group mean of the shortcut returns the channel itself: the
  FFN shortcut is an exact identity path (the public code tiled the channels instead, mixing 4
  unrelated channels). Plus four local mixing branches (average pools 3x1, 1x3, 5x1, 1x5 on the
  token map), each with its own LayerScale, as in the public code.
* LayerScale: ``x * s(t) + b(t)`` with zero-initialised ``s``, ``b``: at init every branch is exactly
  0, so the whole X-Former is the identity on the refiner's bottleneck.
* Tokens go back to a map with the transpose ``(B, N, D) -> (B, D, N) -> (B, D, H, W)``; the public
  code reshaped ``(B, N, D)`` directly, scrambling channels and positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hidiff_kernels as hk
from hidiff_kernels.counting.markers import Matmul
from hidiff_kernels.nn import ApproxSign, BinaryLinear, PackedWeightCache, TimeActivation, TimeBinarize, WeightSign

from .layers import ResBlock

#: Attention probabilities are 1 where the score exceeds this fraction of the row maximum.
ATTENTION_THRESHOLD = 0.35


def map_to_tokens(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, H*W, C)``: one token per position, row-major."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """``(B, H*W, C) -> (B, C, H, W)``, the inverse of :func:`map_to_tokens` (transpose, then reshape)."""
    b, n, c = tokens.shape
    if n != height * width:
        raise ValueError(f"tokens must hold height*width = {height * width} positions, got {n}")
    return tokens.transpose(1, 2).reshape(b, c, height, width)


class CenteredBinaryLinear(BinaryLinear):
    """Binary linear layer with row-centred weights (the BX-Former's Q/K/V/FFN layers).

    ``out = (sign(x - t) @ sign(W_c)^T) * alpha + bias`` with ``W_c = W - mean_row(W)`` and
    ``alpha_o = mean |W_c[o]|`` (detached), the L2-optimal scale of ``sign(W_c)`` as an
    approximation of ``W_c``. Gradients: ApproxSign for the input, the clipped identity
    (``|W_c| <= 1``) for the weights, then through the centring. Same constructor, parameters and
    packed/straight-through choice as :class:`~hidiff_kernels.nn.BinaryLinear`.

    Shapes: ``x (..., in_features)``, optional threshold ``(in_features,)`` or ``(B, in_features)``
    with ``B = x.shape[0]`` -> ``(..., out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self._centred: PackedWeightCache[tuple[Tensor, Tensor]] = PackedWeightCache(self._pack_centred)

    def clear_packed_cache(self) -> None:
        """Drops the cached packed weights (needed only after writes through ``weight.data``)."""
        super().clear_packed_cache()
        self._centred.clear()

    def centred_weight(self) -> Tensor:
        """``W - mean_row(W)``, float ``(out_features, in_features)`` (differentiable)."""
        return self.weight - self.weight.mean(dim=1, keepdim=True)

    @staticmethod
    def _pack_centred(weight: Tensor) -> tuple[Tensor, Tensor]:
        centred = weight - weight.mean(dim=1, keepdim=True)
        return hk.pack_weight(centred[:, :, None, None]), centred.abs().mean(dim=1).float()

    def _packed_weight(self) -> tuple[Tensor, Tensor]:
        """Packed ``sign(W_c)`` and ``alpha``, recomputed only when the weight changes (see nn.py's cache)."""
        return self._centred.get(self.weight)

    def _forward_ste(self, x: Tensor, threshold: Tensor | None) -> Tensor:
        if threshold is not None:
            shift = threshold if threshold.dim() == 1 else threshold.view(threshold.shape[0], *(1,) * (x.dim() - 2), -1)
            x = x - shift
        centred = self.centred_weight()
        out = F.linear(ApproxSign.apply(x), WeightSign.apply(centred))
        out = out * centred.detach().abs().mean(dim=1).to(out.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of tokens: ``(B, N, C) -> (B, N, C)``, statistics over B and N."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class TokenTimeActivation(TimeActivation):
    """TA (RPReLU with time-dependent shifts) on tokens: ``(B, N, C), (B, emb_dim) -> (B, N, C)``."""

    def forward(self, u: Tensor, emb: Tensor) -> Tensor:
        return super().forward(u.transpose(1, 2), emb).transpose(1, 2)


def channel_view(values: Tensor, x: Tensor, channel_dim: int) -> Tensor:
    """Per-sample channel vectors ``(B, C)`` viewed to broadcast against ``x`` whose channels are ``channel_dim``."""
    shape = [values.shape[0]] + [1] * (x.dim() - 1)
    shape[channel_dim] = values.shape[1]
    return values.view(shape)


def layer_scale(x: Tensor, scale: Tensor, shift: Tensor, channel_dim: int = -1) -> Tensor:
    """``x * scale + shift`` with per-sample ``(B, C)`` vectors on the channels ``channel_dim`` of ``x``."""
    return x * channel_view(scale, x, channel_dim) + channel_view(shift, x, channel_dim)


def time_shift(x: Tensor, threshold: Tensor, binary: bool, channel_dim: int = -1) -> Tensor:
    """``x - threshold`` per sample and channel; the binary form also takes the sign (TB, ApproxSign gradient)."""
    shifted = x - channel_view(threshold, x, channel_dim)
    return ApproxSign.apply(shifted) if binary else shifted


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    binary: bool,
    score_matmul: Callable[[Tensor, Tensor], Tensor] = torch.matmul,
    context_matmul: Callable[[Tensor, Tensor], Tensor] = torch.matmul,
) -> Tensor:
    """Attention of ``(B, heads, N, d)`` queries/keys/values -> context ``(B, heads, N, d)``.

    Scores ``q k^T / sqrt(d)``; binary form: probabilities 1 above 0.35 times the row maximum
    (softmax gradient, :func:`binarized_attention`); real form: softmax. The two products may be
    :class:`~hidiff_kernels.counting.markers.Matmul` modules, so module-based counters see them.
    """
    scores = score_matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = binarized_attention(scores) if binary else torch.softmax(scores, dim=-1)
    return context_matmul(probs, v)


def repeat_channels(x: Tensor, ratio: int, channel_dim: int = -1) -> Tensor:
    """The FFN expansion's shortcut: each channel repeated ``ratio`` times in place."""
    return x.repeat_interleave(ratio, dim=channel_dim)


def grouped_channel_mean(x: Tensor, ratio: int, channel_dim: int = -1) -> Tensor:
    """The FFN reduction's shortcut: the mean of each group of ``ratio`` adjacent channels
    (the inverse of :func:`repeat_channels` on repeated channels)."""
    dim = channel_dim % x.dim()
    shape = (*x.shape[:dim], x.shape[dim] // ratio, ratio, *x.shape[dim + 1 :])
    return x.reshape(shape).mean(dim=dim + 1)


def exchange(xformer: nn.Module, c0: Tensor, h0: Tensor, time: Tensor, size: tuple[int, int]) -> Tensor:
    """The X-Former's wiring, shared by the training and the frozen form (same submodule names).

    Block 1 updates the segmentor stream ``c0`` with the diffusion tokens' queries, block 2 the
    diffusion stream ``h0`` with the updated segmentor tokens' queries. ``time`` is whatever the
    submodules take: the time embedding (training form) or the step indices (frozen form).
    Returns the updated diffusion stream (``h0``'s shape).
    """
    x = xformer
    c1 = x.ffn1(c0, x.proj1(x.attn1(x.norm_h1(h0), x.norm_c1(c0), time), time), time, size)
    return x.ffn2(h0, x.proj2(x.attn2(x.norm_c2(c1), x.norm_h2(h0), time), time), time, size)


class LayerScale(nn.Module):
    """Time-dependent LayerScale ``x * s(t) + b(t)``, zero-initialised (the branch starts at exactly 0).

    Shapes: ``x (B, N, C)``, ``emb (B, emb_dim)`` -> ``(B, N, C)``.
    """

    def __init__(self, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.scale = nn.Linear(emb_dim, channels)
        self.shift = nn.Linear(emb_dim, channels)
        for layer in (self.scale, self.shift):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def time_tables(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """``(s(t), b(t))`` of ``emb (B, emb_dim)``, float ``(B, C)`` each."""
        e = F.silu(emb)
        return self.scale(e), self.shift(e)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return layer_scale(x, *self.time_tables(emb))


class LinearUnit(nn.Module):
    """``BN(Linear(x shifted by tau(t)))``: binary (TB threshold, centred binary weights) or real.

    Shapes: ``x (B, N, in_features)``, ``emb (B, emb_dim)`` -> ``(B, N, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, emb_dim: int, binary: bool) -> None:
        super().__init__()
        self.tb = TimeBinarize(in_features, emb_dim)
        self.linear = (
            CenteredBinaryLinear(in_features, out_features) if binary else nn.Linear(in_features, out_features)
        )
        self.bn = TokenBatchNorm(out_features)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        threshold = self.tb.threshold(emb)
        if isinstance(self.linear, BinaryLinear):
            return self.bn(self.linear(x, threshold))
        return self.bn(self.linear(x - threshold[:, None, :]))


def _attention_mask(scores: Tensor) -> Tensor:
    """1 where a score exceeds 0.35 times its row maximum, else 0 (scores' dtype)."""
    return (scores > ATTENTION_THRESHOLD * scores.amax(dim=-1, keepdim=True)).to(scores.dtype)


class _BinarizedAttention(torch.autograd.Function):
    """Forward: ``1[score > 0.35 * row max]``; backward: the gradient of the softmax (straight through)."""

    @staticmethod
    def forward(ctx, scores: Tensor) -> Tensor:
        ctx.save_for_backward(torch.softmax(scores, dim=-1))
        return _attention_mask(scores)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (probs,) = ctx.saved_tensors
        return probs * (grad - (grad * probs).sum(dim=-1, keepdim=True))


def binarized_attention(scores: Tensor) -> Tensor:
    """Binary attention probabilities (forward) with the softmax gradient, over the last dim."""
    if torch.is_grad_enabled() and scores.requires_grad:
        return _BinarizedAttention.apply(scores)
    return _attention_mask(scores)  # the softmax is needed only for the gradient


class CrossAttention(nn.Module):
    """Multi-head cross attention built from binary (or real) linear units.

    Shapes: ``x_q (B, N, D)``, ``x_kv (B, M, D)`` with ``M = N`` (the key/value units' outputs
    are residuals of the result), ``emb (B, emb_dim)`` -> ``(B, N, D)``.
    """

    def __init__(self, dim: int, emb_dim: int, heads: int = 4, binary: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim = dim
        self.heads = heads
        self.binary = binary
        self.q = LinearUnit(dim, dim, emb_dim, binary)
        self.k = LinearUnit(dim, dim, emb_dim, binary)
        self.v = LinearUnit(dim, dim, emb_dim, binary)
        self.ta_q = TokenTimeActivation(dim, emb_dim)
        self.ta_k = TokenTimeActivation(dim, emb_dim)
        self.ta_v = TokenTimeActivation(dim, emb_dim)
        # Shifts before the attention matmuls; binary form: TB (sign), real form: a plain shift.
        self.tb_q = TimeBinarize(dim, emb_dim)
        self.tb_k = TimeBinarize(dim, emb_dim)
        self.tb_v = TimeBinarize(dim, emb_dim)
        # Binary form: q, k, v are signs and the probabilities {0, 1}, so both products are binary
        # (counted as BOPs); Matmul marks them for the counters (hidiff_kernels.counting).
        self.score_matmul = Matmul(binary)
        self.context_matmul = Matmul(binary)
        self.bn_out = TokenBatchNorm(dim)
        self.ta_out = TokenTimeActivation(dim, emb_dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(self, x_q: Tensor, x_kv: Tensor, emb: Tensor) -> Tensor:
        q_mix = self.ta_q(self.q(x_q, emb) + x_q, emb)
        k_mix = self.ta_k(self.k(x_kv, emb) + x_kv, emb)
        v_mix = self.ta_v(self.v(x_kv, emb) + x_kv, emb)
        q, k, v = (
            self._split_heads(time_shift(mix, tb.threshold(emb), self.binary))
            for mix, tb in ((q_mix, self.tb_q), (k_mix, self.tb_k), (v_mix, self.tb_v))
        )
        context = attend(q, k, v, self.binary, self.score_matmul, self.context_matmul)
        context = context.transpose(1, 2).reshape(x_q.shape)
        return self.ta_out(self.bn_out(context) + q_mix + k_mix + v_mix, emb)


class Projection(nn.Module):
    """Attention output projection: ``LayerScale(TA(unit(x) + x))`` (exactly 0 at init).

    Shapes: ``(B, N, D), (B, emb_dim) -> (B, N, D)``.
    """

    def __init__(self, dim: int, emb_dim: int, binary: bool) -> None:
        super().__init__()
        self.unit = LinearUnit(dim, dim, emb_dim, binary)
        self.ta = TokenTimeActivation(dim, emb_dim)
        self.scale = LayerScale(dim, emb_dim)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.scale(self.ta(self.unit(x, emb) + x, emb), emb)


class FeedForward(nn.Module):
    """Residual FFN (expansion ``ratio``) with local mixing branches; see the module docstring.

    Shapes: ``stream (B, N, D)``, ``update (B, N, D)``, ``emb (B, emb_dim)``, ``size = (H, W)``
    with ``H * W = N`` -> ``(B, N, D)``.
    """

    #: (kernel height, kernel width) of the local mixing average pools.
    LOCAL_KERNELS = ((3, 1), (1, 3), (5, 1), (1, 5))

    def __init__(self, dim: int, emb_dim: int, binary: bool, ratio: int = 4) -> None:
        super().__init__()
        self.ratio = ratio
        self.norm = TokenBatchNorm(dim)
        self.expand = LinearUnit(dim, ratio * dim, emb_dim, binary)
        self.ta_expand = TokenTimeActivation(ratio * dim, emb_dim)
        self.reduce = LinearUnit(ratio * dim, dim, emb_dim, binary)
        self.ta_reduce = TokenTimeActivation(dim, emb_dim)
        self.scale = LayerScale(dim, emb_dim)
        self.local_pools = nn.ModuleList(
            nn.AvgPool2d(k, stride=1, padding=(k[0] // 2, k[1] // 2), count_include_pad=True)
            for k in self.LOCAL_KERNELS
        )
        self.local_scales = nn.ModuleList(LayerScale(dim, emb_dim) for _ in self.LOCAL_KERNELS)

    def forward(self, stream: Tensor, update: Tensor, emb: Tensor, size: tuple[int, int]) -> Tensor:
        hidden = stream + update
        x = self.norm(hidden)
        inter = self.ta_expand(self.expand(x, emb) + repeat_channels(x, self.ratio), emb)
        reduced = self.ta_reduce(self.reduce(inter, emb) + grouped_channel_mean(inter, self.ratio), emb)
        out = hidden + self.scale(reduced, emb)
        x_map = tokens_to_map(x, *size)
        for pool, scale in zip(self.local_pools, self.local_scales, strict=True):
            out = out + scale(map_to_tokens(pool(x_map)), emb)
        return out


class XFormer(nn.Module):
    """The X-Former (``binary=False``) or BX-Former (``binary=True``) at the refiner's bottleneck.

    Args:
        feature_channels: channels of the segmentor feature F3 (at H/32).
        dim: refiner width at the bottleneck (4C).
        emb_dim: width of the time embedding (4C).
        heads: attention heads (4).
        ffn_ratio: FFN expansion (4).
        binary: binary linears and attention probabilities, or real ones.

    Shapes:
        ``forward(h, feature, emb)``: ``h (B, dim, h, w)``, ``feature (B, feature_channels, h, w)``,
        ``emb (B, emb_dim)`` -> ``(B, dim, h, w)``. At init the output equals ``h`` exactly.
    """

    def __init__(
        self, feature_channels: int, dim: int, emb_dim: int, heads: int = 4, ffn_ratio: int = 4, binary: bool = True
    ) -> None:
        super().__init__()
        self.feature_channels = feature_channels
        self.dim = dim
        self.condition = ResBlock(feature_channels, dim, emb_dim)
        # Block 1: diffusion tokens query the segmentor tokens; the result updates the segmentor stream.
        self.norm_c1 = TokenBatchNorm(dim)
        self.norm_h1 = TokenBatchNorm(dim)
        self.attn1 = CrossAttention(dim, emb_dim, heads, binary)
        self.proj1 = Projection(dim, emb_dim, binary)
        self.ffn1 = FeedForward(dim, emb_dim, binary, ffn_ratio)
        # Block 2: the updated segmentor tokens query the diffusion tokens; the result updates the diffusion stream.
        self.norm_c2 = TokenBatchNorm(dim)
        self.norm_h2 = TokenBatchNorm(dim)
        self.attn2 = CrossAttention(dim, emb_dim, heads, binary)
        self.proj2 = Projection(dim, emb_dim, binary)
        self.ffn2 = FeedForward(dim, emb_dim, binary, ffn_ratio)

    def forward(self, h: Tensor, feature: Tensor, emb: Tensor) -> Tensor:
        if h.dim() != 4 or h.shape[1] != self.dim:
            raise ValueError(f"h must be (B, {self.dim}, H, W), got shape {tuple(h.shape)}")
        if feature.dim() != 4 or feature.shape[1] != self.feature_channels:
            raise ValueError(f"feature must be (B, {self.feature_channels}, H, W), got shape {tuple(feature.shape)}")
        if feature.shape[0] != h.shape[0] or feature.shape[2:] != h.shape[2:]:
            raise ValueError(
                f"feature must have h's batch and spatial size {(h.shape[0], *h.shape[2:])}, "
                f"got shape {tuple(feature.shape)}"
            )
        size = (h.shape[2], h.shape[3])
        c0 = map_to_tokens(self.condition(feature, emb))
        return tokens_to_map(exchange(self, c0, map_to_tokens(h), emb, size), *size)
