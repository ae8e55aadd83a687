"""Building blocks of the refiner (HIDIFF_SPEC sections 2 and 3).

Every block exists in a binary and a real form with the same module tree: the binary form uses
:class:`~hidiff_kernels.nn.BinaryConv2d` where the real one uses ``nn.Conv2d``; everything else
(the time-dependent threshold linears of TB, the TA activations, BatchNorm, shortcuts) is shared.
In the real form TB's threshold becomes a plain time-dependent shift of the conv's input (as in
the public real model), so the two forms have the same parameters and ``state_dict`` keys.

Time conditioning: TB, TA and the FiLM of the condition ResBlocks read the full time embedding
``e_t`` of width ``4C`` (each applies SiLU then its own zero-initialised linear layer).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hidiff_kernels.nn import BinaryConv2d, TimeActivation, TimeBinarize
from hidiff_kernels.ops import time_activation


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that also accepts groups of a single value (one channel per group on a 1x1 map).

    Such a group normalises to 0 (``x - mean = 0``), so the output is the affine bias; torch computes
    exactly that for a batch of two or more but refuses a batch of one ("Expected more than 1 value
    per channel"), which made a model trained at 32x32 fail on a single image (its deepest features
    are 1x1). Same parameters and ``state_dict`` keys as ``nn.GroupNorm``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (x.shape[1] // self.num_groups) * math.prod(x.shape[2:]) != 1:
            return super().forward(x)
        out = torch.zeros_like(x)
        return out + self.bias.view(1, -1, *(1,) * (x.dim() - 2)) if self.affine else out


def group_norm(channels: int, max_groups: int = 32) -> GroupNorm:
    """GroupNorm with 32 groups, or the largest divisor of ``channels`` that divides 32.

    The public code uses 32 groups everywhere; the fallback lets segmentor features of any width
    (e.g. 40 or 24 channels from a timm backbone) be projected.
    """
    return GroupNorm(math.gcd(max_groups, channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zeroes every parameter of ``module`` in place (layers whose branch must start at 0)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def conv3x3(in_channels: int, out_channels: int, stride: int, binary: bool) -> nn.Module:
    """3x3 convolution with padding 1 and bias: binary (XNOR-popcount) or real."""
    cls = BinaryConv2d if binary else nn.Conv2d
    return cls(in_channels, out_channels, 3, stride=stride, padding=1)


def conv_with_threshold(conv: nn.Module, x: Tensor, threshold: Tensor) -> Tensor:
    """Applies ``conv`` to ``x`` binarised at the per-sample thresholds (TB), or shifted by them.

    A :class:`BinaryConv2d` fuses ``sign(x - threshold)`` into its packing; a real convolution
    sees ``x - threshold`` (the public real model's time-dependent bias before the conv).

    Args:
        conv: BinaryConv2d or nn.Conv2d.
        x: float ``(B, C, H, W)``.
        threshold: float ``(B, C)``.
    """
    if isinstance(conv, BinaryConv2d):
        return conv(x, threshold)
    return conv(x - threshold[:, :, None, None])


def channel_pair_mean(x: Tensor, out: Tensor | None = None) -> Tensor:
    """Mean of adjacent channel pairs (2i, 2i+1): ``(B, 2C, H, W) -> (B, C, H, W)``.

    The parameter-free shortcut of a block that halves the width. One strided add, then an exact
    halving: the same value as a mean over a length-2 dimension (``a + b`` rounds once) and several
    times faster. ``out`` (inference only, no autograd) may be a channel slice of a larger tensor,
    so a concatenation of pair means is written in place.
    """
    return torch.add(x[:, 0::2], x[:, 1::2], out=out).mul_(0.5)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(t f) | sin(t f)]``, ``f_i = max_period^(-i / (dim // 2))``.

    Args:
        t: ``(B,)`` timesteps (integers 0..T-1; any real dtype).
        dim: embedding width; an odd width gets one trailing zero.

    Returns:
        float32 ``(B, dim)``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """``e_t = Linear(4C -> 4C)(SiLU(Linear(C -> 4C)(sinusoid_C(t))))``.

    Shapes: ``t (B,)`` -> float32 ``(B, 4C)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, 4 * channels))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.channels))


