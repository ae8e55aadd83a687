"""The ``hidiff::`` torch ops: schemas, argument checks, fake kernels, autograd and wrappers.

Kernels are registered elsewhere: the compiled CPU kernels by ``hidiff_kernels._C``
(``TORCH_LIBRARY_IMPL(hidiff, CPU, ...)``), and :mod:`hidiff_kernels.reference` for every
backend left without one (:func:`register_reference_fallbacks`).

The checks here run in fake kernels (``torch.compile``, meta tensors) and in the reference
kernels; the compiled kernels repeat them in C++ because they guard raw memory accesses.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from . import reference

NAMESPACE = "hidiff"

SCHEMAS = {
    "binarize_pack": "(Tensor x, Tensor? threshold=None) -> Tensor",
    "pack_weight": "(Tensor w) -> Tensor",
    "binary_conv2d": (
        "(Tensor x_packed, Tensor w_packed, int in_channels, int[2] stride=1, int[2] padding=0, "
        "int[2] dilation=1, Tensor? scale=None, Tensor? bias=None) -> Tensor"
    ),
    "binary_conv2d_fused": (
        "(Tensor x_packed, Tensor w_packed, int in_channels, int[2] stride, int[2] padding, int[2] dilation, "
        "Tensor? scale, Tensor? bias, Tensor? residual, Tensor? gamma, Tensor? zeta, Tensor? beta, "
        "Tensor? threshold, bool pack) -> (Tensor, Tensor)"
    ),
    "time_activation": "(Tensor u, Tensor gamma, Tensor zeta, Tensor beta) -> Tensor",
    "bernoulli_step": (
        "(Tensor y_t, Tensor eps_hat, Tensor prior, Tensor coef, str mode, int seed, int offset) -> Tensor"
    ),
}

_LIBRARY = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in SCHEMAS.items():
    _LIBRARY.define(_name + _schema)

# The (op, dispatch key) pairs served by the reference because no compiled kernel exists.
REFERENCE_SERVED: set[tuple[str, str]] = set()

IntPair = int | Sequence[int]

# Largest stride, padding and dilation: sizes computed from them stay far inside int64.
MAX_GEOMETRY = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# --- argument checks -------------------------------------------------------------------------


def _check_floating(t: Tensor, name: str) -> None:
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")


def _check_same_device(t: Tensor, name: str, like: Tensor, like_name: str) -> None:
    if t.device != like.device:
        raise ValueError(f"{name} must be on the device of {like_name} ({like.device}), got {t.device}")


def check_binarize_pack_args(x: Tensor, threshold: Tensor | None) -> None:
    _check_floating(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    n, c = x.shape[0], x.shape[1]
    if c == 0:
        raise ValueError(f"x must have at least one channel, got shape {tuple(x.shape)}")
    if threshold is None:
        return
    _check_floating(threshold, "threshold")
    _check_same_device(threshold, "threshold", x, "x")
    per_channel = threshold.dim() == 1 and threshold.shape[0] == c
    per_sample = threshold.dim() == 2 and threshold.shape[0] == n and threshold.shape[1] == c
    if not (per_channel or per_sample):
        raise ValueError(
            f"threshold must have shape (C,) = ({c},) or (N, C) = ({n}, {c}), got {tuple(threshold.shape)}"
        )


def check_pack_weight_args(w: Tensor) -> None:
    _check_floating(w, "w")
    if w.dim() != 4:
        raise ValueError(f"w must be 4-D (O, I, KH, KW), got shape {tuple(w.shape)}")
    if w.shape[1] == 0:
        raise ValueError(f"w must have at least one input channel, got shape {tuple(w.shape)}")


def _check_packed(t: Tensor, name: str, layout: str) -> None:
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must be int32 packed bits, got {t.dtype}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D {layout}, got shape {tuple(t.shape)}")


def _check_affine(t: Tensor | None, name: str, out_channels: int, like: Tensor) -> None:
    if t is None:
        return
    _check_floating(t, name)
    _check_same_device(t, name, like, "x_packed")
    if t.dim() != 1 or t.shape[0] != out_channels:
        raise ValueError(f"{name} must have shape (O,) = ({out_channels},), got {tuple(t.shape)}")


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one axis (``nn.Conv2d`` formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def check_binary_conv2d_args(
    x_packed: Tensor,
    w_packed: Tensor,
    in_channels: int,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    scale: Tensor | None,
    bias: Tensor | None,
) -> tuple[int, int, int, int]:
    """Validates the arguments of ``binary_conv2d`` and returns the output shape (N, O, Ho, Wo)."""
    _check_packed(x_packed, "x_packed", "(N, H, W, words)")
    _check_packed(w_packed, "w_packed", "(O, KH, KW, words)")
    _check_same_device(w_packed, "w_packed", x_packed, "x_packed")
    if not 0 < in_channels <= MAX_GEOMETRY:
        raise ValueError(f"in_channels must be positive and at most {MAX_GEOMETRY}, got {in_channels}")
    words = reference.packed_words(in_channels)
    if x_packed.shape[3] != words:
        raise ValueError(
            f"x_packed has {x_packed.shape[3]} words per pixel but in_channels={in_channels} needs {words}"
        )
    if w_packed.shape[3] != words:
        raise ValueError(f"w_packed has {w_packed.shape[3]} words per tap but in_channels={in_channels} needs {words}")
    for name, pair, kind, low in (
        ("stride", stride, "positive", 1),
        ("padding", padding, "non-negative", 0),
        ("dilation", dilation, "positive", 1),
    ):
        if len(pair) != 2 or not all(low <= v <= MAX_GEOMETRY for v in pair):
            raise ValueError(f"{name} must be two {kind} ints in [{low}, {MAX_GEOMETRY}], got {list(pair)}")
    n, h, w = x_packed.shape[0], x_packed.shape[1], x_packed.shape[2]
    o, kh, kw = w_packed.shape[0], w_packed.shape[1], w_packed.shape[2]
    if kh == 0 or kw == 0:
        raise ValueError(f"w_packed must have a non-empty kernel, got shape {tuple(w_packed.shape)}")
    if in_channels * kh * kw >= 2**31:
        raise ValueError(f"in_channels * KH * KW must be below 2^31, got {in_channels} * {kh} * {kw}")
    ho = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_output_size(w, kw, stride[1], padding[1], dilation[1])
    if ho > MAX_GEOMETRY or wo > MAX_GEOMETRY:
        raise ValueError(
            f"binary_conv2d output would be {ho}x{wo}, more than {MAX_GEOMETRY} rows or columns: input {h}x{w}, "
            f"padding {list(padding)}, stride {list(stride)}"
        )
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"binary_conv2d output would be empty: input {h}x{w}, kernel {kh}x{kw}, "
            f"padding {list(padding)}, dilation {list(dilation)}"
        )
    _check_affine(scale, "scale", o, x_packed)
    _check_affine(bias, "bias", o, x_packed)
    return n, o, ho, wo


def _check_float32(t: Tensor, name: str, shape: tuple[int, ...], layout: str, like: Tensor) -> None:
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")
    _check_same_device(t, name, like, "x_packed")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {tuple(t.shape)}")


def check_binary_conv2d_fused_args(
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
) -> tuple[int, int, int, int]:
    """Validates the arguments of ``binary_conv2d_fused``; returns the output shape (N, O, Ho, Wo)."""
    n, o, ho, wo = check_binary_conv2d_args(x_packed, w_packed, in_channels, stride, padding, dilation, scale, bias)
    if residual is not None:
        _check_float32(residual, "residual", (n, o, ho, wo), "(N, O, Ho, Wo)", x_packed)
    given = [name for name, t in (("gamma", gamma), ("zeta", zeta), ("beta", beta)) if t is not None]
    if given and len(given) != 3:
        raise ValueError(f"gamma, zeta and beta (the TA epilogue) must be given together, got only {given}")
    if given:
        _check_float32(gamma, "gamma", (n, o), "(N, O)", x_packed)
        _check_float32(zeta, "zeta", (n, o), "(N, O)", x_packed)
        _check_float32(beta, "beta", (o,), "(O,)", x_packed)
    if threshold is not None:
        if not pack:
            raise ValueError("threshold is only used with pack=True (it binarises the output for the next layer)")
        if threshold.dtype != torch.float32:
            raise TypeError(f"threshold must be float32, got {threshold.dtype}")
        _check_same_device(threshold, "threshold", x_packed, "x_packed")
        if tuple(threshold.shape) not in ((o,), (n, o)):
            raise ValueError(
                f"threshold must have shape (O,) = ({o},) or (N, O) = ({n}, {o}), got {tuple(threshold.shape)}"
            )
    return n, o, ho, wo


def check_time_activation_args(u: Tensor, gamma: Tensor, zeta: Tensor, beta: Tensor) -> None:
    _check_floating(u, "u")
    if u.dim() < 2:
        raise ValueError(f"u must be (N, C, ...) with at least 2 dims, got shape {tuple(u.shape)}")
    n, c = u.shape[0], u.shape[1]
    for name, t in (("gamma", gamma), ("zeta", zeta)):
        _check_floating(t, name)
        _check_same_device(t, name, u, "u")
        if t.dim() != 2 or t.shape[0] != n or t.shape[1] != c:
            raise ValueError(f"{name} must have shape (N, C) = ({n}, {c}), got {tuple(t.shape)}")
    _check_floating(beta, "beta")
    _check_same_device(beta, "beta", u, "u")
    if beta.dim() != 1 or beta.shape[0] != c:
        raise ValueError(f"beta must have shape (C,) = ({c},), got {tuple(beta.shape)}")


def _max_offset(y_t: Tensor) -> int:
    # The counters offset + i of the elements (i < numel) must stay below 2^63.
    return INT64_MAX - max(y_t.numel() - 1, 0)


def _offset_range(y_t: Tensor) -> str:
    return f"non-negative and at most 2^63 - y_t.numel() = {_max_offset(y_t)}"


def check_bernoulli_step_args(
    y_t: Tensor, eps_hat: Tensor, prior: Tensor, coef: Tensor, mode: str, seed: int, offset: int
) -> None:
    for name, t in (("y_t", y_t), ("eps_hat", eps_hat), ("prior", prior)):
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype}")
        if name != "y_t":
            _check_same_device(t, name, y_t, "y_t")
            if t.shape != y_t.shape:
                raise ValueError(f"{name} must have the shape of y_t {tuple(y_t.shape)}, got {tuple(t.shape)}")
    if y_t.dim() < 1:
        raise ValueError("y_t must have a batch dimension (N, ...), got a 0-d tensor")
    if coef.dtype != torch.float32:
        raise TypeError(f"coef must be float32, got {coef.dtype}")
    _check_same_device(coef, "coef", y_t, "y_t")
    if coef.dim() != 2 or coef.shape[0] != y_t.shape[0] or coef.shape[1] != 2:
        raise ValueError(f"coef must have shape (N, 2) = ({y_t.shape[0]}, 2), got {tuple(coef.shape)}")
    if mode not in reference.BERNOULLI_MODES:
        raise ValueError(f"mode must be one of {reference.BERNOULLI_MODES}, got {mode!r}")
    if not INT64_MIN <= seed <= INT64_MAX:
        raise ValueError(f"seed must be in [-2^63, 2^63 - 1], got {seed}")
    if not 0 <= offset <= _max_offset(y_t):
        raise ValueError(f"offset must be {_offset_range(y_t)}, got {offset}")


# --- fake kernels ----------------------------------------------------------------------------


@torch.library.register_fake(f"{NAMESPACE}::binarize_pack")
def _binarize_pack_fake(x: Tensor, threshold: Tensor | None = None) -> Tensor:
    check_binarize_pack_args(x, threshold)
    n, c, h, w = x.shape
    return x.new_empty((n, h, w, reference.packed_words(c)), dtype=torch.int32)


@torch.library.register_fake(f"{NAMESPACE}::pack_weight")
def _pack_weight_fake(w: Tensor) -> Tensor:
    check_pack_weight_args(w)
    o, i, kh, kw = w.shape
    return w.new_empty((o, kh, kw, reference.packed_words(i)), dtype=torch.int32)


@torch.library.register_fake(f"{NAMESPACE}::binary_conv2d")
def _binary_conv2d_fake(
    x_packed, w_packed, in_channels, stride=(1, 1), padding=(0, 0), dilation=(1, 1), scale=None, bias=None
):
    shape = check_binary_conv2d_args(x_packed, w_packed, in_channels, stride, padding, dilation, scale, bias)
    return x_packed.new_empty(shape, dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::binary_conv2d_fused")
def _binary_conv2d_fused_fake(
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
):
    n, o, ho, wo = check_binary_conv2d_fused_args(
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
    out = x_packed.new_empty((n, o, ho, wo), dtype=torch.float32)
    packed_shape = (n, ho, wo, reference.packed_words(o)) if pack else (0,)
    return out, x_packed.new_empty(packed_shape, dtype=torch.int32)


@torch.library.register_fake(f"{NAMESPACE}::time_activation")
def _time_activation_fake(u: Tensor, gamma: Tensor, zeta: Tensor, beta: Tensor) -> Tensor:
    check_time_activation_args(u, gamma, zeta, beta)
    return torch.empty_like(u, memory_format=torch.contiguous_format)


@torch.library.register_fake(f"{NAMESPACE}::bernoulli_step")
def _bernoulli_step_fake(y_t, eps_hat, prior, coef, mode, seed, offset):
    check_bernoulli_step_args(y_t, eps_hat, prior, coef, mode, seed, offset)
    return torch.empty_like(y_t, memory_format=torch.contiguous_format)


# --- autograd --------------------------------------------------------------------------------


def _time_activation_setup(ctx, inputs, output) -> None:
    u, gamma, zeta, beta = inputs
    ctx.save_for_backward(u, gamma, beta)


def _time_activation_backward(ctx, grad: Tensor):
    u, gamma, beta = ctx.saved_tensors
    extra = (1,) * (u.dim() - 2)
    g = gamma.reshape(*gamma.shape, *extra)
    above = u > g
    grad_u = torch.where(above, grad, grad * beta.reshape(1, -1, *extra).to(u.dtype))
    spatial = tuple(range(2, u.dim()))
    grad_gamma = -grad_u.sum(spatial) if spatial else -grad_u
    grad_zeta = grad.sum(spatial) if spatial else grad
    # u - g clamped at 0 from above is the below-threshold part, 0 where u > g, without a zero-filled temporary.
    below_part = (u - g).clamp_(max=0)
    grad_beta = (grad * below_part).sum((0, *spatial))
    return grad_u, grad_gamma.to(gamma.dtype), grad_zeta.to(gamma.dtype), grad_beta.to(beta.dtype)


torch.library.register_autograd(
    f"{NAMESPACE}::time_activation", _time_activation_backward, setup_context=_time_activation_setup
)


def _binary_conv2d_setup(ctx, inputs, output) -> None:
    x_packed, w_packed, in_channels, stride, padding, dilation, scale, bias = inputs
    ctx.conv_args = (in_channels, stride, padding, dilation)
    ctx.has_scale = scale is not None
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x_packed, w_packed, scale)


def _binary_conv2d_backward(ctx, grad: Tensor):
    # Packed bits are not differentiable; the per-channel affine of the epilogue is.
    x_packed, w_packed, scale = ctx.saved_tensors
    grad_scale = grad_bias = None
    if ctx.has_scale and ctx.needs_input_grad[6]:
        count = torch.ops.hidiff.binary_conv2d(x_packed, w_packed, *ctx.conv_args, None, None)
        grad_scale = (grad * count).sum((0, 2, 3)).to(scale.dtype)
    if ctx.has_bias and ctx.needs_input_grad[7]:
        grad_bias = grad.sum((0, 2, 3))
    return None, None, None, None, None, None, grad_scale, grad_bias


torch.library.register_autograd(
    f"{NAMESPACE}::binary_conv2d", _binary_conv2d_backward, setup_context=_binary_conv2d_setup
)


# --- reference kernels for backends without a compiled one ----------------------------------


def _reference_binarize_pack(x: Tensor, threshold: Tensor | None = None) -> Tensor:
    check_binarize_pack_args(x, threshold)
    return reference.binarize_pack(x, threshold)


def _reference_pack_weight(w: Tensor) -> Tensor:
    check_pack_weight_args(w)
    return reference.pack_weight(w)


def _reference_binary_conv2d(
    x_packed, w_packed, in_channels, stride=(1, 1), padding=(0, 0), dilation=(1, 1), scale=None, bias=None
):
    check_binary_conv2d_args(x_packed, w_packed, in_channels, stride, padding, dilation, scale, bias)
    return reference.binary_conv2d(x_packed, w_packed, in_channels, stride, padding, dilation, scale, bias)


def _reference_binary_conv2d_fused(*args):
    check_binary_conv2d_fused_args(*args)
    return reference.binary_conv2d_fused(*args)


def _reference_time_activation(u: Tensor, gamma: Tensor, zeta: Tensor, beta: Tensor) -> Tensor:
    check_time_activation_args(u, gamma, zeta, beta)
    return reference.time_activation(u, gamma, zeta, beta)


def _reference_bernoulli_step(y_t, eps_hat, prior, coef, mode, seed, offset):
    check_bernoulli_step_args(y_t, eps_hat, prior, coef, mode, seed, offset)
    return reference.bernoulli_step(y_t, eps_hat, prior, coef, mode, seed, offset)


_REFERENCE_KERNELS = {
    "binarize_pack": _reference_binarize_pack,
    "pack_weight": _reference_pack_weight,
    "binary_conv2d": _reference_binary_conv2d,
    "binary_conv2d_fused": _reference_binary_conv2d_fused,
    "time_activation": _reference_time_activation,
    "bernoulli_step": _reference_bernoulli_step,
}

BACKENDS = ("CPU", "CUDA")


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether ``hidiff::op_name`` has a kernel for ``dispatch_key`` (compiled or reference)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op_name}", dispatch_key)


def register_reference_fallbacks() -> None:
    """Registers the reference implementation for every (op, backend) without a kernel."""
    for name, kernel in _REFERENCE_KERNELS.items():
        for key in BACKENDS:
            if not has_kernel(name, key):
                _LIBRARY.impl(name, kernel, key)
                REFERENCE_SERVED.add((name, key))


# --- public wrappers -------------------------------------------------------------------------


def as_int(value: object, name: str, low: int, high: int, accepted: str | None = None) -> int:
    """``value`` as a Python int in [low, high] (numpy and 0-d integer tensors are accepted; bool and float are not).

    Args:
        accepted: how the error messages describe the accepted values (default: "an int in [low, high]").

    Raises:
        TypeError: when ``value`` is not an integer, naming ``name``.
        ValueError: when it is out of range, naming ``name``, the value and the range.
    """
    if type(value) is int and low <= value <= high:  # the common case, before any message is formatted
        return value
    accepted = accepted or f"an int in [{low}, {high}]"
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype.is_floating_point):
        raise TypeError(f"{name} must be {accepted}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {accepted}, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be {accepted}, got {number}")
    return number


def as_pair(value: IntPair, name: str, low: int = INT64_MIN, high: int = INT64_MAX) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(1, 2) -> (1, 2)``, each an int in [low, high].

    Raises:
        TypeError / ValueError naming ``name``, the value and the accepted range for anything else.
    """
    # The common spellings first: a plain int, or a tuple of two plain ints (the checks are the same).
    if type(value) is int and low <= value <= high:
        return value, value
    if type(value) is tuple and len(value) == 2:
        first, second = value
        if type(first) is int and type(second) is int and low <= first <= high and low <= second <= high:
            return first, second
    expected = f"{name} must be an int or a pair of ints in [{low}, {high}], got {value!r}"
    if isinstance(value, (str, bytes)):
        raise TypeError(expected)
    try:
        items = list(value)  # type: ignore[arg-type]
    except TypeError:  # a single number (int, numpy integer, 0-d tensor, or something to reject below)
        items = [value, value]
    if len(items) != 2:
        raise ValueError(expected)
    try:
        return as_int(items[0], name, low, high), as_int(items[1], name, low, high)
    except (TypeError, ValueError) as error:
        raise type(error)(expected) from None


