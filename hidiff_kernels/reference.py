"""Pure-PyTorch reference of every ``hidiff::`` op: the executable specification.

Every compiled kernel is tested against these functions (bit-exact for packed and integer
results). They are also registered as the kernels of any backend that has no compiled one, so
the ops work on every device, only slower.

Bit layout (shared by all backends): channel ``c`` of a pixel is bit ``c % 32`` of int32 word
``c // 32``; bit 1 means -1 and bit 0 means +1; unused high bits of the last word are 0.
Activations are packed channels-last ``(N, H, W, words)``, weights ``(O, KH, KW, words)``,
``words = ceil(C / 32)``. Binarisation (paper Eq. 15): +1 if ``x > threshold`` else -1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

WORD_BITS = 32


def packed_words(channels: int) -> int:
    """Number of int32 words holding ``channels`` bits."""
    return (channels + WORD_BITS - 1) // WORD_BITS


def sign_pm1(x: Tensor) -> Tensor:
    """+1 where ``x > 0`` else -1 (0 and NaN map to -1, unlike ``torch.sign``), in x's dtype."""
    return torch.where(x > 0, 1.0, -1.0).to(x.dtype)


def pack_bits(bits: Tensor) -> Tensor:
    """Packs a bool tensor ``(..., C)`` along its last dim into int32 words ``(..., ceil(C/32))``."""
    channels = bits.shape[-1]
    words = packed_words(channels)
    padded = F.pad(bits.to(torch.int64), (0, words * WORD_BITS - channels))
    weights = torch.arange(WORD_BITS, device=bits.device, dtype=torch.int64)
    values = (padded.view(*bits.shape[:-1], words, WORD_BITS) << weights).sum(-1)
    # Words with bit 31 set are negative as int32: wrap the unsigned value into that range.
    values = torch.where(values >= 2**31, values - 2**32, values)
    return values.to(torch.int32)


def unpack_bits(packed: Tensor, channels: int) -> Tensor:
    """Inverse of :func:`pack_bits`: int32 ``(..., words)`` -> bool ``(..., channels)``."""
    shifts = torch.arange(WORD_BITS, device=packed.device, dtype=torch.int64)
    bits = (packed.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return bits.flatten(-2)[..., :channels].bool()


def _threshold_view(threshold: Tensor | None, x: Tensor) -> Tensor:
    if threshold is None:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    if threshold.dim() == 1:
        return threshold.float().view(1, -1, 1, 1)
    return threshold.float().view(threshold.shape[0], threshold.shape[1], 1, 1)


def binarize_pack(x: Tensor, threshold: Tensor | None = None) -> Tensor:
    """Fused TB + sign + packing: float ``(N, C, H, W)`` -> int32 ``(N, H, W, ceil(C/32))``.

    The comparison is made in float32. ``threshold`` is None (0), ``(C,)`` or ``(N, C)``.
    """
    minus_one = ~(x.float() > _threshold_view(threshold, x))
    return pack_bits(minus_one.permute(0, 2, 3, 1))


def pack_weight(w: Tensor) -> Tensor:
    """float ``(O, I, KH, KW)`` -> int32 ``(O, KH, KW, ceil(I/32))``, +1 where ``w > 0``."""
    return binarize_pack(w)


def unpack_pm1(packed: Tensor, channels: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Packed ``(N, H, W, words)`` -> +-1 tensor ``(N, channels, H, W)`` of ``dtype``."""
    minus_one = unpack_bits(packed, channels)
    return (1 - 2 * minus_one.to(dtype)).permute(0, 3, 1, 2)


def binary_conv2d(
    x_packed: Tensor,
    w_packed: Tensor,
    in_channels: int,
    stride: list[int] | tuple[int, int] = (1, 1),
    padding: list[int] | tuple[int, int] = (0, 0),
    dilation: list[int] | tuple[int, int] = (1, 1),
    scale: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """``conv2d(sign(x), sign(w))`` with zero padding, then ``* scale + bias``; float32 NCHW.

    The +-1 convolution runs in float64, exact for every realistic reduction length, and the
    integer count is rounded to float32 once, as the compiled kernels do.
    """
    x = unpack_pm1(x_packed, in_channels, torch.float64)
    w = unpack_pm1(w_packed, in_channels, torch.float64)
    count = F.conv2d(x, w, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation))
    out = count.to(torch.float32)
    if scale is not None:
        out = out * scale.float().view(1, -1, 1, 1)
    if bias is not None:
        out = out + bias.float().view(1, -1, 1, 1)
    return out.contiguous()


def time_activation(u: Tensor, gamma: Tensor, zeta: Tensor, beta: Tensor) -> Tensor:
    """TA (paper Eq. 16): ``u - gamma + zeta`` if ``u > gamma`` else ``beta * (u - gamma) + zeta``.

    ``u`` is ``(N, C, ...)``, ``gamma`` and ``zeta`` ``(N, C)``, ``beta`` ``(C,)``. Half-precision
    inputs are computed in float32 and returned in their own dtype.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    extra = (1,) * (u.dim() - 2)
    uc = u.to(compute)
    g = gamma.to(compute).reshape(*gamma.shape, *extra)
    z = zeta.to(compute).reshape(*zeta.shape, *extra)
    b = beta.to(compute).reshape(1, -1, *extra)
    shifted = uc - g
    return torch.where(uc > g, shifted + z, b * shifted + z).to(u.dtype).contiguous()


def approx_sign_ste(x: Tensor) -> Tensor:
    """Sign in the forward pass with the Bi-Real ApproxSign gradient, written with plain autograd.

    Gradient: ``2 + 2x`` on [-1, 0), ``2 - 2x`` on [0, 1), 0 elsewhere.
    """
    approx = torch.where(
        x < -1,
        -torch.ones_like(x),
        torch.where(x < 0, 2 * x + x * x, torch.where(x < 1, 2 * x - x * x, torch.ones_like(x))),
    )
    return sign_pm1(x).detach() - approx.detach() + approx


def weight_sign_ste(w: Tensor) -> Tensor:
    """Sign of the weights with the clipped identity gradient (1 where ``|w| <= 1``), plain autograd."""
    clipped = w.clamp(-1, 1)
    return sign_pm1(w).detach() - clipped.detach() + clipped
