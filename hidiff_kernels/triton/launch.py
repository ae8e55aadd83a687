"""Torch-facing wrappers of the Triton kernels: argument checks, allocation, launch.

Each function has the signature and contract of the ``hidiff::`` op of the same name (see
:mod:`hidiff_kernels.ops` and :mod:`hidiff_kernels.reference`) and is what
:mod:`.registration` installs as the op's CUDA kernel. They also run on CPU tensors under
``TRITON_INTERPRET=1``, which is how the tests check them without a GPU.

Kernels launch on the current stream of the tensors' device, with no host synchronisation and
no data-dependent control flow on the host, so the calls can be captured in CUDA graphs (after
a first call has compiled the kernel).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
from torch import Tensor

from .. import ops, reference
from . import kernels

# Kernels whose results must equal the reference to the last bit are compiled without
# multiply-add contraction (see the module docstring of .kernels).
_EXACT_FLOAT = {"enable_fp_fusion": False}

_PACK_PIXELS = 64
_ELEMENTWISE_BLOCK = 1024
_CONV_BLOCK_M = 64
_CONV_WARPS = 4
_SEED_MASK = (1 << 64) - 1


def _on_device(t: Tensor) -> contextlib.AbstractContextManager:
    """Makes ``t``'s GPU the current device for the launch (a no-op for CPU tensors)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _threshold_arguments(threshold: Tensor | None, like: Tensor) -> tuple[Tensor, int]:
    """float32 contiguous threshold (or a dummy pointer) and its stride between samples (0 if shared)."""
    if threshold is None:
        return like, 0
    values = threshold.to(torch.float32).contiguous()
    return values, (values.shape[1] if values.dim() == 2 else 0)


def binarize_pack(x: Tensor, threshold: Tensor | None = None) -> Tensor:
    """Fused TB + sign + packing: float ``(N, C, H, W)`` (any strides) -> int32 ``(N, H, W, ceil(C/32))``.

    Bit 1 where ``x <= threshold`` or NaN (value -1), 0 where greater, compared in float32 (float64
    for float64 input, see :func:`reference.compare_dtype`); ``threshold`` is None (0), ``(C,)`` or
    ``(N, C)``. Pad bits of the last word are 0.
    """
    ops.check_binarize_pack_args(x, threshold)
    if x.dtype == torch.float64:
        # The kernel compares in float32: float64 is compared here and its +-1 signs packed.
        above = x > reference.threshold_view(threshold, x)
        return binarize_pack(torch.where(above, 1.0, -1.0).to(torch.float32))
    n, c, h, w = x.shape
    words = reference.packed_words(c)
    out = torch.empty((n, h, w, words), dtype=torch.int32, device=x.device)
    total = n * h * w
    if total == 0:
        return out
    threshold_values, threshold_stride = _threshold_arguments(threshold, x)
    grid = (triton.cdiv(total, _PACK_PIXELS), words)
    with _on_device(x):
        kernels.binarize_pack_kernel[grid](
            x,
            threshold_values,
            out,
            total,
            c,
            h,
            w,
            *x.stride(),
            threshold_stride,
            words,
            HAS_THRESHOLD=threshold is not None,
            BLOCK_P=_PACK_PIXELS,
        )
    return out


def pack_weight(w: Tensor) -> Tensor:
    """float ``(O, I, KH, KW)`` -> int32 ``(O, KH, KW, ceil(I/32))``, bit 0 (+1) where ``w > 0``.

    A weight tensor has the memory order of an NCHW batch, so this is :func:`binarize_pack`.
    """
    ops.check_pack_weight_args(w)
    return binarize_pack(w)


