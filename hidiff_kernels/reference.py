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


def compare_dtype(x: Tensor) -> torch.dtype:
    """The dtype in which ``x`` is compared with its threshold: float64 for float64 input, else float32.

    float32 holds every float16/bfloat16 value exactly; rounding float64 to float32 would not (1e-300 would become 0).
    """
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def threshold_view(threshold: Tensor | None, x: Tensor) -> Tensor:
    """The threshold (None = 0, ``(C,)`` or ``(N, C)``) in :func:`compare_dtype`, broadcastable against NCHW ``x``."""
    dtype = compare_dtype(x)
    if threshold is None:
        return torch.zeros((), dtype=dtype, device=x.device)
    if threshold.dim() == 1:
        return threshold.to(dtype).view(1, -1, 1, 1)
    return threshold.to(dtype).view(threshold.shape[0], threshold.shape[1], 1, 1)


def binarize_pack(x: Tensor, threshold: Tensor | None = None) -> Tensor:
    """Fused TB + sign + packing: float ``(N, C, H, W)`` -> int32 ``(N, H, W, ceil(C/32))``.

    The comparison is made in :func:`compare_dtype` (float64 for float64 input, else float32), with the threshold
    cast to it. ``threshold`` is None (0), ``(C,)`` or ``(N, C)``.
    """
    minus_one = ~(x.to(compare_dtype(x)) > threshold_view(threshold, x))
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


def binary_conv2d_fused(
    x_packed: Tensor,
    w_packed: Tensor,
    in_channels: int,
    stride: list[int] | tuple[int, int],
    padding: list[int] | tuple[int, int],
    dilation: list[int] | tuple[int, int],
    scale: Tensor | None,
    bias: Tensor | None,
    residual: Tensor | None,
    gamma: Tensor | None,
    zeta: Tensor | None,
    beta: Tensor | None,
    threshold: Tensor | None,
    pack: bool,
) -> tuple[Tensor, Tensor]:
    """A binary block in one call: ``u = binary_conv2d(...) * scale + bias (+ residual)``, then TA.

    ``out = time_activation(u, gamma, zeta, beta)`` when ``gamma`` is given, else ``u``; every
    step in float32, in this order. ``packed = binarize_pack(out, threshold)`` when ``pack``,
    else an empty int32 tensor ``(0,)``. Returns ``(out, packed)``.
    """
    out = binary_conv2d(x_packed, w_packed, in_channels, stride, padding, dilation, scale, bias)
    if residual is not None:
        out = out + residual.float()
    if gamma is not None:
        out = time_activation(out, gamma, zeta, beta)
    packed = binarize_pack(out, threshold) if pack else out.new_empty((0,), dtype=torch.int32)
    return out.contiguous(), packed


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


# --- counter-based RNG and the fused Bernoulli step -------------------------------------------

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10


