"""OpenVINO as a peer of the benchmarks: the same layers and the same real refiner, compiled for its CPU plugin.

The peer is optional (``pip install .[peers]``); without OpenVINO this module still imports, and
:data:`requires_openvino` skips the tests that need it.

Binary convolution. OpenVINO's ``BinaryConvolution`` (mode ``xnor-popcount``) reads 0 as -1 and 1
as +1, so our +1 (``x > 0``; bit 0 in our packing) is its 1. The model takes the float input like
``binarize_pack`` + ``binary_conv2d`` do: ``FakeQuantize`` with 2 levels and both thresholds at 0
maps ``x > 0`` to 1 and the rest to 0 (the CPU plugin compiles it into a node with a u1 output),
then ``BinaryConvolution`` with ``pad_value`` 0, which makes padded taps contribute 0 (our exact
zero padding); the plugin fuses the scale and bias into the convolution. Two facts about the CPU
plugin were established by the bit-exact tests and are relied on here:

- It reads the u1 weight bytes with the first element in the lowest bit, the opposite of the order
  in which ``ov.op.Constant(ov.Type.u1, shape, values)`` packs 0/1 values, so the weight bytes are
  written directly (``np.packbits(..., bitorder="little")``).
- Its results are wrong when the input channel count is not a multiple of 8 (and the image has more
  than one pixel). Such layers get extra constant channels up to the next multiple of 8, input -1
  and weight -1, which add +1 for every in-bounds tap; that count is subtracted afterwards (a
  constant map). The layer table's channel counts are multiples of 8 and need none of this.

Real refiner. ``openvino.convert_model`` traces the real ``BBDM`` as it is (no wrapper module) and
the model is given the static input shapes of the benchmark, as a deployment would. Two
conversion rules are passed to it:

- our custom op ``hidiff::time_activation`` (TA, paper Eq. 16), which the real refiner calls too,
  written with OpenVINO ops (:func:`time_activation_extension`);
- ``aten::group_norm`` as MVN over ``(N, groups, -1)`` and the per-channel affine
  (:func:`group_norm_extension`). With the frontend's own translation, compiling the
  static-shape refiner for the CPU plugin in fp32 kills the process (a segmentation fault in one
  of the plugin's graph-rewrite passes, reproduced with one condition ResBlock alone, whose second
  GroupNorm is followed by the FiLM scale; GroupNorm, SiLU and conv alone compile). It compiles
  with dynamic shapes (then most of the graph runs with dynamic shapes), in bf16 (not the fp32
  comparison), or with the plugin's ``SNIPPETS_MODE`` disabled (no fused element-wise
  subgraphs): each a configuration other than the one a user would deploy. With this rule the
  plugin compiles the static fp32 model with its defaults.

Every model is compiled for the CPU plugin in fp32 (``INFERENCE_PRECISION_HINT`` f32, so a CPU
with bf16 support does not silently run bf16), for latency, with ``INFERENCE_NUM_THREADS`` equal
to torch's thread count.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hidiff_kernels as hk

try:
    import openvino as ov
    import openvino.opset1 as opset1
    import openvino.opset13 as ops
    import openvino.properties as props
    import openvino.properties.hint as hints
    from openvino.frontend.pytorch import ConversionExtension
except ModuleNotFoundError as error:
    if error.name is None or not error.name.startswith("openvino"):
        raise
    ov = None

AVAILABLE = ov is not None
SKIP_REASON = "OpenVINO is not installed (optional peer: pip install .[peers])"
#: Marks a test that needs OpenVINO; it is skipped with :data:`SKIP_REASON` otherwise.
requires_openvino = pytest.mark.skipif(not AVAILABLE, reason=SKIP_REASON)

#: The CPU plugin's BinaryConvolution handles input channel counts that are multiples of this.
CHANNEL_GRANULE = 8


class PeerMismatch(AssertionError):
    """OpenVINO's result differs from ours (or from torch's) beyond what the comparison allows."""


class Unsupported(RuntimeError):
    """OpenVINO's CPU plugin rejects the layer's parameters."""


_CORE: ov.Core | None = None


def core() -> ov.Core:
    """The process's OpenVINO runtime core (created once)."""
    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