class ResBlock(nn.Module):
    """Full-precision condition ResBlock ``F -> E`` with FiLM time conditioning.

    ``h = conv3x3(SiLU(GN(x)))``; ``h = GN(h) * (1 + s(t)) + b(t)``; ``h = zero_conv3x3(SiLU(h))``;
    ``out = skip(x) + h`` with ``skip`` the identity (F = E) or a 1x1 conv. The last conv is
    zero-initialised, so at init the block is its skip path.

    Shapes: ``x (B, F, H, W)``, ``emb (B, emb_dim)`` -> ``(B, E, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_layers = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = group_norm(out_channels)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def time_tables(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """The FiLM of ``emb (B, emb_dim)``: ``(1 + s(t), b(t))``, float ``(B, E)`` each."""
        scale, shift = self.film(emb).chunk(2, dim=1)
        return 1 + scale, shift

    def condition_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The t-independent part: ``(out_norm(in_layers(x)), skip(x))``, float ``(B, E, H, W)`` each."""
        return self.out_norm(self.in_layers(x)), self.skip(x)

    def modulate(self, normed: Tensor, skip: Tensor, film_scale: Tensor, film_shift: Tensor) -> Tensor:
        """``skip + out_conv(SiLU(normed * film_scale + film_shift))``; the ``(B, E)`` FiLM of :meth:`time_tables`."""
        h = normed * film_scale[:, :, None, None] + film_shift[:, :, None, None]
        return skip + self.out_conv(F.silu(h))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.modulate(*self.condition_terms(x), *self.time_tables(emb))


class BlockTables(NamedTuple):
    """The time-dependent vectors of a block at B timesteps: TB's ``threshold (B, I)`` and TA's
    ``gamma``, ``zeta`` ``(B, O)``. ``forward`` computes them from the time embedding; the frozen
    form tabulates them once per timestep (:mod:`hidiff.models.frozen`)."""

    threshold: Tensor
    gamma: Tensor
    zeta: Tensor


class BinaryBlock(nn.Module):
    """Binary block: ``u = BN(conv3x3(TB(x))) + shortcut(x)``; ``out = TA(u)``.

    The shortcut is the identity at equal width and :func:`channel_pair_mean` when the width
    halves (the merges of the decoder and of :class:`ConcatLayer`).

    Shapes: ``x (B, in_channels, H, W)``, ``emb (B, emb_dim)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, binary: bool = True) -> None:
        super().__init__()
        if in_channels not in (out_channels, 2 * out_channels):
            raise ValueError(
                f"in_channels must equal out_channels or twice it (identity or channel-pair-mean shortcut), "
                f"got {in_channels} -> {out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.tb = TimeBinarize(in_channels, emb_dim)
        self.conv = conv3x3(in_channels, out_channels, 1, binary)
        self.bn = nn.BatchNorm2d(out_channels)
        self.ta = TimeActivation(out_channels, emb_dim)

    def time_tables(self, emb: Tensor) -> BlockTables:
        """TB's thresholds and TA's shifts for ``emb (B, emb_dim)``."""
        return BlockTables(self.tb.threshold(emb), *self.ta.time_tables(emb))

    def shortcut(self, x: Tensor) -> Tensor:
        """The identity at equal width, else the channel-pair mean: ``(B, in, H, W) -> (B, out, H, W)``."""
        return x if self.in_channels == self.out_channels else channel_pair_mean(x)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        tables = self.time_tables(emb)
        u = self.bn(conv_with_threshold(self.conv, x, tables.threshold))
        return time_activation(u + self.shortcut(x), tables.gamma, tables.zeta, self.ta.beta)


class UpBlock(BinaryBlock):
    """Nearest-neighbour x2 upsampling, then a :class:`BinaryBlock` (``(B, in, H, W) -> (B, out, 2H, 2W)``)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return super().forward(F.interpolate(x, scale_factor=2.0, mode="nearest"), emb)


