"""Binary layers for PyTorch models, built on the ``hidiff::`` ops.

* :class:`BinaryConv2d` — a drop-in for ``nn.Conv2d``: same constructor and parameters, float
  in, float out. It trains with straight-through estimators and runs the bit-packed
  XNOR-popcount kernels when autograd is not needed (eval mode under ``torch.no_grad()`` or
  ``torch.inference_mode()``). Both paths compute the same function.
* :class:`BinaryLinear` — the same for ``nn.Linear`` (the X-Former's projections).
* :class:`TimeBinarize` (TB, paper Eq. 15) and :class:`TimeActivation` (TA, Eq. 16) — per-channel
  thresholds and shifts produced from a time embedding by zero-initialised linear layers.
* :func:`binarize` — swaps the ``nn.Conv2d`` layers of any model for ``BinaryConv2d``.

Binary arithmetic (XNOR-Net with Bi-Real gradients): activations and weights are binarised to
+-1 (+1 where the value is above the threshold, else -1); the output is
``conv(sign(x - t), sign(W)) * alpha + bias`` with ``alpha_o = mean |W_o|`` (not trained
through). Gradients: ApproxSign for activations (``2 - 2|x|`` on (-1, 1), else 0) and the
identity masked to ``|W| <= 1`` for weights.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .reference import sign_pm1

logger = logging.getLogger(__name__)

_Pair = tuple[int, int]
_Packed = TypeVar("_Packed")


class ApproxSign(torch.autograd.Function):
    """+-1 sign in the forward pass, Bi-Real ApproxSign gradient ``2 - 2|x|`` on (-1, 1)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        # 2 - 2|x| on (-1, 1), 0 elsewhere: one temporary and in-place passes (the STE backward is a large
        # share of a training step's elementwise time).
        return (1 - x.abs()).clamp_(min=0).mul_(grad).mul_(2)