def binarize_pack(x: Tensor, threshold: Tensor | None = None) -> Tensor:
    """Fused time-dependent binarisation (TB, paper Eq. 15), sign and bit packing.

    Args:
        x: float tensor ``(N, C, H, W)`` (any floating dtype; NCHW or channels-last memory).
        threshold: None (threshold 0), ``(C,)`` or ``(N, C)`` floating tensor.

    Returns:
        int32 ``(N, H, W, ceil(C/32))``: bit ``c % 32`` of word ``c // 32`` is 1 where
        ``x[n, c, h, w] <= threshold`` (value -1) and 0 where it is greater (+1); pad bits 0.
    """
    return torch.ops.hidiff.binarize_pack(x, threshold)


def pack_weight(w: Tensor) -> Tensor:
    """Packs convolution weights: float ``(O, I, KH, KW)`` -> int32 ``(O, KH, KW, ceil(I/32))``.

    Same bit rule as :func:`binarize_pack` with threshold 0 (``w > 0`` is +1).
    """
    return torch.ops.hidiff.pack_weight(w)


def binary_conv2d(
    x_packed: Tensor,
    w_packed: Tensor,
    in_channels: int,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    scale: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """XNOR-popcount convolution of packed +-1 tensors with exact zero padding.

    Equals ``F.conv2d(sign(x), sign(w), stride=stride, padding=padding, dilation=dilation)`` with
    padded taps contributing 0, computed in exact integer arithmetic, then ``* scale + bias``.

    Args:
        x_packed: int32 ``(N, H, W, ceil(in_channels/32))`` from :func:`binarize_pack`.
        w_packed: int32 ``(O, KH, KW, ceil(in_channels/32))`` from :func:`pack_weight`.
        in_channels: logical input channel count (the packed words do not carry it).
        stride, padding, dilation: int or pair of ints, as in ``nn.Conv2d``.
        scale: optional float ``(O,)`` per-output-channel multiplier (e.g. alpha = mean|W|).
        bias: optional float ``(O,)`` added after the scale.

    Returns:
        float32 ``(N, O, Ho, Wo)``, contiguous NCHW.
    """
    return torch.ops.hidiff.binary_conv2d(
        x_packed,
        w_packed,
        as_int(in_channels, "in_channels", INT64_MIN, INT64_MAX),
        as_pair(stride, "stride"),
        as_pair(padding, "padding"),
        as_pair(dilation, "dilation"),
        scale,
        bias,
    )


def binary_conv2d_fused(
    x_packed: Tensor,
    w_packed: Tensor,
    in_channels: int,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    scale: Tensor | None = None,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    gamma: Tensor | None = None,
    zeta: Tensor | None = None,
    beta: Tensor | None = None,
    threshold: Tensor | None = None,
    pack: bool = False,
) -> tuple[Tensor, Tensor]:
    """A whole binary block in one pass over the output (inference only, not differentiable).

    ``u = binary_conv2d(x_packed, w_packed, ..., scale, bias)``, ``u += residual`` when given,
    ``out = TA(u)`` (:func:`time_activation`) when ``gamma, zeta, beta`` are given, and with
    ``pack=True`` also ``packed = binarize_pack(out, threshold)``: the next layer's TB and packing,
    so a chain of binary blocks reads and writes each activation once. Every step is float32 and
    matches the unfused ops bit for bit.

    Args:
        x_packed, w_packed, in_channels, stride, padding, dilation, scale, bias: as in
            :func:`binary_conv2d` (fold BatchNorm into ``scale`` and ``bias``).
        residual: optional float32 ``(N, O, Ho, Wo)`` added before the activation.
        gamma, zeta: optional float32 ``(N, O)``; beta: optional float32 ``(O,)`` (all or none).
        threshold: optional float32 ``(O,)`` or ``(N, O)`` TB threshold of the next layer
            (needs ``pack=True``; None means 0).
        pack: also return the packed binarisation of ``out``.

    Returns:
        ``(out, packed)``: float32 ``(N, O, Ho, Wo)`` contiguous NCHW, and int32
        ``(N, Ho, Wo, ceil(O/32))`` (an empty ``(0,)`` tensor when ``pack`` is False).
    """
    return torch.ops.hidiff.binary_conv2d_fused(
        x_packed,
        w_packed,
        as_int(in_channels, "in_channels", INT64_MIN, INT64_MAX),
        as_pair(stride, "stride"),
        as_pair(padding, "padding"),
        as_pair(dilation, "dilation"),
        scale,
        bias,
        residual,
        gamma,
        zeta,
        beta,
        threshold,
        pack,
    )


def time_activation(u: Tensor, gamma: Tensor, zeta: Tensor, beta: Tensor) -> Tensor:
    """Fused time-dependent activation TA (paper Eq. 16), differentiable in all inputs.

    ``TA(u) = u - gamma + zeta`` where ``u > gamma``, else ``beta * (u - gamma) + zeta``.

    Args:
        u: float ``(N, C, ...)``.
        gamma, zeta: float ``(N, C)`` per-sample, per-channel shifts (from the time embedding).
        beta: float ``(C,)`` slope below the threshold.

    Returns:
        Tensor of u's shape and dtype (contiguous).
    """
    return torch.ops.hidiff.time_activation(u, gamma, zeta, beta)


def bernoulli_step(
    y_t: Tensor,
    eps_hat: Tensor,
    prior: Tensor,
    coef: Tensor,
    mode: str = "ddim",
    seed: int = 0,
    offset: int = 0,
) -> Tensor:
    """Fused reverse step of Bernoulli diffusion: calibrated mean and a Bernoulli draw in one pass.

    ``y0_hat = |y_t - eps_hat|`` (paper Eq. 10), then the mean of ``y_{t-1}``:

    - ``mode="posterior"`` (ancestral sampling), ``coef[n] = (alpha_t, abar_{t-1})``: the posterior
      of Eq. 7 at ``y0 = y0_hat``, guarded against 0/0;
    - ``mode="ddim"``, ``coef[n] = (sigma_t, abar_{t-1} - sigma_t * abar_t)`` with
      ``sigma_t = (1 - abar_{t-1}) / (1 - abar_t)``: ``clip(sigma_t * y_t + c * y0_hat, 0, 1)`` (Alg. 2).

    The draw uses a counter-based RNG (Philox4x32-10, see :func:`reference.counter_uniform`):
    element ``i`` is 1 where ``uniform(seed, offset + i) < mean``, so the same (seed, offset)
    gives the same sample on every backend, thread count and under ``torch.compile``. A caller
    drawing several steps advances ``offset`` by ``y_t.numel()`` per step.

    Args:
        y_t: float32 ``(N, ...)`` current state in {0, 1}.
        eps_hat: float32, y_t's shape: predicted flip probability in [0, 1].
        prior: float32, y_t's shape: segmentor prior in [0, 1].
        coef: float32 ``(N, 2)`` per-sample step coefficients (see above).
        mode: ``"posterior"`` or ``"ddim"``.
        seed: an int in [-2^63, 2^64 - 1]: its value modulo 2^64 is the 64-bit Philox key (so ``s`` and
            ``s - 2^64`` give the same samples; the op itself takes the int64 two's-complement form).
        offset: counter offset in [0, 2^63 - y_t.numel()].

    Returns:
        float32 tensor of y_t's shape with values in {0, 1} (contiguous).
    """
    key = as_int(seed, "seed", INT64_MIN, 2**64 - 1)
    if key > INT64_MAX:
        key -= 2**64
    return torch.ops.hidiff.bernoulli_step(
        y_t, eps_hat, prior, coef, mode, key, as_int(offset, "offset", 0, _max_offset(y_t), _offset_range(y_t))
    )
