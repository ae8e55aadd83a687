"""``@triton.jit`` kernels of the ``hidiff::`` ops (launched by :mod:`hidiff_kernels.triton.launch`).

Bit layout (see :mod:`hidiff_kernels.reference`): channel ``c`` is bit ``c % 32`` of int32 word
``c // 32``, bit 1 means -1 and bit 0 means +1, unused high bits of the last word are 0.

Floating-point contract: every kernel performs the reference's float32 operations in the
reference's order. The launcher passes ``enable_fp_fusion=False`` so that no multiply and add
are contracted into an FMA (which would round once instead of twice), and divisions use
``div_rn`` (IEEE round-to-nearest) instead of Triton's default approximate division.

Only long-standing Triton APIs are used (``tl.dot`` with int8 operands and
``out_dtype=tl.int32``, ``tl.reshape``, ``tl.umulhi``, ``tl.math.div_rn``), so the kernels
compile with the Triton 3.x releases that ship with older torch versions too.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Philox4x32-10 constants (Salmon et al., SC'11), as in reference.philox4x32.
PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)
PHILOX_ROUNDS = tl.constexpr(10)
POSTERIOR_EPS = tl.constexpr(1e-12)


@triton.jit
def binarize_pack_kernel(
    x_ptr,
    threshold_ptr,
    out_ptr,
    total_pixels,
    C,
    H,
    W,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    threshold_stride_n,
    words,
    HAS_THRESHOLD: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Packs one 32-channel word for ``BLOCK_P`` pixels.

    Grid: ``(cdiv(N * H * W, BLOCK_P), words)``.
    x: float ``(N, C, H, W)`` with any strides; threshold: float32 at
    ``threshold[n * threshold_stride_n + c]`` (stride 0 for a per-channel threshold);
    out: contiguous int32 ``(N, H, W, words)``.
    """
    pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    word = tl.program_id(1)
    bit = tl.arange(0, 32)
    channel = word * 32 + bit
    pixel_ok = pixel < total_pixels
    channel_ok = channel < C
    mask = pixel_ok[:, None] & channel_ok[None, :]

    hw = H * W
    n = (pixel // hw).to(tl.int64)
    rest = pixel % hw
    h = rest // W
    w = rest % W
    offsets = (
        n[:, None] * stride_xn + channel[None, :].to(tl.int64) * stride_xc + (h * stride_xh + w * stride_xw)[:, None]
    )
    # The comparison is made in float32, as in the reference (float64 inputs are rounded first).
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_THRESHOLD:
        threshold = tl.load(threshold_ptr + n[:, None] * threshold_stride_n + channel[None, :], mask=mask, other=0.0)
    else:
        threshold = 0.0
    # "not greater" (rather than "less or equal") sends NaN to -1, as the reference does.
    minus_one = tl.where(x > threshold, 0, 1)
    minus_one = tl.where(mask, minus_one, 0).to(tl.uint32)
    # Distinct bits: their sum is their bitwise OR.
    packed = tl.sum(minus_one << bit[None, :].to(tl.uint32), axis=1)
    tl.store(out_ptr + pixel.to(tl.int64) * words + word, packed.to(tl.int32, bitcast=True), mask=pixel_ok)


@triton.jit
def time_activation_kernel(u_ptr, gamma_ptr, zeta_ptr, beta_ptr, out_ptr, numel, inner, C, BLOCK: tl.constexpr):
    """TA (paper Eq. 16) on contiguous ``u`` viewed as ``(N * C, inner)``; all tensors of one dtype.

    ``out = where(u > g, (u - g) + z, b * (u - g) + z)`` with ``g, z`` of the row and ``b`` of
    the channel. Grid: ``(cdiv(numel, BLOCK),)``.
    """
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < numel
    row = index // inner
    u = tl.load(u_ptr + index, mask=mask, other=0.0)
    g = tl.load(gamma_ptr + row, mask=mask, other=0.0)
    z = tl.load(zeta_ptr + row, mask=mask, other=0.0)
    b = tl.load(beta_ptr + row % C, mask=mask, other=0.0)
    shifted = u - g
    tl.store(out_ptr + index, tl.where(u > g, shifted + z, b * shifted + z), mask=mask)


@triton.jit
def philox_first_word(c0, c1, key0, key1):
    """First output word of Philox4x32-10 for counters ``(c0, c1, 0, 0)`` and key ``(key0, key1)``.

    All operands are uint32; products wrap modulo 2^32 and ``umulhi`` gives the high halves.
    """
    c2 = tl.zeros_like(c0)
    c3 = tl.zeros_like(c0)
    m0 = tl.full(c0.shape, PHILOX_M0, tl.uint32)
    m1 = tl.full(c0.shape, PHILOX_M1, tl.uint32)
    k0 = tl.full(c0.shape, 0, tl.uint32) + key0
    k1 = tl.full(c0.shape, 0, tl.uint32) + key1
    for _ in tl.static_range(PHILOX_ROUNDS):
        hi0 = tl.umulhi(c0, m0)
        lo0 = c0 * m0
        hi1 = tl.umulhi(c2, m1)
        lo1 = c2 * m1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        # The key bump after the last round is unused, so computing it is harmless.
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0


# The seed words and the offset are never specialised on their value (Triton turns an int
# argument equal to 1 into a compile-time constant, which would also recompile per seed).
@triton.jit(do_not_specialize=["key0", "key1", "offset"])
def bernoulli_step_kernel(
    y_ptr,
    eps_ptr,
    prior_ptr,
    coef_ptr,
    out_ptr,
    numel,
    inner,
    key0,
    key1,
    offset,
    POSTERIOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Bernoulli posterior / DDIM step with the counter RNG of ``reference.counter_uniform``.

    Inputs are contiguous float32 ``(N, inner)`` and ``coef`` ``(N, 2)``; element ``i`` draws
    ``uniform(seed, offset + i) < mean[i]``. ``key0, key1`` are the low and high 32 bits of
    the seed. Grid: ``(cdiv(numel, BLOCK),)``.
    """
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < numel
    y = tl.load(y_ptr + index, mask=mask, other=0.0)
    e = tl.load(eps_ptr + index, mask=mask, other=0.0)
    p = tl.load(prior_ptr + index, mask=mask, other=0.0)
    sample = index // inner
    a = tl.load(coef_ptr + 2 * sample, mask=mask, other=0.0)
    b = tl.load(coef_ptr + 2 * sample + 1, mask=mask, other=0.0)

    # reference.bernoulli_mean, operation for operation; NaN propagates through the clamps.
    y0_hat = tl.abs(y - e)
    if POSTERIOR:
        likelihood = tl.abs((1.0 - y) - p)
        mix = (1.0 - a) * likelihood
        prior1 = b * y0_hat + (1.0 - b) * p
        prior0 = b * (1.0 - y0_hat) + (1.0 - b) * (1.0 - p)
        theta1 = (a * y + mix) * prior1
        theta0 = (a * (1.0 - y) + mix) * prior0
        total = theta0 + theta1
        mean = tl.math.div_rn(theta1, tl.where(total < POSTERIOR_EPS, POSTERIOR_EPS, total))
    else:
        m = a * y + b * y0_hat
        low = tl.where(m < 0.0, 0.0, m)
        mean = tl.where(low > 1.0, 1.0, low)

    # Counter (lo32(offset + i), hi32(offset + i), 0, 0); int64 arithmetic as in the reference.
    counter = offset + index
    c0 = (counter & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((counter >> 32) & 0xFFFFFFFF).to(tl.uint32)
    r0 = philox_first_word(c0, c1, key0.to(tl.uint32), key1.to(tl.uint32))
    # 24 bits: exact in float32, and so is the product with 2^-24.
    uniform = (r0 >> 8).to(tl.float32) * 5.9604644775390625e-08
    tl.store(out_ptr + index, tl.where(uniform < mean, 1.0, 0.0), mask=mask)


@triton.jit
def unpack_pm1_rows(words, bit, keep):
    """Packed words ``(R, KW)`` -> int8 ``(R, KW * 32)``: +1 for bit 0, -1 for bit 1, 0 where ``keep`` is False.

    ``keep`` is a ``(R, KW, 32)``-broadcastable mask; column ``j * 32 + b`` is bit ``b`` of word ``j``.
    """
    bits = (words[:, :, None] >> bit[None, None, :]) & 1
    values = tl.where(keep, 1 - 2 * bits, 0).to(tl.int8)
    return tl.reshape(values, (words.shape[0], words.shape[1] * 32))


@triton.jit
def unpack_pm1_cols(words, bit):
    """Packed words ``(KW, Q)`` -> int8 ``(KW * 32, Q)`` of +-1; row ``j * 32 + b`` is bit ``b`` of word ``j``."""
    bits = (words[:, None, :] >> bit[None, :, None]) & 1
    values = (1 - 2 * bits).to(tl.int8)
    return tl.reshape(values, (words.shape[0] * 32, words.shape[1]))


@triton.jit
def binary_conv2d_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    scale_ptr,
    bias_ptr,
    residual_ptr,
    gamma_ptr,
    zeta_ptr,
    beta_ptr,
    threshold_ptr,
    packed_ptr,
    N,
    H,
    W,
    C,
    out_channels,
    Ho,
    Wo,
    KW,
    taps,
    words,
    stride_xn,
    stride_xh,
    stride_xw,
    stride_xc,
    stride_wo,
    stride_wh,
    stride_ww,
    stride_wc,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    threshold_stride_n,
    out_words,
    HAS_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_TA: tl.constexpr,
    PACK: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_KW: tl.constexpr,
):
    """Implicit-GEMM binary convolution with the fused epilogue of ``binary_conv2d_fused``.

    GEMM view: rows are the output pixels ``m = (n * Ho + oh) * Wo + ow``, columns the output
    channels, and the reduction runs over (tap, input channel). Each step loads ``BLOCK_KW``
    packed words of one tap for ``BLOCK_M`` pixels and ``BLOCK_N`` channels, unpacks them to
    int8 +-1 in registers and accumulates ``tl.dot`` in int32, which is exact. Taps outside the
    image and the channels past ``C`` (pad bits and words past the end) unpack to 0 on the
    activation side, so they contribute exactly 0: zero padding is exact.

    Epilogue (float32, no FMA): ``u = count * scale + bias (+ residual)``, then optionally
    TA ``where(u > gamma, (u - gamma) + zeta, beta * (u - gamma) + zeta)``; ``u`` is stored
    to ``out`` (contiguous NCHW) and, with ``PACK``, binarised against ``threshold`` and packed
    into ``packed`` (contiguous ``(N, Ho, Wo, out_words)``). ``BLOCK_N`` is a multiple of 32,
    so every program owns whole output words.

    Grid: ``(cdiv(N * Ho * Wo, BLOCK_M), cdiv(O, BLOCK_N))``.
    """
    pixel = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    channel = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    hw_out = Ho * Wo
    pixel_ok = pixel < N * hw_out
    channel_ok = channel < out_channels
    n = pixel // hw_out
    rest = pixel % hw_out
    oh = rest // Wo
    ow = rest % Wo
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_pixel = x_ptr + n.to(tl.int64) * stride_xn
    w_channel = w_ptr + channel.to(tl.int64) * stride_wo
    bit = tl.arange(0, 32)
    word_in_block = tl.arange(0, BLOCK_KW)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for tap in range(0, taps):
        kh = tap // KW
        kw = tap % KW
        ih = ih0 + kh * dil_h
        iw = iw0 + kw * dil_w
        inside = pixel_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_tap = x_pixel + ih * stride_xh + iw * stride_xw
        w_tap = w_channel + kh * stride_wh + kw * stride_ww
        for word0 in range(0, words, BLOCK_KW):
            word = word0 + word_in_block
            word_ok = word < words
            x_words = tl.load(
                x_tap[:, None] + word[None, :] * stride_xc, mask=inside[:, None] & word_ok[None, :], other=0
            )
            w_words = tl.load(
                w_tap[None, :] + word[:, None] * stride_wc, mask=word_ok[:, None] & channel_ok[None, :], other=0
            )
            in_channel = word[:, None] * 32 + bit[None, :]
            keep = inside[:, None, None] & (in_channel < C)[None, :, :]
            a = unpack_pm1_rows(x_words, bit, keep)
            b = unpack_pm1_cols(w_words, bit)
            acc += tl.dot(a, b, out_dtype=tl.int32)

    u = acc.to(tl.float32)
    if HAS_SCALE:
        u = u * tl.load(scale_ptr + channel, mask=channel_ok, other=0.0)[None, :]
    if HAS_BIAS:
        u = u + tl.load(bias_ptr + channel, mask=channel_ok, other=0.0)[None, :]
    out_offsets = (n.to(tl.int64) * out_channels * hw_out + rest)[:, None] + channel.to(tl.int64)[None, :] * hw_out
    mask = pixel_ok[:, None] & channel_ok[None, :]
    if HAS_RESIDUAL:
        u = u + tl.load(residual_ptr + out_offsets, mask=mask, other=0.0)
    nc = n[:, None] * out_channels + channel[None, :]
    if HAS_TA:
        g = tl.load(gamma_ptr + nc, mask=mask, other=0.0)
        z = tl.load(zeta_ptr + nc, mask=mask, other=0.0)
        slope = tl.load(beta_ptr + channel, mask=channel_ok, other=0.0)[None, :]
        shifted = u - g
        u = tl.where(u > g, shifted + z, slope * shifted + z)
    tl.store(out_ptr + out_offsets, u, mask=mask)

    if PACK:
        if HAS_THRESHOLD:
            threshold = tl.load(
                threshold_ptr + n[:, None] * threshold_stride_n + channel[None, :], mask=mask, other=0.0
            )
        else:
            threshold = 0.0
        minus_one = tl.where(mask & ~(u > threshold), 1, 0).to(tl.uint32)
        shifted_bits = minus_one << (tl.arange(0, BLOCK_N) % 32)[None, :].to(tl.uint32)
        packed = tl.sum(tl.reshape(shifted_bits, (BLOCK_M, BLOCK_N // 32, 32)), axis=2)
        out_word = tl.program_id(1) * (BLOCK_N // 32) + tl.arange(0, BLOCK_N // 32)
        tl.store(
            packed_ptr + pixel.to(tl.int64)[:, None] * out_words + out_word[None, :],
            packed.to(tl.int32, bitcast=True),
            mask=pixel_ok[:, None] & (out_word < out_words)[None, :],
        )