def compile_for_cpu(model: ov.Model, threads: int | None = None) -> ov.CompiledModel:
    """Compiles ``model`` for the CPU plugin: fp32, latency, ``threads`` threads (default: torch's).

    Raises:
        Unsupported: the plugin rejects one of the model's operations with these parameters.
    """
    config = {
        props.inference_num_threads: threads or torch.get_num_threads(),
        hints.inference_precision: ov.Type.f32,
        hints.performance_mode: hints.PerformanceMode.LATENCY,
    }
    try:
        return core().compile_model(model, "CPU", config)
    except RuntimeError as error:
        if "unsupported parameters" in str(error):
            # The last line names the operation (and its generated node name, dropped here).
            raise Unsupported(re.sub(r" with name '[^']*'", "", str(error).strip().splitlines()[-1])) from error
        raise


class Runner:
    """A compiled model and one infer request: ``runner(*inputs)`` runs it synchronously.

    Inputs are shared with OpenVINO without copies (contiguous arrays or CPU tensors of the model's
    input types). With ``copy_output`` False the result is a view of OpenVINO's output buffer,
    overwritten by the next call (what a benchmark of a single layer wants: no extra copy); with
    True it is a fresh array.
    """

    def __init__(self, compiled: ov.CompiledModel, copy_output: bool = False) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.copy_output = copy_output

    def __call__(self, *inputs: np.ndarray | Tensor) -> np.ndarray:
        arrays = [x.numpy() if isinstance(x, Tensor) else x for x in inputs]
        return self.request.infer(arrays, share_inputs=True, share_outputs=not self.copy_output)[0]


def _pair(value: int | Sequence[int]) -> list[int]:
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def _const(array: np.ndarray) -> ov.Node:
    return ops.constant(np.ascontiguousarray(array))


def _per_channel(values: Tensor) -> np.ndarray:
    """float32 ``(C,)`` -> ``(1, C, 1, 1)`` for broadcasting over NCHW."""
    return values.detach().float().reshape(1, -1, 1, 1).numpy()


def in_bounds_taps(
    height: int, width: int, kernel: tuple[int, int], stride: int, padding: int, dilation: int
) -> np.ndarray:
    """float32 ``(1, 1, Ho, Wo)``: how many taps of each output's receptive field lie inside the image."""
    ones = torch.ones(1, 1, height, width)
    return F.conv2d(ones, torch.ones(1, 1, *kernel), None, stride, padding, dilation).numpy()


def binary_conv_model(
    weight: Tensor,
    height: int,
    width: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    scale: Tensor | None = None,
    bias: Tensor | None = None,
) -> ov.Model:
    """OpenVINO model of a binary layer fed with float activations, batch 1.

    It computes what ``binary_conv2d(binarize_pack(x), pack_weight(weight), ...)`` computes:
    ``scale * conv(sign(x), sign(weight)) + bias`` with sign = +1 where the value is > 0, else -1,
    and exact zero padding.

    Args:
        weight: float ``(O, I, KH, KW)``; only its signs are used (packed into a u1 constant).
        height, width: input size.
        stride, padding, dilation: as in ``F.conv2d`` (one int for both axes).
        scale, bias: optional float ``(O,)`` per-channel affine of the integer result.

    Returns:
        A model with one input, float32 ``(1, I, height, width)``, and one output, float32
        ``(1, O, Ho, Wo)``.
    """
    out_channels, in_channels, kh, kw = weight.shape
    x = ops.parameter([1, in_channels, height, width], ov.Type.f32, name="x")
    data = x
    extra = -in_channels % CHANNEL_GRANULE
    if extra:
        filler = np.full((1, extra, height, width), -1.0, np.float32)
        data = ops.concat([x, _const(filler)], axis=1)
    zero, one = _const(np.zeros((1, 1, 1, 1), np.float32)), _const(np.ones((1, 1, 1, 1), np.float32))
    bits = ops.fake_quantize(data, zero, zero, zero, one, 2)
    # OpenVINO's 1 (+1) is our "w > 0"; the filler channels' weights are 0 (-1).
    plus = torch.zeros(out_channels, in_channels + extra, kh, kw, dtype=torch.bool)
    plus[:, :in_channels] = weight > 0
    packed = ov.Tensor(ov.Type.u1, ov.Shape(list(plus.shape)))
    packed.data[:] = np.packbits(plus.numpy().reshape(-1), bitorder="little")
    out = opset1.binary_convolution(
        bits,
        ov.op.Constant(packed),
        _pair(stride),
        _pair(padding),
        _pair(padding),
        _pair(dilation),
        "xnor-popcount",
        0.0,
    )
    if extra:
        # Each filler channel adds (-1) * (-1) = +1 per in-bounds tap.
        taps = in_bounds_taps(height, width, (kh, kw), stride, padding, dilation)
        out = ops.subtract(out, _const(extra * taps))
    if scale is not None:
        out = ops.multiply(out, _const(_per_channel(scale)))
    if bias is not None:
        out = ops.add(out, _const(_per_channel(bias)))
    return ov.Model([out.output(0)], [x], "binary_conv")