class WeightSign(torch.autograd.Function):
    """+-1 sign of weights with the clipped identity gradient (passes where ``|w| <= 1``)."""

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return sign_pm1(w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


def _resolve_padding(padding: str | int | Iterable[int], kernel: _Pair, stride: _Pair, dilation: _Pair) -> _Pair:
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        if any(t % 2 for t in totals):
            raise ValueError(
                f"padding='same' with kernel {kernel} and dilation {dilation} needs asymmetric padding, "
                "which BinaryConv2d does not support; pass explicit padding"
            )
        return (totals[0] // 2, totals[1] // 2)
    if isinstance(padding, str):
        raise ValueError(f"padding must be 'valid', 'same', an int or a pair of ints, got {padding!r}")
    pair = ops.as_pair(padding, "padding")
    if min(pair) < 0:
        raise ValueError(f"padding must be non-negative, got {pair}")
    return pair


def _combine_thresholds(own: Tensor | None, extra: Tensor | None) -> Tensor | None:
    """Sum of the module's (C,) threshold and a per-call (C,) or (N, C) one."""
    if own is None:
        return extra
    if extra is None:
        return own
    return own + extra


def _check_threshold(threshold: Tensor | None, channels: int, batch: int, layer: str) -> None:
    """Raises ValueError unless `threshold` is None, ``(channels,)`` or ``(batch, channels)`` (all channels, whatever
    the groups: every path, grouped or not, packed or straight-through, gets the same check)."""
    if threshold is None:
        return
    if tuple(threshold.shape) not in ((channels,), (batch, channels)):
        raise ValueError(
            f"threshold must have shape ({channels},) or ({batch}, {channels}) for {layer} with in_channels="
            f"{channels} and a batch of {batch}, got {tuple(threshold.shape)}"
        )


def _weight_scale(weight: Tensor) -> Tensor:
    """XNOR-Net scale alpha_o = mean |W_o| per output channel, outside autograd. Shape (O,)."""
    return weight.detach().abs().flatten(1).mean(1)


class PackedWeightCache(Generic[_Packed]):
    """A value computed from a weight tensor (its packed bits and scale), recomputed only when the weight changes.

    A change is an in-place update (optimizer step, ``load_state_dict``, any in-place op under
    ``torch.no_grad()``: the version counter moves), new storage (``.to()``: the data pointer moves) or
    another tensor (parameter reassignment: the cache holds a weak reference to the tensor it packed, so
    a new ``nn.Parameter`` is recognised even where it reuses the freed memory of the old one). Writes
    through ``weight.data`` bypass the version counter and are not seen: call :meth:`clear` after them.
    Inference tensors have no version counter, so their weights are packed on every call, and so are
    weights under ``torch.compile`` (the compiled graph packs them itself).

    Args:
        pack: computes the value from the detached weight (called under ``torch.no_grad()``).
    """

    def __init__(self, pack: Callable[[Tensor], _Packed]) -> None:
        self._pack = pack
        self._weight: weakref.ref[Tensor] | None = None
        self._key: tuple | None = None
        self._value: _Packed | None = None

    def clear(self) -> None:
        """Drops the cached value."""
        self._weight = None
        self._key = None
        self._value = None

    def __getstate__(self) -> dict:
        # The cache is derived data tied to this process's tensors (a weak reference cannot be pickled): a pickled or
        # deep-copied layer starts empty and packs its own weights on first use.
        return {"_pack": self._pack, "_weight": None, "_key": None, "_value": None}

    def get(self, weight: Tensor) -> _Packed:
        """The value for ``weight``, from the cache when ``weight`` is the tensor last packed and is unchanged."""
        if torch.compiler.is_compiling():
            with torch.no_grad():
                return self._pack(weight.detach())
        version = None if weight.is_inference() else weight._version
        key = (weight.data_ptr(), version, weight.device, weight.dtype, tuple(weight.shape))
        cached = self._weight() if self._weight is not None else None
        if version is None or cached is not weight or key != self._key or self._value is None:
            with torch.no_grad():
                self._value = self._pack(weight.detach())
            self._weight = weakref.ref(weight)
            self._key = key
        return self._value


_PACKED_KERNELS_ENABLED = True


@contextlib.contextmanager
def packed_kernels(enabled: bool) -> Iterator[None]:
    """Context manager that allows (default) or forbids the packed kernels in every binary layer.

    With ``enabled=False`` the layers compute the same +-1 arithmetic in float (the straight-through
    path, as a float simulation of a binary network would), which is what the packed kernels are
    compared and timed against.
    """
    global _PACKED_KERNELS_ENABLED
    previous = _PACKED_KERNELS_ENABLED
    _PACKED_KERNELS_ENABLED = bool(enabled)
    try:
        yield
    finally:
        _PACKED_KERNELS_ENABLED = previous


class _BinaryLayer(nn.Module):
    """What BinaryConv2d and BinaryLinear share: the packed-weight cache and the choice of path."""

    def __init__(self) -> None:
        super().__init__()
        self._packed: PackedWeightCache[tuple[list[Tensor], Tensor]] = PackedWeightCache(self._pack_weight)

    def clear_packed_cache(self) -> None:
        """Drops the cached packed weights (needed only after writes through ``weight.data``)."""
        self._packed.clear()

    def _pack_weight(self, weight: Tensor) -> tuple[list[Tensor], Tensor]:
        """The packed weights of each group (``(O/groups, KH, KW, words)``) and the scale ``(O,)`` float32."""
        groups = getattr(self, "groups", 1)
        conv_weight = weight if weight.dim() == 4 else weight[:, :, None, None]
        packed = [ops.pack_weight(chunk) for chunk in conv_weight.chunk(groups, dim=0)]
        return packed, _weight_scale(weight).float()

    def _use_packed_kernels(self, x: Tensor, threshold: Tensor | None) -> bool:
        """Packed kernels unless training, or unless autograd needs the straight-through graph."""
        if self.training or not _PACKED_KERNELS_ENABLED:
            return False
        if not torch.is_grad_enabled():
            return True
        return not any(t is not None and t.requires_grad for t in (x, threshold, *self.parameters()))


class BinaryConv2d(_BinaryLayer):
    """Binary 2-D convolution, a drop-in for ``nn.Conv2d``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as in ``nn.Conv2d`` (``padding`` may be an int, a pair, 'valid' or symmetric 'same').
        padding_mode: only 'zeros' (a padded tap contributes exactly 0).
        learnable_threshold: add a learnable per-input-channel binarisation threshold (TB).

    Shapes:
        input ``(N, in_channels, H, W)`` float; output ``(N, out_channels, Ho, Wo)`` in the input's
        dtype. ``forward(x, threshold)`` also takes a per-call threshold ``(C,)`` or ``(N, C)``
        (e.g. from :class:`TimeBinarize`), added to the module's own.

    The packed kernels run when autograd is not needed: ``self.training`` is False and gradients
    are disabled or no input/parameter requires them. Otherwise the straight-through path runs;
    it computes the same values.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        learnable_threshold: bool = False,
    ) -> None:
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(
                f"padding_mode must be 'zeros' for BinaryConv2d (binary convolutions pad with exact zeros), "
                f"got {padding_mode!r}"
            )
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}")
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups must be positive and divide in_channels ({in_channels}) and out_channels "
                f"({out_channels}), got {groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ops.as_pair(kernel_size, "kernel_size")
        self.stride = ops.as_pair(stride, "stride")
        self.dilation = ops.as_pair(dilation, "dilation")
        if min(self.kernel_size) <= 0 or min(self.stride) <= 0 or min(self.dilation) <= 0:
            raise ValueError(
                f"kernel_size, stride and dilation must be positive, got {self.kernel_size}, {self.stride}, "
                f"{self.dilation}"
            )
        self.padding = _resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.threshold = nn.Parameter(torch.zeros(in_channels, **factory)) if learnable_threshold else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initialisation as ``nn.Conv2d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, learnable_threshold: bool = False) -> BinaryConv2d:
        """A BinaryConv2d with the configuration, weights and bias of ``conv``."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            learnable_threshold=learnable_threshold,
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        layer.train(conv.training)
        return layer

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}"
        )
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.threshold is not None:
            text += ", learnable_threshold=True"
        return text

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must be (N, {self.in_channels}, H, W) for {type(self).__name__}, got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, threshold: Tensor | None = None) -> Tensor:
        self._check_input(x)
        threshold = _combine_thresholds(self.threshold, threshold)
        _check_threshold(threshold, self.in_channels, x.shape[0], type(self).__name__)
        if self._use_packed_kernels(x, threshold):
            return self._forward_packed(x, threshold)
        return self._forward_ste(x, threshold)

    def _forward_ste(self, x: Tensor, threshold: Tensor | None) -> Tensor:
        if threshold is not None:
            x = x - (threshold.view(1, -1, 1, 1) if threshold.dim() == 1 else threshold[:, :, None, None])
        out = F.conv2d(
            ApproxSign.apply(x),
            WeightSign.apply(self.weight),
            None,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        out = out * _weight_scale(self.weight).to(out.dtype).view(1, -1, 1, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def _forward_packed(self, x: Tensor, threshold: Tensor | None) -> Tensor:
        packed, scale = self._packed.get(self.weight)
        bias = self.bias.detach().float() if self.bias is not None else None
        per_group_in = self.in_channels // self.groups
        per_group_out = self.out_channels // self.groups
        outputs = []
        for g, w_packed in enumerate(packed):
            channels = slice(g * per_group_in, (g + 1) * per_group_in)
            outs = slice(g * per_group_out, (g + 1) * per_group_out)
            x_g, t_g = x, threshold
            if self.groups > 1:
                x_g = x[:, channels]
                t_g = None if threshold is None else threshold[..., channels]
            x_packed = ops.binarize_pack(x_g, t_g)
            outputs.append(
                ops.binary_conv2d(
                    x_packed,
                    w_packed,
                    per_group_in,
                    self.stride,
                    self.padding,
                    self.dilation,
                    scale[outs],
                    None if bias is None else bias[outs],
                )
            )
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return out.to(x.dtype)


class BinaryLinear(_BinaryLayer):
    """Binary fully connected layer, a drop-in for ``nn.Linear`` (same rules as BinaryConv2d).

    Shapes:
        input ``(..., in_features)``; output ``(..., out_features)`` in the input's dtype.
        ``forward(x, threshold)`` takes an optional per-call threshold ``(in_features,)`` or
        ``(B, in_features)`` with ``B = x.shape[0]`` (per-sample, e.g. time-dependent).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        learnable_threshold: bool = False,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.threshold = nn.Parameter(torch.zeros(in_features, **factory)) if learnable_threshold else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initialisation as ``nn.Linear``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, learnable_threshold: bool = False) -> BinaryLinear:
        """A BinaryLinear with the weights and bias of ``linear``."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            learnable_threshold=learnable_threshold,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.train(linear.training)
        return layer

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x: Tensor, threshold: Tensor | None = None) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must be (..., {self.in_features}), got shape {tuple(x.shape)}")
        threshold = _combine_thresholds(self.threshold, threshold)
        if threshold is not None and threshold.dim() == 2 and (x.dim() < 2 or threshold.shape[0] != x.shape[0]):
            raise ValueError(
                f"threshold of shape {tuple(threshold.shape)} needs x of shape ({threshold.shape[0]}, ..., "
                f"{self.in_features}), got {tuple(x.shape)}"
            )
        if self._use_packed_kernels(x, threshold):
            return self._forward_packed(x, threshold)
        return self._forward_ste(x, threshold)

    def _forward_ste(self, x: Tensor, threshold: Tensor | None) -> Tensor:
        if threshold is not None:
            shift = threshold if threshold.dim() == 1 else threshold.view(threshold.shape[0], *(1,) * (x.dim() - 2), -1)
            x = x - shift
        out = F.linear(ApproxSign.apply(x), WeightSign.apply(self.weight))
        out = out * _weight_scale(self.weight).to(out.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out

    def _packed_weight(self) -> tuple[Tensor, Tensor]:
        """The packed ``(O, 1, 1, words)`` weights and their per-row scale (subclasses change the weights)."""
        (w_packed,), scale = self._packed.get(self.weight)
        return w_packed, scale

    def _forward_packed(self, x: Tensor, threshold: Tensor | None) -> Tensor:
        w_packed, scale = self._packed_weight()
        per_sample = threshold is not None and threshold.dim() == 2
        batch = x.shape[0] if per_sample else 1
        tokens = x.reshape(batch, -1, self.in_features)
        # (B, L, C) viewed as a channels-last (B, C, L, 1) image: packed without a copy.
        x_packed = ops.binarize_pack(tokens.transpose(1, 2).unsqueeze(-1), threshold)
        bias = self.bias.detach().float() if self.bias is not None else None
        out = ops.binary_conv2d(x_packed, w_packed, self.in_features, 1, 0, 1, scale, bias)
        return out.squeeze(-1).transpose(1, 2).reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _per_channel(values: Tensor, x: Tensor) -> Tensor:
    """(N, C) -> (N, C, 1, ...) broadcastable against x of shape (N, C, ...)."""
    return values.reshape(*values.shape, *(1,) * (x.dim() - 2))


class TimeBinarize(nn.Module):
    """TB (paper Eq. 15): ``x_b = +1 if x > a(t) else -1`` with per-channel thresholds a(t).

    ``a(t) = -Linear(SiLU(e_t))``: the layer is zero-initialised, so every threshold starts at 0.

    Args:
        channels: C, the channels of the binarised tensor.
        embed_dim: width of the time embedding e_t.

    Shapes:
        ``threshold(emb)``: ``(N, embed_dim) -> (N, C)``, pass it to ``BinaryConv2d(x, threshold)``
        to fuse TB with the packing. ``forward(x, emb)``: ``(N, C, ...) -> (N, C, ...)`` of +-1
        with the ApproxSign gradient.
    """

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.shift = _zero_linear(embed_dim, channels)

    def threshold(self, emb: Tensor) -> Tensor:
        return -self.shift(F.silu(emb))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"x must be (N, {self.channels}, ...), got shape {tuple(x.shape)}")
        return ApproxSign.apply(x - _per_channel(self.threshold(emb), x))


class TimeActivation(nn.Module):
    """TA (paper Eq. 16): an RPReLU whose shifts gamma(t), zeta(t) come from the time embedding.

    ``gamma, zeta = Linear(SiLU(e_t))`` (zero-initialised), ``beta`` a learnable per-channel slope.

    Shapes:
        ``forward(u, emb)``: u ``(N, C, ...)``, emb ``(N, embed_dim)`` -> ``(N, C, ...)``.
    """

    def __init__(self, channels: int, embed_dim: int, beta_init: float = 0.25) -> None:
        super().__init__()
        self.channels = channels
        self.shifts = _zero_linear(embed_dim, 2 * channels)
        self.beta = nn.Parameter(torch.full((channels,), float(beta_init)))

    def time_tables(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        """The shifts ``gamma(t), zeta(t)`` of ``emb (N, embed_dim)``: float ``(N, C)`` each.

        The one place they are computed: ``forward`` and any inference form that tabulates them per
        timestep both call it, so a table row equals the on-the-fly value.
        """
        gamma, zeta = self.shifts(F.silu(emb)).chunk(2, dim=1)
        return gamma.contiguous(), zeta.contiguous()

    def forward(self, u: Tensor, emb: Tensor) -> Tensor:
        return ops.time_activation(u, *self.time_tables(emb), self.beta)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def binarize(model: nn.Module, skip_first_last: bool = True, exclude: Iterable[str] = ()) -> nn.Module:
    """Swaps the ``nn.Conv2d`` layers of ``model`` for :class:`BinaryConv2d`, in place.

    Args:
        model: any module.
        skip_first_last: keep the first and the last ``nn.Conv2d`` (in ``named_modules`` order)
            real-valued, as binary networks do for their input and output layers.
        exclude: qualified module names or ``fnmatch`` patterns (``"decoder.*"``) to keep real.

    Returns:
        ``model``, with weights and biases copied into the binary layers. Layers with a
        ``padding_mode`` other than 'zeros' stay real (a warning is logged).
    """
    exclude = tuple(exclude)
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    keep = set()
    if skip_first_last and convs:
        keep.update({convs[0][0], convs[-1][0]})
    # Every replacement is built before any is swapped in: an unsupported layer leaves the model as it was.
    replacements = []
    for name, conv in convs:
        if name in keep or _matches(name, exclude):
            continue
        if conv.padding_mode != "zeros":
            logger.warning("binarize: %s keeps real weights (padding_mode=%r)", name, conv.padding_mode)
            continue
        if not name:
            raise ValueError("binarize: model is itself an nn.Conv2d; use BinaryConv2d.from_conv(model)")
        try:
            replacements.append((name, BinaryConv2d.from_conv(conv)))
        except (ValueError, TypeError) as error:
            raise type(error)(f"binarize: layer {name!r} cannot be binarised (model left unchanged): {error}") from error
    for name, binary in replacements:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, binary)
    return model