class DownBlock(nn.Module):
    """Stride-2 binary block: ``out_channels / in_channels`` (1 or 2) parallel convolutions ``in -> in``.

    Branch ``i``: ``BN_i(conv3x3_stride2_i(TB(x))) + AvgPool2d(2)(x)``; the branches are
    concatenated along channels and passed through TA.

    Shapes: ``x (B, in, H, W)`` (H, W even) -> ``(B, out, H/2, W/2)``.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, binary: bool = True) -> None:
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(
                f"out_channels must equal in_channels or twice it (one or two parallel branches), "
                f"got {in_channels} -> {out_channels}"
            )
        branches = out_channels // in_channels
        self.tb = TimeBinarize(in_channels, emb_dim)
        self.convs = nn.ModuleList(conv3x3(in_channels, in_channels, 2, binary) for _ in range(branches))
        self.bns = nn.ModuleList(nn.BatchNorm2d(in_channels) for _ in range(branches))
        self.pool = nn.AvgPool2d(2)
        self.ta = TimeActivation(out_channels, emb_dim)

    def time_tables(self, emb: Tensor) -> BlockTables:
        """TB's thresholds (shared by the branches) and TA's shifts for ``emb (B, emb_dim)``."""
        return BlockTables(self.tb.threshold(emb), *self.ta.time_tables(emb))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        tables = self.time_tables(emb)
        pooled = self.pool(x)
        u = torch.cat(
            [
                bn(conv_with_threshold(conv, x, tables.threshold)) + pooled
                for conv, bn in zip(self.convs, self.bns, strict=True)
            ],
            dim=1,
        )
        return time_activation(u, tables.gamma, tables.zeta, self.ta.beta)


class ConcatLayer(nn.Module):
    """Fuses a segmentor feature map into the refiner: ``block(concat(h, ResBlock(f)))``.

    ``ResBlock`` projects the feature ``F -> E`` in full precision; the binary block ``2E -> E``
    has the channel-pair-mean shortcut.

    Shapes: ``h (B, E, H, W)``, ``feature (B, F, H, W)``, ``emb (B, emb_dim)`` -> ``(B, E, H, W)``.
    """

    def __init__(self, feature_channels: int, channels: int, emb_dim: int, binary: bool = True) -> None:
        super().__init__()
        self.condition = ResBlock(feature_channels, channels, emb_dim)
        self.block = BinaryBlock(2 * channels, channels, emb_dim, binary)

    def forward(self, h: Tensor, feature: Tensor, emb: Tensor) -> Tensor:
        return self.block(torch.cat([h, self.condition(feature, emb)], dim=1), emb)


#: Floor (and 1 - ceiling) of the prior-only flip rate before its logit: a pixel the segmentor is
#: sure of starts at a flip logit of about -9.2, which training can still move.
PRIOR_RATE_FLOOR = 1e-4


def flip_probability(logits: Tensor, y_t: Tensor, prior: Tensor, flip_scale: Tensor | None) -> Tensor:
    """The refiner's output ``eps_hat`` from its head logits.

    ``flip_scale`` None (the paper's form): ``sigmoid(logits)``. Otherwise the residual form
    ``sigmoid(logits + logit(r))`` with ``r = (1 - abar_t) |y_t - p|``, the flip rate of the
    prior-only Bayes denoiser (:func:`hidiff.diffusion.prior_flip_rate`), clamped to
    ``[1e-4, 1 - 1e-4]``: a zero head is then exactly that denoiser (the sampler's ensemble mean
    reproduces the prior), and training learns corrections in logit space.

    Args:
        logits: float ``(B, K, H, W)`` head output.
        y_t, prior: float, logits' shape (y_t in {0, 1}, prior in [0, 1]).
        flip_scale: float ``(B,)`` ``1 - abar_t`` per sample, or None.

    Returns:
        float ``(B, K, H, W)`` in (0, 1).
    """
    if flip_scale is None:
        return torch.sigmoid(logits)
    rate = (flip_scale.to(logits.dtype).view(-1, 1, 1, 1) * (y_t - prior).abs()).clamp(
        PRIOR_RATE_FLOOR, 1 - PRIOR_RATE_FLOOR
    )
    return torch.sigmoid(logits + torch.logit(rate))


def flip_scale(prior_flip_rates: tuple[float, ...] | None, t: Tensor) -> Tensor | None:
    """float32 ``(B,)`` ``1 - abar_t`` for integer timesteps ``t`` ``(B,)`` from the table ``prior_flip_rates``.

    Returns None when the table is None (the paper's output form).

    Raises:
        ValueError: a timestep outside ``0 .. len(prior_flip_rates) - 1``.
    """
    if prior_flip_rates is None:
        return None
    index = t.long()
    steps = len(prior_flip_rates)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= steps):
        raise ValueError(f"t must lie in 0..{steps - 1} (the refiner's prior_flip_rates), got {t.tolist()}")
    return torch.tensor(prior_flip_rates, dtype=torch.float32, device=t.device)[index]


class Head(nn.Module):
    """Full-precision output head: GroupNorm -> SiLU -> zero-initialised conv3x3 ``C -> K`` (flip logits).

    The zero-initialised conv makes the logits exactly 0 at init; :func:`flip_probability` turns
    them into ``eps_hat``. Shapes: ``(B, C, H, W) -> (B, K, H, W)``.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.conv = zero_module(nn.Conv2d(channels, num_classes, 3, padding=1))

    def activation(self, h: Tensor, inplace: bool = False) -> Tensor:
        """``SiLU(GroupNorm(h))``, the conv's input (``inplace``: the SiLU overwrites the norm's output)."""
        return F.silu(self.norm(h), inplace=inplace)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(self.activation(h))