def _conv_blocks(out_channels: int, words: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_KW): channel tile (a multiple of 32, so packing owns whole words) and words per step."""
    block_n = 32 if out_channels <= 32 else 64
    block_kw = min(4, triton.next_power_of_2(words))
    return block_n, block_kw


def binary_conv2d_fused(
    x_packed: Tensor,
    w_packed: Tensor,
    in_channels: int,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    scale: Tensor | None,
    bias: Tensor | None,
    residual: Tensor | None,
    gamma: Tensor | None,
    zeta: Tensor | None,
    beta: Tensor | None,
    threshold: Tensor | None,
    pack: bool,
) -> tuple[Tensor, Tensor]:
    """Binary convolution with the fused epilogue (the contract of ``reference.binary_conv2d_fused``).

    Args:
        x_packed: int32 ``(N, H, W, ceil(in_channels/32))`` (any strides).
        w_packed: int32 ``(O, KH, KW, ceil(in_channels/32))`` (any strides).
        in_channels: logical input channel count.
        stride, padding, dilation: two ints each.
        scale, bias: optional float ``(O,)``: ``u = count * scale + bias``.
        residual: optional float32 ``(N, O, Ho, Wo)`` added to ``u``.
        gamma, zeta: optional float32 ``(N, O)``, beta: optional float32 ``(O,)``: TA of ``u``.
        threshold: optional float32 ``(O,)`` or ``(N, O)`` for the packing (None means 0).
        pack: whether to also binarise and pack the output.

    Returns:
        ``(out, packed)``: float32 ``(N, O, Ho, Wo)`` contiguous, and int32
        ``(N, Ho, Wo, ceil(O/32))``, or an empty int32 ``(0,)`` tensor when ``pack`` is False.
    """
    n, o, ho, wo = ops.check_binary_conv2d_fused_args(
        x_packed,
        w_packed,
        in_channels,
        stride,
        padding,
        dilation,
        scale,
        bias,
        residual,
        gamma,
        zeta,
        beta,
        threshold,
        pack,
    )
    device = x_packed.device
    out = torch.empty((n, o, ho, wo), dtype=torch.float32, device=device)
    out_words = reference.packed_words(o)
    packed_shape = (n, ho, wo, out_words) if pack else (0,)
    packed = torch.empty(packed_shape, dtype=torch.int32, device=device)
    if out.numel() == 0:
        return out, packed

    words = reference.packed_words(in_channels)
    _, h, w, _ = x_packed.shape
    _, kh, kw, _ = w_packed.shape

    def float32(t: Tensor | None) -> Tensor:
        # Absent operands are never read (their HAS_* flag is off): any pointer will do.
        return out if t is None else t.to(torch.float32).contiguous()

    threshold_values, threshold_stride = _threshold_arguments(threshold if pack else None, out)
    block_n, block_kw = _conv_blocks(o, words)
    grid = (triton.cdiv(n * ho * wo, _CONV_BLOCK_M), triton.cdiv(o, block_n))
    with _on_device(x_packed):
        kernels.binary_conv2d_kernel[grid](
            x_packed,
            w_packed,
            out,
            float32(scale),
            float32(bias),
            float32(residual),
            float32(gamma),
            float32(zeta),
            float32(beta),
            threshold_values,
            packed if pack else out,
            n,
            h,
            w,
            in_channels,
            o,
            ho,
            wo,
            kw,
            kh * kw,
            words,
            *x_packed.stride(),
            *w_packed.stride(),
            *stride,
            *padding,
            *dilation,
            threshold_stride,
            out_words,
            HAS_SCALE=scale is not None,
            HAS_BIAS=bias is not None,
            HAS_RESIDUAL=residual is not None,
            HAS_TA=gamma is not None,
            PACK=pack,
            HAS_THRESHOLD=pack and threshold is not None,
            BLOCK_M=_CONV_BLOCK_M,
            BLOCK_N=block_n,
            BLOCK_KW=block_kw,
            num_warps=_CONV_WARPS,
            **_EXACT_FLOAT,
        )
    return out, packed


def binary_conv2d(
    x_packed: Tensor,
    w_packed: Tensor,
    in_channels: int,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    scale: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """XNOR-popcount convolution with exact zero padding, then ``* scale + bias``.

    Args:
        x_packed: int32 ``(N, H, W, ceil(in_channels/32))``; w_packed: int32 ``(O, KH, KW, ceil(in_channels/32))``.
        in_channels: logical input channel count.
        stride, padding, dilation: two ints each.
        scale, bias: optional float ``(O,)``.

    Returns:
        float32 ``(N, O, Ho, Wo)``, contiguous NCHW.
    """
    out, _ = binary_conv2d_fused(
        x_packed, w_packed, in_channels, stride, padding, dilation, scale, bias, None, None, None, None, None, False
    )
    return out


def time_activation(u: Tensor, gamma: Tensor, zeta: Tensor, beta: Tensor) -> Tensor:
    """TA (paper Eq. 16): ``(u - gamma) + zeta`` where ``u > gamma``, else ``beta * (u - gamma) + zeta``.

    Args:
        u: float ``(N, C, ...)``; gamma, zeta: float ``(N, C)``; beta: float ``(C,)``.

    Returns:
        Tensor of u's shape and dtype, contiguous. Half-precision inputs are computed in float32
        (float64 stays float64), as in the reference.
    """
    ops.check_time_activation_args(u, gamma, zeta, beta)
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    uc = u.to(compute).contiguous()
    g, z, b = (t.to(compute).contiguous() for t in (gamma, zeta, beta))
    out = torch.empty_like(uc, memory_format=torch.contiguous_format)
    numel = uc.numel()
    if numel == 0:
        return out.to(u.dtype)
    n, c = u.shape[0], u.shape[1]
    inner = numel // (n * c)
    with _on_device(u):
        kernels.time_activation_kernel[(triton.cdiv(numel, _ELEMENTWISE_BLOCK),)](
            uc, g, z, b, out, numel, inner, c, BLOCK=_ELEMENTWISE_BLOCK, **_EXACT_FLOAT
        )
    return out.to(u.dtype)


def bernoulli_step(
    y_t: Tensor, eps_hat: Tensor, prior: Tensor, coef: Tensor, mode: str, seed: int, offset: int
) -> Tensor:
    """Fused Bernoulli posterior / DDIM step and draw (contract of ``reference.bernoulli_step``).

    Args:
        y_t, eps_hat, prior: float32 ``(N, ...)`` of one shape (any strides; the counter follows
            the logical row-major order).
        coef: float32 ``(N, 2)``.
        mode: ``"posterior"`` or ``"ddim"``.
        seed: int64; its two's-complement bits are the Philox key.
        offset: non-negative counter offset of element 0.

    Returns:
        float32 tensor of y_t's shape, values in {0, 1}, contiguous.
    """
    ops.check_bernoulli_step_args(y_t, eps_hat, prior, coef, mode, seed, offset)
    reference.check_no_nan_probabilities(y_t, eps_hat, prior)
    y, e, p, c = (t.contiguous() for t in (y_t, eps_hat, prior, coef))
    out = torch.empty(y_t.shape, dtype=torch.float32, device=y_t.device)
    numel = out.numel()
    if numel == 0:
        return out
    key = seed & _SEED_MASK
    with _on_device(y_t):
        kernels.bernoulli_step_kernel[(triton.cdiv(numel, _ELEMENTWISE_BLOCK),)](
            y,
            e,
            p,
            c,
            out,
            numel,
            numel // y_t.shape[0],
            key & 0xFFFFFFFF,
            key >> 32,
            offset,
            POSTERIOR=mode == "posterior",
            BLOCK=_ELEMENTWISE_BLOCK,
            **_EXACT_FLOAT,
        )
    return out


# The kernel of every op, by op name (what .registration installs).
KERNELS = {
    "binarize_pack": binarize_pack,
    "pack_weight": pack_weight,
    "binary_conv2d": binary_conv2d,
    "binary_conv2d_fused": binary_conv2d_fused,
    "time_activation": time_activation,
    "bernoulli_step": bernoulli_step,
}