def float_conv_model(
    weight: Tensor,
    height: int,
    width: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    bias: Tensor | None = None,
) -> ov.Model:
    """OpenVINO model of ``F.conv2d(x, weight, bias, stride, padding, dilation)`` in fp32, batch 1.

    Args:
        weight: float ``(O, I, KH, KW)``.
        height, width: input size.
        stride, padding, dilation: one int for both axes.
        bias: optional float ``(O,)``.

    Returns:
        A model with one input, float32 ``(1, I, height, width)``, and one output, float32
        ``(1, O, Ho, Wo)``.
    """
    x = ops.parameter([1, weight.shape[1], height, width], ov.Type.f32, name="x")
    out = ops.convolution(
        x,
        _const(weight.detach().float().numpy()),
        _pair(stride),
        _pair(padding),
        _pair(padding),
        _pair(dilation),
    )
    if bias is not None:
        out = ops.add(out, _const(_per_channel(bias)))
    return ov.Model([out.output(0)], [x], "float_conv")


def ours_binary_layer(
    x: Tensor,
    weight: Tensor,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    scale: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Our binary layer on a float input: ``binary_conv2d(binarize_pack(x), pack_weight(weight), ...)``."""
    return hk.binary_conv2d(
        hk.binarize_pack(x), hk.pack_weight(weight), x.shape[1], stride, padding, dilation, scale, bias
    )


def _mismatch(what: str, got: Tensor, want: Tensor, bad: Tensor) -> PeerMismatch:
    """The error for ``got`` != ``want`` where ``bad`` (a bool tensor with at least one True) is set."""
    where = tuple(int(i) for i in bad.nonzero()[0])
    return PeerMismatch(
        f"{what}: {int(bad.sum())} of {bad.numel()} values differ (max |diff| "
        f"{(got - want).abs().max().item():.6g}; first at {where}: OpenVINO {got[where].item():.9g}, "
        f"reference {want[where].item():.9g})"
    )


def check_binary_conv(
    x: Tensor,
    weight: Tensor,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    scale: Tensor | None = None,
    bias: Tensor | None = None,
    runner: Runner | None = None,
    threads: int | None = None,
) -> None:
    """Checks OpenVINO's binary layer against ours on ``x`` (batch 1).

    The integer convolution (no scale, no bias) must be bit-identical. With ``scale`` or ``bias``,
    the affine model (``runner``, the compiled :func:`binary_conv_model` about to be timed, or one
    compiled here when None) must match ours within 4 float32 ulps of ``|scale * acc| + |bias|``,
    element by element: the two may round the multiply-add differently (``acc`` includes the
    filler channels' count when there are some: OpenVINO may fold the correction into the affine).

    Raises:
        PeerMismatch: a difference beyond that.
        Unsupported: the CPU plugin rejects the layer's parameters.
    """
    _, _, height, width = x.shape
    geometry = (height, width, stride, padding, dilation)
    with torch.inference_mode():
        acc = ours_binary_layer(x, weight, stride, padding, dilation)
        got = torch.from_numpy(Runner(compile_for_cpu(binary_conv_model(weight, *geometry), threads))(x).copy())
        shape = f"{tuple(weight.shape)} on {tuple(x.shape)}, stride {stride}, padding {padding}, dilation {dilation}"
        if got.shape != acc.shape:
            raise PeerMismatch(f"binary conv {shape}: OpenVINO output {tuple(got.shape)}, ours {tuple(acc.shape)}")
        if not torch.equal(got, acc):
            raise _mismatch(f"binary conv {shape}, integer part", got, acc, got != acc)
        if scale is None and bias is None:
            return
        if runner is None:
            runner = Runner(compile_for_cpu(binary_conv_model(weight, *geometry, scale=scale, bias=bias), threads))
        got = torch.from_numpy(runner(x).copy())
        want = ours_binary_layer(x, weight, stride, padding, dilation, scale, bias)
        # With filler channels OpenVINO may scale the filled sum and correct afterwards, so its
        # rounding is relative to that larger magnitude.
        extra = -x.shape[1] % CHANNEL_GRANULE
        filled = acc.abs() + extra * torch.from_numpy(in_bounds_taps(height, width, weight.shape[2:], *geometry[2:]))
        magnitude = filled * (1.0 if scale is None else scale.abs().view(1, -1, 1, 1))
        if bias is not None:
            magnitude = magnitude + bias.abs().view(1, -1, 1, 1)
        bound = 4 * torch.finfo(torch.float32).eps * magnitude
        bad = (got - want).abs() > bound
        if bad.any():
            raise _mismatch(f"binary conv {shape}, with scale and bias", got, want, bad)


def check_float_conv(
    x: Tensor,
    weight: Tensor,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    bias: Tensor | None = None,
    runner: Runner | None = None,
    threads: int | None = None,
) -> None:
    """Checks OpenVINO's fp32 convolution (``runner``, the compiled :func:`float_conv_model` about to
    be timed, or one compiled here when None) against ``F.conv2d`` on ``x`` (batch 1).

    Float sums in another order differ by rounding: each output may differ by up to 1e-5 of the
    sum of the absolute values of its terms (``conv(|x|, |w|) + |bias|``); a wrong layout or
    padding gives differences of the order of the terms themselves.

    Raises:
        PeerMismatch: a difference beyond that.
    """
    _, _, height, width = x.shape
    with torch.inference_mode():
        if runner is None:
            model = float_conv_model(weight, height, width, stride, padding, dilation, bias)
            runner = Runner(compile_for_cpu(model, threads))
        got = torch.from_numpy(runner(x).copy())
        want = F.conv2d(x, weight, bias, stride, padding, dilation)
        terms = F.conv2d(x.abs(), weight.abs(), None if bias is None else bias.abs(), stride, padding, dilation)
        if got.shape != want.shape:
            raise PeerMismatch(f"fp32 conv: OpenVINO output {tuple(got.shape)}, torch {tuple(want.shape)}")
        bad = (got - want).abs() > 1e-5 * terms
        if bad.any():
            raise _mismatch(f"fp32 conv {tuple(weight.shape)} on {tuple(x.shape)}", got, want, bad)


def time_activation_extension() -> ConversionExtension:
    """Conversion rule for ``hidiff::time_activation`` (TA, paper Eq. 16) in ``openvino.convert_model``.

    ``TA(u) = u - gamma + zeta`` where ``u > gamma``, else ``beta * (u - gamma) + zeta``, with ``u``
    ``(N, C, ...)``, ``gamma`` and ``zeta`` ``(N, C)`` and ``beta`` ``(C,)`` broadcast over the
    trailing axes.
    """

    def convert(node) -> list:
        u, gamma, zeta, beta = (node.get_input(i) for i in range(4))
        trailing = np.arange(2, u.get_partial_shape().rank.get_length(), dtype=np.int64)
        gamma = ops.unsqueeze(gamma, _const(trailing))
        zeta = ops.unsqueeze(zeta, _const(trailing))
        beta = ops.unsqueeze(beta, _const(np.concatenate([[0], trailing]).astype(np.int64)))
        shifted = ops.subtract(u, gamma)
        out = ops.select(ops.greater(u, gamma), ops.add(shifted, zeta), ops.add(ops.multiply(beta, shifted), zeta))
        return [out.output(0)]

    return ConversionExtension("hidiff::time_activation", convert)


def group_norm_extension() -> ConversionExtension:
    """Conversion rule for ``aten::group_norm`` with an affine (``nn.GroupNorm(affine=True)``, as in
    the refiner): MVN (biased variance, eps inside the square root) over each group of
    ``(N, groups, -1)``, reshaped back, times ``weight``, plus ``bias`` per channel.
    """

    def convert(node) -> list:
        x, weight, bias = node.get_input(0), node.get_input(2), node.get_input(3)
        groups = int(node.get_values_from_const_input(1))
        eps = float(node.get_values_from_const_input(4))
        grouped = ops.reshape(x, _const(np.array([0, groups, -1], np.int64)), special_zero=True)
        normed = ops.mvn(grouped, _const(np.array([2], np.int64)), True, eps, "inside_sqrt")
        out = ops.reshape(normed, ops.shape_of(x), special_zero=False)
        channel_axes = _const(np.arange(1, x.get_partial_shape().rank.get_length() - 1, dtype=np.int64))
        out = ops.add(ops.multiply(out, ops.unsqueeze(weight, channel_axes)), ops.unsqueeze(bias, channel_axes))
        return [out.output(0)]

    return ConversionExtension("aten::group_norm", convert)


def flat_inputs(image: Tensor, y_t: Tensor, prior: Tensor, t: Tensor, features: Sequence[Tensor]) -> list[Tensor]:
    """The refiner's arguments in the order of the converted model's inputs (the features flattened)."""
    return [image, y_t, prior, t, *features]


def convert_refiner(
    refiner: nn.Module, image: Tensor, y_t: Tensor, prior: Tensor, t: Tensor, features: Sequence[Tensor]
) -> ov.Model:
    """``openvino.convert_model`` of a real refiner (``BBDM(binary=False)``, eval mode), static shapes.

    The example arguments fix the input shapes (batch 1 and the image size), as a deployment would.
    They must be ordinary tensors (not created under ``torch.inference_mode``, which tracing cannot use).

    Returns:
        A model with the inputs of :func:`flat_inputs` and one output, ``eps_hat`` float32 ``(B, K, H, W)``.
    """
    example = (image, y_t, prior, t, list(features))
    with warnings.catch_warnings():
        # The tracer warns about every shape check in the refiner's Python code (shapes are fixed
        # here), and torch about the tracer itself, which OpenVINO's converter calls.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace", DeprecationWarning)
        model = ov.convert_model(
            refiner, example_input=example, extension=[time_activation_extension(), group_norm_extension()]
        )
    model.reshape({i: ov.PartialShape(list(x.shape)) for i, x in enumerate(flat_inputs(*example))})
    return model


def check_refiner(
    runner: Runner,
    refiner: nn.Module,
    image: Tensor,
    prior: Tensor,
    features: Sequence[Tensor],
    timesteps: Sequence[int],
    seed: int = 0,
    atol: float = 1e-4,
) -> None:
    """Checks the compiled refiner against the torch module: ``eps_hat`` at each of ``timesteps``, for
    ``y_t ~ Bernoulli(prior)`` (a fresh draw per timestep), within ``atol``.

    ``eps_hat`` lies in (0, 1); fp32 rounding in another summation order moves it by about 1e-6
    at C = 128, while a wrong conversion moves it by far more than ``atol``.

    Raises:
        PeerMismatch: some value differs by more than ``atol``.
    """
    generator = torch.Generator().manual_seed(seed)
    for step in timesteps:
        y_t = (torch.rand(prior.shape, generator=generator) < prior).float()
        t = torch.full((prior.shape[0],), step, dtype=torch.int64)
        with torch.inference_mode():
            want = refiner(image, y_t, prior, t, features)
        got = torch.from_numpy(runner(*flat_inputs(image, y_t, prior, t, features)))
        if got.shape != want.shape:
            raise PeerMismatch(f"refiner at t={step}: OpenVINO output {tuple(got.shape)}, torch {tuple(want.shape)}")
        bad = (got - want).abs() > atol
        if bad.any():
            raise _mismatch(f"refiner eps_hat at t={step}", got, want, bad)
