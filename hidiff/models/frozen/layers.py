"""Inference forms of the blocks of :mod:`hidiff.models.layers`.

Each frozen block stores the per-timestep tables that its training-form block computes with its
``time_tables`` method (the one place they are computed) and folds, packs and fuses the rest (see
:mod:`hidiff.models.frozen`). Formulas that are not kernels live in the training-form module and
are called from here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hidiff_kernels.deploy import FusedBinaryConv2d, FusedConv2d, fold_batchnorm
from hidiff_kernels.nn import BinaryConv2d

from ..layers import BinaryBlock, BlockTables, ConcatLayer, DownBlock, Head, ResBlock, channel_pair_mean

FusedConv = FusedBinaryConv2d | FusedConv2d


def table(values: Tensor) -> Tensor:
    """A per-step table as a float32 contiguous tensor (detached)."""
    return values.detach().float().contiguous()


def rows(values: Tensor, idx: Tensor) -> Tensor:
    """The rows ``idx`` (int64 ``(B,)``) of a per-step table ``(S, C)``: ``(B, C)``."""
    return values.index_select(0, idx)


def fused_convs(convs: Sequence[nn.Module], bns: Sequence[nn.Module]) -> FusedConv:
    """Parallel binary (or real) convs + their BatchNorms -> one fused conv (outputs concatenated)."""
    if isinstance(convs[0], BinaryConv2d):
        return FusedBinaryConv2d.from_binary_convs(convs, bns)
    return FusedConv2d.from_convs(convs, bns)


def avg_pool2x2(x: Tensor) -> Tensor:
    """``F.avg_pool2d(x, 2)`` as three strided adds: ``(B, C, H, W) -> (B, C, H/2, W/2)``, H and W even.

    Bit-identical (the window is summed in the same row-major order, and the division by 4 is
    exact) and faster than the pooling kernel on NCHW maps.
    """
    top, bottom = x[:, :, 0::2], x[:, :, 1::2]
    return (top[..., 0::2] + top[..., 1::2]).add_(bottom[..., 0::2]).add_(bottom[..., 1::2]).mul_(0.25)


def upsample2x(x: Tensor, out: Tensor | None = None) -> Tensor:
    """Nearest x2 upsampling ``(B, C, H, W) -> (B, C, 2H, 2W)`` as one copy, into ``out`` when given."""
    b, c, h, w = x.shape
    if out is None:
        out = x.new_empty((b, c, 2 * h, 2 * w))
    out.view(b, c, h, 2, w, 2).copy_(x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2))
    return out


def pair_mean_of_concat(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``channel_pair_mean(concat(a, b))``, without the concatenation when no pair straddles a and b.

    ``out`` (``(B, (Ca + Cb) / 2, H, W)``) receives the result when given.
    """
    if a.shape[1] % 2:
        return channel_pair_mean(torch.cat([a, b], dim=1))
    half = a.shape[1] // 2
    if out is None:
        out = a.new_empty((a.shape[0], half + b.shape[1] // 2, *a.shape[2:]))
    channel_pair_mean(a, out[:, :half])
    channel_pair_mean(b, out[:, half:])
    return out


class FrozenBlock(nn.Module):
    """A binary (or real) block at inference: ``TA(conv(TB(x)) * scale + bias + residual)``.

    Buffers: the fused conv's (packed) weights and folded affine, and the per-step tables
    ``threshold (S, I)`` (TB), ``gamma``, ``zeta`` ``(S, O)`` (TA) and ``beta (O,)``.

    Args:
        conv: the fused conv (:class:`FusedBinaryConv2d` or :class:`FusedConv2d`).
        tables: the block's :class:`~hidiff.models.layers.BlockTables` at the S frozen timesteps.
        beta: float ``(O,)``, TA's slope.
    """

    def __init__(self, conv: FusedConv, tables: BlockTables, beta: Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("threshold", table(tables.threshold))
        self.register_buffer("gamma", table(tables.gamma))
        self.register_buffer("zeta", table(tables.zeta))
        self.register_buffer("beta", table(beta))

    @classmethod
    def from_block(cls, block: BinaryBlock | DownBlock, emb: Tensor) -> FrozenBlock:
        """From a BinaryBlock / UpBlock (one conv + BN) or a DownBlock (parallel convs + BNs).

        ``emb (S, E)``: the time embeddings of the frozen timesteps.
        """
        if isinstance(block, DownBlock):
            conv = fused_convs(list(block.convs), list(block.bns))
        else:
            conv = fused_convs([block.conv], [block.bn])
        return cls(conv, block.time_tables(emb), block.ta.beta)

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def thresholds(self, idx: Tensor) -> Tensor:
        """TB thresholds of the steps ``idx`` (int64 ``(B,)``): float32 ``(B, I)``."""
        return rows(self.threshold, idx)

    def entry_threshold(self, idx: Tensor) -> Tensor:
        """The threshold at which the layer before this one packs its output for it: :meth:`thresholds`."""
        return self.thresholds(idx)

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
            rows(self.gamma, idx),
            rows(self.zeta, idx),
            self.beta,
            next_threshold,
            next_threshold is not None,
        )


class FrozenCondition(nn.Module):
    """A condition :class:`~hidiff.models.layers.ResBlock` split into its t-independent part
    (:meth:`prepare`, once per image) and the FiLM-conditioned rest (:meth:`forward`, per step).

    Holds a copy of the ResBlock without its FiLM layer, whose output is tabulated per step
    (``film_scale = 1 + s (S, E)``, ``film_shift (S, E)``); both parts are the ResBlock's own
    :meth:`~hidiff.models.layers.ResBlock.condition_terms` and
    :meth:`~hidiff.models.layers.ResBlock.modulate`.
    """

    def __init__(self, block: ResBlock, emb: Tensor) -> None:
        super().__init__()
        film_scale, film_shift = block.time_tables(emb)
        self.block = copy.deepcopy(block)
        del self.block.film
        self.register_buffer("film_scale", table(film_scale))
        self.register_buffer("film_shift", table(film_shift))

    def prepare(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """``feature (B, F, H, W)`` -> ``(normed, skip)``, float ``(B, E, H, W)`` each."""
        return self.block.condition_terms(feature)

    def forward(self, cached: tuple[Tensor, Tensor], idx: Tensor) -> Tensor:
        """The block's output ``(B, E, H, W)`` at the steps ``idx`` from :meth:`prepare`'s result."""
        return self.block.modulate(*cached, rows(self.film_scale, idx), rows(self.film_shift, idx))


class FrozenConcat(nn.Module):
    """A :class:`~hidiff.models.layers.ConcatLayer`: ``block(concat(h, condition))`` with a cached condition."""

    def __init__(self, layer: ConcatLayer, emb: Tensor) -> None:
        super().__init__()
        self.condition = FrozenCondition(layer.condition, emb)
        self.block = FrozenBlock.from_block(layer.block, emb)

    def entry_threshold(self, idx: Tensor) -> Tensor | None:
        """The threshold at which the producer of ``h`` may pack it (see :meth:`FrozenBlock.prefix_threshold`)."""
        return self.block.prefix_threshold(idx, self.block.out_channels)

    def forward(
        self, h: Tensor, h_in: Tensor | None, c: Tensor, idx: Tensor, next_threshold: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``block(concat(h, c))`` at the steps ``idx`` -> ``(out, next_in)``.

        Args:
            h: float ``(B, E, H, W)``; h_in: h prepared at :meth:`entry_threshold`, or None.
            c: float ``(B, E, H, W)``, the output of :attr:`condition` at these steps.
            next_threshold: as in :meth:`FrozenBlock.forward`.
        """
        x_in = self.block.prepare_concat(h, h_in, c, idx)
        return self.block(x_in, pair_mean_of_concat(h, c), idx, next_threshold)


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


class FrozenHead(Head):
    """:class:`~hidiff.models.layers.Head` (GroupNorm -> SiLU -> conv3x3 ``C -> K``, logits) for few outputs.

    A 3x3 convolution to K = 1 or a few channels is a poor fit for GEMM-based convolution kernels
    (oneDNN ran 128 -> 1 at 256x256 at a few GMAC/s, the cost of a whole binary block). Here one
    GEMM ``(9K, C) x (C, H*W)`` computes every tap's per-pixel products, reading the activation
    once, and the nine shifted tap maps are summed with zero padding: the same convolution, summed
    in another order (float rounding differs in the last bits). A Head with the weights of the one
    it copies (same ``state_dict`` keys); only the convolution's algorithm differs.
    Shapes: ``(B, C, H, W) -> (B, K, H, W)``.
    """

    def __init__(self, head: Head) -> None:
        conv = head.conv
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.dilation != (1, 1):
            raise ValueError(f"the head must be a 3x3 convolution with stride 1 and padding 1, got {conv}")
        super().__init__(conv.in_channels, conv.out_channels)
        self.norm = copy.deepcopy(head.norm)
        self.conv = copy.deepcopy(conv)

    def forward(self, h: Tensor) -> Tensor:
        x = self.activation(h, inplace=True)  # in place: no second full-resolution map
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