def _mulhilo32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of ``a * b`` for a 32-bit constant ``a`` and int64 ``b`` holding uint32.

    Split into 16-bit halves so that no intermediate leaves the int64 range.
    """
    low_part = a * (b & 0xFFFF)
    carry = a * (b >> 16) + (low_part >> 16)
    return carry >> 16, ((carry & 0xFFFF) << 16) | (low_part & 0xFFFF)


def philox4x32(counter: tuple[Tensor, Tensor, Tensor, Tensor], key: tuple[int, int]) -> tuple[Tensor, ...]:
    """Philox4x32-10 (Salmon et al., SC'11) on int64 tensors holding uint32 words.

    Args:
        counter: four int64 tensors of one shape, each word in [0, 2^32).
        key: two ints in [0, 2^32).

    Returns:
        the four output words, int64 tensors in [0, 2^32).
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_index in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if round_index + 1 < PHILOX_ROUNDS:
            k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def counter_uniform(seed: int, offset: int, numel: int, device: torch.device | str = "cpu") -> Tensor:
    """Uniform float32 numbers in [0, 1) from the counter-based RNG shared by every backend.

    Element ``i`` is ``(r >> 8) * 2^-24`` where ``r`` is the first word of Philox4x32-10 with key
    ``(seed mod 2^32, (seed >> 32) mod 2^32)`` and counter ``(lo32(offset + i), hi32(offset + i), 0, 0)``.
    ``seed`` is taken modulo 2^64; 24 bits make every value exact in float32.
    """
    seed &= (1 << 64) - 1
    index = torch.arange(numel, dtype=torch.int64, device=device) + offset
    zeros = torch.zeros_like(index)
    counter = (index & _MASK32, (index >> 32) & _MASK32, zeros, zeros)
    first = philox4x32(counter, (seed & _MASK32, seed >> 32))[0]
    return (first >> 8).to(torch.float32) * (2.0**-24)


BERNOULLI_MODES = ("posterior", "ddim")
POSTERIOR_EPS = 1e-12


def bernoulli_mean(y_t: Tensor, eps_hat: Tensor, prior: Tensor, coef: Tensor, mode: str) -> Tensor:
    """Mean of the next Bernoulli state, in float32, in the operation order every kernel follows.

    With ``y0_hat = |y_t - eps_hat|`` (calibration, paper Eq. 10):

    - ``mode="posterior"``, ``coef[n] = (alpha_t, abar_{t-1})``: the posterior of Eq. 7,
      ``theta1 / max(theta0 + theta1, 1e-12)``.
    - ``mode="ddim"``, ``coef[n] = (sigma_t, abar_{t-1} - sigma_t * abar_t)``:
      ``clip(sigma_t * y_t + c * y0_hat, 0, 1)`` (Alg. 2).

    Args:
        y_t, eps_hat, prior: float32 ``(N, ...)`` of one shape.
        coef: float32 ``(N, 2)``.
    """
    view = (-1,) + (1,) * (y_t.dim() - 1)
    a, b = coef[:, 0].reshape(view), coef[:, 1].reshape(view)
    y0_hat = (y_t - eps_hat).abs()
    if mode == "ddim":
        return (a * y_t + b * y0_hat).clamp(0.0, 1.0)
    likelihood = ((1 - y_t) - prior).abs()  # p^y_t (1 - p)^(1 - y_t) for binary y_t
    mix = (1 - a) * likelihood
    prior1 = b * y0_hat + (1 - b) * prior
    prior0 = b * (1 - y0_hat) + (1 - b) * (1 - prior)
    theta1 = (a * y_t + mix) * prior1
    theta0 = (a * (1 - y_t) + mix) * prior0
    return theta1 / (theta0 + theta1).clamp_min(POSTERIOR_EPS)


def check_no_nan_probabilities(y_t: Tensor, eps_hat: Tensor, prior: Tensor) -> None:
    """Raises ValueError naming the input that holds NaN: like ``torch.bernoulli``, a NaN probability is an error
    (its mean would be NaN, and ``uniform < NaN`` would silently draw 0). The C++ op checks the same."""
    for name, value in (("y_t", y_t), ("eps_hat", eps_hat), ("prior", prior)):
        if bool(torch.isnan(value).any()):
            raise ValueError(f"bernoulli_step: {name} holds NaN (a probability must be a number; torch.bernoulli "
                             "refuses NaN too)")


def bernoulli_step(
    y_t: Tensor, eps_hat: Tensor, prior: Tensor, coef: Tensor, mode: str, seed: int, offset: int
) -> Tensor:
    """One reverse Bernoulli diffusion step: mean (:func:`bernoulli_mean`) and a draw from it.

    Element ``i`` (row-major over ``y_t``'s shape) is 1.0 where
    ``counter_uniform(seed, offset)[i] < mean[i]`` else 0.0, so a sample depends only on
    (seed, offset) and the inputs, never on the backend or the thread count.

    Returns:
        float32 tensor of ``y_t``'s shape with values in {0, 1}.
    """
    check_no_nan_probabilities(y_t, eps_hat, prior)
    mean = bernoulli_mean(y_t.float(), eps_hat.float(), prior.float(), coef.float(), mode)
    uniform = counter_uniform(seed, offset, mean.numel(), mean.device).view(mean.shape)
    return (uniform < mean).to(torch.float32)
