"""Inference-time folding of binary (and real) convolution blocks: the deployable form of a network.

A trained block ``out = TA(BN(conv(TB(x))) + residual)`` becomes one call of
:func:`hidiff_kernels.binary_conv2d_fused`: the weights are packed once, BatchNorm (eval
statistics), the XNOR-Net scale alpha and the conv bias are folded into one per-channel
``(scale, bias)``, and the output can be binarised and packed for the next layer in the same pass.

* :func:`fold_batchnorm` — ``BN(x * scale + bias) == x * scale' + bias'`` per channel.
* :func:`fold_batchnorm_into_weight` — the same for a real convolution/linear's weights.
* :func:`binary_conv_affine` — a :class:`~hidiff_kernels.nn.BinaryConv2d`'s alpha and bias, folded with a BN.
* :class:`FusedBinaryConv2d` — packed weights + folded affine, running the fused op.
* :class:`FusedConv2d` — its full-precision twin (real weights with BN folded in, plain torch ops),
  with the same interface, so one network description serves the binary and the real form.
* :func:`upsample_packed`, :func:`concat_packed` — nearest upsampling and channel concatenation
  performed on packed words (binarisation is per element and per channel, so both commute with it).

Both fused conv classes share one protocol (``prepare`` the input once for a TB threshold, then
``forward`` the block, optionally preparing the output for the next layer): for the binary form a
prepared input is packed int32 ``(N, H, W, ceil(C/32))``, for the real form the shifted float
``x - threshold`` ``(N, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import ops
from .nn import BinaryConv2d, _weight_scale
from .reference import WORD_BITS

__all__ = [
    "FusedBinaryConv2d",
    "FusedConv2d",
    "binary_conv_affine",
    "concat_packed",
    "fold_batchnorm",
    "fold_batchnorm_into_weight",
    "upsample_packed",
]


def _batchnorm_affine(bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    """The eval-mode BatchNorm as ``x * a + b``: float32 ``(C,)`` each."""
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f"bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"bn ({bn}) has no running statistics (track_running_stats=False): its eval output depends on "
            "the batch and cannot be folded"
        )
    inv_std = torch.rsqrt(bn.running_var.detach().float() + bn.eps)
    a = inv_std if bn.weight is None else bn.weight.detach().float() * inv_std
    b = -bn.running_mean.detach().float() * a
    if bn.bias is not None:
        b = b + bn.bias.detach().float()
    return a, b


def fold_batchnorm(scale: Tensor | None, bias: Tensor | None, bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    """Folds an eval-mode BatchNorm that follows a per-channel affine into that affine.

    ``bn(x * scale + bias) == x * scale' + bias'`` up to float rounding (the folded form rounds
    differently, by about one ulp of the result).

    Args:
        scale: float ``(C,)`` or None (1).
        bias: float ``(C,)`` or None (0).
        bn: a BatchNorm module over C channels with running statistics.

    Returns:
        ``(scale', bias')``, float32 ``(C,)`` each, contiguous.

    Raises:
        ValueError: ``bn`` has no running statistics, or ``scale``/``bias`` are not ``(C,)``.
    """
    a, b = _batchnorm_affine(bn)
    channels = a.shape[0]
    for name, value in (("scale", scale), ("bias", bias)):
        if value is not None and tuple(value.shape) != (channels,):
            raise ValueError(f"{name} must have shape (C,) = ({channels},) to fold {bn}, got {tuple(value.shape)}")
    folded_scale = a if scale is None else scale.detach().float() * a
    folded_bias = b if bias is None else bias.detach().float() * a + b
    return folded_scale.contiguous(), folded_bias.contiguous()


def fold_batchnorm_into_weight(weight: Tensor, bias: Tensor | None, bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    """Folds an eval-mode BatchNorm into the real convolution or linear layer before it.

    Args:
        weight: float ``(O, ...)`` (``(O, I, KH, KW)`` or ``(O, I)``).
        bias: float ``(O,)`` or None.
        bn: BatchNorm over O channels with running statistics.

    Returns:
        ``(weight', bias')`` float32, shapes ``(O, ...)`` and ``(O,)``, with
        ``bn(layer(x)) == layer'(x)`` up to float rounding.
    """
    a, b = _batchnorm_affine(bn)
    if weight.shape[0] != a.shape[0]:
        raise ValueError(f"weight must have {a.shape[0]} output channels to fold {bn}, got shape {tuple(weight.shape)}")
    folded_weight = weight.detach().float() * a.view(-1, *(1,) * (weight.dim() - 1))
    folded_bias = b if bias is None else bias.detach().float() * a + b
    return folded_weight.contiguous(), folded_bias.contiguous()


def binary_conv_affine(conv: BinaryConv2d, bn: _BatchNorm | None = None) -> tuple[Tensor, Tensor]:
    """The per-output-channel ``(scale, bias)`` of a BinaryConv2d's popcount, BN folded in.

    ``conv(x) = count * alpha + conv.bias`` with ``alpha = mean|W|`` per output channel; with
    ``bn``, ``bn(conv(x)) = count * scale + bias``.

    Returns:
        float32 ``(O,)`` each.
    """
    alpha = _weight_scale(conv.weight).float()
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros_like(alpha)
    if bn is None:
        return alpha, bias
    return fold_batchnorm(alpha, bias, bn)


def upsample_packed(packed: Tensor, factor: int = 2) -> Tensor:
    """Nearest-neighbour upsampling of packed activations.

    ``upsample_packed(binarize_pack(x, t), f) == binarize_pack(F.interpolate(x, scale_factor=f,
    mode="nearest"), t)`` exactly: binarisation is per element, so it commutes with copying
    pixels, and this moves ``f^2`` times fewer bytes than packing the upsampled tensor.

    Args:
        packed: int32 ``(N, H, W, words)``.
        factor: positive integer scale.

    Returns:
        int32 ``(N, factor*H, factor*W, words)``, contiguous.
    """
    if packed.dim() != 4:
        raise ValueError(f"packed must be 4-D (N, H, W, words), got shape {tuple(packed.shape)}")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    return packed.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def concat_packed(parts: Sequence[Tensor], channels: Sequence[int]) -> Tensor:
    """Channel concatenation of packed activations: concatenates their words.

    Exact when every part but the last fills its words (``channels[i] % 32 == 0``); otherwise
    the bits of the next part would have to be shifted, and this raises: pack the float
    concatenation instead.

    Args:
        parts: int32 ``(N, H, W, ceil(channels[i]/32))`` each, one spatial size.
        channels: the logical channel count of each part.

    Returns:
        int32 ``(N, H, W, ceil(sum(channels)/32))``: the packing of the concatenated channels.
    """
    if len(parts) != len(channels) or not parts:
        raise ValueError(f"parts and channels must be non-empty and of one length, got {len(parts)}, {len(channels)}")
    for i, c in enumerate(channels[:-1]):
        if c % WORD_BITS:
            raise ValueError(
                f"channels[{i}] = {c} is not a multiple of {WORD_BITS}: packed words cannot be concatenated"
            )
    return torch.cat(list(parts), dim=-1)


def _per_channel(values: Tensor) -> Tensor:
    """``(N, C)`` or ``(C,)`` -> broadcastable against ``(N, C, H, W)``."""
    return values.view(1, -1, 1, 1) if values.dim() == 1 else values[:, :, None, None]


class FusedBinaryConv2d(nn.Module):
    """Inference form of a binary convolution block: packed weights and one folded affine.

    ``forward`` computes ``out = TA(popcount_conv(x_packed, w) * scale + bias + residual)``
    (each epilogue step optional) with :func:`hidiff_kernels.binary_conv2d_fused`, and with
    ``pack=True`` also the packed binarisation of ``out`` at the next layer's TB threshold.

    Args:
        weight: float ``(O, I, KH, KW)``; only its signs are kept (packed ``(O, KH, KW, ceil(I/32))``
            int32 buffer ``weight``).
        scale, bias: float ``(O,)`` per-channel affine of the popcount (alpha and BN folded, see
            :func:`binary_conv_affine`); buffers.
        stride, padding, dilation: as in ``nn.Conv2d`` (ints or pairs).

    The buffers are the deployable artifact (1 bit per weight); the module has no parameters.
    """

    packed = True

    def __init__(
        self,
        weight: Tensor,
        scale: Tensor,
        bias: Tensor,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
    ) -> None:
        super().__init__()
        if weight.dim() != 4:
            raise ValueError(f"weight must be 4-D (O, I, KH, KW), got shape {tuple(weight.shape)}")
        out_channels = weight.shape[0]
        for name, value in (("scale", scale), ("bias", bias)):
            if tuple(value.shape) != (out_channels,):
                raise ValueError(f"{name} must have shape (O,) = ({out_channels},), got {tuple(value.shape)}")
        self.in_channels = weight.shape[1]
        self.out_channels = out_channels
        self.stride = ops.as_pair(stride, "stride")
        self.padding = ops.as_pair(padding, "padding")
        self.dilation = ops.as_pair(dilation, "dilation")
        self.register_buffer("weight", ops.pack_weight(weight.detach().float()))
        self.register_buffer("scale", scale.detach().float().contiguous())
        self.register_buffer("bias", bias.detach().float().contiguous())

    @classmethod
    def from_binary_convs(cls, convs: Sequence[BinaryConv2d], bns: Sequence[_BatchNorm | None]) -> FusedBinaryConv2d:
        """One fused conv for parallel BinaryConv2d layers that read the same input (outputs concatenated).

        Args:
            convs: BinaryConv2d layers with one input width and one geometry, ``groups=1`` and no
                learnable threshold (fold such thresholds into the TB threshold instead).
            bns: the BatchNorm after each conv (or None).

        Returns:
            a FusedBinaryConv2d with ``sum(conv.out_channels)`` outputs, in the order of ``convs``.
        """
        if not convs or len(convs) != len(bns):
            raise ValueError(f"convs and bns must be non-empty and of one length, got {len(convs)}, {len(bns)}")
        first = convs[0]
        for conv in convs:
            if not isinstance(conv, BinaryConv2d):
                raise TypeError(f"convs must be BinaryConv2d layers, got {type(conv).__name__}")
            if conv.groups != 1 or conv.threshold is not None:
                raise ValueError(f"only groups=1 BinaryConv2d without a learnable threshold can be fused, got {conv}")
            geometry = (conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
            if geometry != (first.in_channels, first.kernel_size, first.stride, first.padding, first.dilation):
                raise ValueError(f"parallel convs must share in_channels and geometry, got {first} and {conv}")
        affines = [binary_conv_affine(conv, bn) for conv, bn in zip(convs, bns, strict=True)]
        return cls(
            torch.cat([conv.weight.detach() for conv in convs]),
            torch.cat([scale for scale, _ in affines]),
            torch.cat([bias for _, bias in affines]),
            first.stride,
            first.padding,
            first.dilation,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.weight.shape[1:3])}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
        )

    def prepare(self, x: Tensor, threshold: Tensor | None) -> Tensor:
        """TB and packing: float ``(N, I, H, W)``, threshold ``(I,)``/``(N, I)``/None -> int32 ``(N, H, W, words)``."""
        return ops.binarize_pack(x, threshold)

    def can_split(self, channels: int) -> bool:
        """Whether the input's first ``channels`` channels can be prepared apart from the rest
        (:meth:`concat_inputs`): they must fill whole 32-bit words."""
        return channels % WORD_BITS == 0

    @staticmethod
    def concat_inputs(parts: Sequence[Tensor], channels: Sequence[int]) -> Tensor:
        """Prepared inputs of consecutive channel ranges -> the prepared input of their concatenation."""
        return concat_packed(parts, channels)

    @staticmethod
    def upsample_input(x_in: Tensor, factor: int = 2) -> Tensor:
        """The prepared input of the nearest-upsampled tensor, from the prepared low-resolution one."""
        return upsample_packed(x_in, factor)

    def forward(
        self,
        x_in: Tensor,
        residual: Tensor | None = None,
        gamma: Tensor | None = None,
        zeta: Tensor | None = None,
        beta: Tensor | None = None,
        threshold: Tensor | None = None,
        pack: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """The block in one pass.

        Args:
            x_in: int32 ``(N, H, W, ceil(I/32))`` from :meth:`prepare` (or the previous block's ``pack``).
            residual: float32 ``(N, O, Ho, Wo)`` added before TA, or None.
            gamma, zeta: float32 ``(N, O)``; beta: float32 ``(O,)``: the TA (all or none).
            threshold: float32 ``(O,)``/``(N, O)`` TB threshold of the next layer (with ``pack``).
            pack: also prepare the output for the next layer.

        Returns:
            ``(out, next_in)``: float32 ``(N, O, Ho, Wo)`` and, with ``pack``, int32
            ``(N, Ho, Wo, ceil(O/32))`` (None without).
        """
        out, packed = ops.binary_conv2d_fused(
            x_in,
            self.weight,
            self.in_channels,
            self.stride,
            self.padding,
            self.dilation,
            self.scale,
            self.bias,
            residual,
            gamma,
            zeta,
            beta,
            threshold,
            pack,
        )
        return out, (packed if pack else None)


class FusedConv2d(nn.Module):
    """The full-precision twin of :class:`FusedBinaryConv2d`: ``conv(x - threshold)`` with BN folded in.

    Same protocol; a prepared input is the shifted float tensor ``x - threshold`` (the real
    form of TB is a time-dependent shift of the conv's input). Plain torch ops.

    Args:
        weight: float ``(O, I, KH, KW)`` (BN already folded, see :func:`fold_batchnorm_into_weight`).
        bias: float ``(O,)``.
        stride, padding, dilation: as in ``nn.Conv2d``.
    """

    packed = False

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
    ) -> None:
        super().__init__()
        if weight.dim() != 4:
            raise ValueError(f"weight must be 4-D (O, I, KH, KW), got shape {tuple(weight.shape)}")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape (O,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
        self.in_channels = weight.shape[1]
        self.out_channels = weight.shape[0]
        self.stride = ops.as_pair(stride, "stride")
        self.padding = ops.as_pair(padding, "padding")
        self.dilation = ops.as_pair(dilation, "dilation")
        self.register_buffer("weight", weight.detach().float().contiguous())
        self.register_buffer("bias", bias.detach().float().contiguous())

    @classmethod
    def from_convs(cls, convs: Sequence[nn.Conv2d], bns: Sequence[_BatchNorm | None]) -> FusedConv2d:
        """One conv for parallel ``nn.Conv2d`` layers reading the same input, each followed by a BN (or None)."""
        if not convs or len(convs) != len(bns):
            raise ValueError(f"convs and bns must be non-empty and of one length, got {len(convs)}, {len(bns)}")
        first = convs[0]
        weights, biases = [], []
        for conv, bn in zip(convs, bns, strict=True):
            if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.padding_mode != "zeros":
                raise ValueError(f"convs must be nn.Conv2d with groups=1 and zero padding, got {conv}")
            geometry = (conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
            if geometry != (first.in_channels, first.kernel_size, first.stride, first.padding, first.dilation):
                raise ValueError(f"parallel convs must share in_channels and geometry, got {first} and {conv}")
            if bn is None:
                weight = conv.weight.detach().float()
                bias = conv.bias.detach().float() if conv.bias is not None else weight.new_zeros(conv.out_channels)
            else:
                weight, bias = fold_batchnorm_into_weight(conv.weight, conv.bias, bn)
            weights.append(weight)
            biases.append(bias)
        return cls(torch.cat(weights), torch.cat(biases), first.stride, first.padding, first.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.weight.shape[2:])}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
        )

    def prepare(self, x: Tensor, threshold: Tensor | None) -> Tensor:
        """``x - threshold``: float ``(N, I, H, W)``, threshold ``(I,)``/``(N, I)``/None -> float ``(N, I, H, W)``."""
        return x if threshold is None else x - _per_channel(threshold)

    def can_split(self, channels: int) -> bool:
        """Always: a shifted float tensor splits at any channel."""
        return True

    @staticmethod
    def concat_inputs(parts: Sequence[Tensor], channels: Sequence[int]) -> Tensor:
        """Prepared inputs of consecutive channel ranges -> the prepared input of their concatenation."""
        return torch.cat(list(parts), dim=1)

    @staticmethod
    def upsample_input(x_in: Tensor, factor: int = 2) -> Tensor:
        """The prepared input of the nearest-upsampled tensor (the shift commutes with copying pixels)."""
        return F.interpolate(x_in, scale_factor=float(factor), mode="nearest")

    def forward(
        self,
        x_in: Tensor,
        residual: Tensor | None = None,
        gamma: Tensor | None = None,
        zeta: Tensor | None = None,
        beta: Tensor | None = None,
        threshold: Tensor | None = None,
        pack: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Same contract as :meth:`FusedBinaryConv2d.forward`, with float prepared inputs (``x - threshold``)."""
        out = F.conv2d(x_in, self.weight, self.bias, self.stride, self.padding, self.dilation)
        if residual is not None:
            out = out + residual
        if gamma is not None:
            out = ops.time_activation(out, gamma, zeta, beta)
        return out, (self.prepare(out, threshold) if pack else None)
