"""The layer table: binary_conv2d vs torch fp32 conv2d, batch 1, 3x3, padding 1, same threads.

Columns: torch fp32 ``F.conv2d`` (NCHW, the baseline), torch fp32 on channels-last memory,
``binary_conv2d`` on an already packed input, and ``binarize_pack`` + ``binary_conv2d`` (the
full cost of a binary layer fed with float activations). Both paths include the per-channel
scale and bias.

With OpenVINO installed (the optional peer, ``pip install .[peers]``), two more columns: its fp32
convolution (with the bias) and its binary convolution fed with the same float input (binarisation,
``BinaryConvolution``, scale and bias; see ``openvino_peer``), compiled for its CPU plugin with
as many threads as torch. Each is checked against ours (binary: bit-identical integer result) or
torch's (fp32: float rounding) before it is timed, and the table gets the speed-up of the binary
layer fed with float activations over each of them. Without OpenVINO those tests are skipped.
"""

from __future__ import annotations

import openvino_peer as peer
import pytest
import torch
import torch.nn.functional as F

import hidiff_kernels as hk

# (in_channels, out_channels, size, stride)
LAYERS = [
    (128, 128, 256, 1),
    (128, 128, 256, 2),
    (256, 256, 64, 1),
    (512, 512, 16, 1),
    (256, 128, 256, 1),
    (512, 512, 8, 1),
]
TABLE = ("layers", "Binary 3x3 convolution vs torch fp32, batch 1, padding 1", "torch fp32")
# (column, geometric-mean speed-up over torch fp32, minimum speed-up on every row)
TARGET = ("binary (packed input)", 8.0, 5.0)
OPENVINO_FP32, OPENVINO_BINARY = "OpenVINO fp32", "OpenVINO binary (float input)"
# Like with like: both binary columns take float activations.
VERSUS = (("binary (pack + conv)", OPENVINO_BINARY), ("binary (pack + conv)", OPENVINO_FP32))


def layer_id(layer) -> str:
    cin, cout, size, stride = layer
    return f"{cin}->{cout} {size}x{size}" + (f" s{stride}" if stride != 1 else "")


@pytest.fixture(params=LAYERS, ids=layer_id)
def layer(request):
    cin, cout, size, stride = request.param
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, cin, size, size, generator=generator)
    w = torch.randn(cout, cin, 3, 3, generator=generator)
    scale, bias = w.abs().mean((1, 2, 3)), torch.randn(cout, generator=generator)
    return request.param, x, w, scale, bias


@pytest.mark.benchmark(group="layers")
def test_torch_fp32(benchmark, record, layer):
    shape, x, w, _, bias = layer
    record(*TABLE, layer_id(shape), "torch fp32")
    with torch.inference_mode():
        benchmark(F.conv2d, x, w, bias, shape[3], 1)


@pytest.mark.benchmark(group="layers")
def test_torch_fp32_channels_last(benchmark, record, layer):
    shape, x, w, _, bias = layer
    record(*TABLE, layer_id(shape), "torch fp32 channels-last")
    x = x.contiguous(memory_format=torch.channels_last)
    w = w.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        benchmark(F.conv2d, x, w, bias, shape[3], 1)


@pytest.mark.benchmark(group="layers")
def test_binary_conv_packed_input(benchmark, record, layer):
    shape, x, w, scale, bias = layer
    record(*TABLE, layer_id(shape), "binary (packed input)", TARGET)
    x_packed, w_packed = hk.binarize_pack(x), hk.pack_weight(w)
    with torch.inference_mode():
        benchmark(hk.binary_conv2d, x_packed, w_packed, shape[0], shape[3], 1, 1, scale, bias)


@pytest.mark.benchmark(group="layers")
def test_binarize_pack_and_binary_conv(benchmark, record, layer):
    shape, x, w, scale, bias = layer
    record(*TABLE, layer_id(shape), "binary (pack + conv)")
    w_packed = hk.pack_weight(w)

    def binary_layer():
        return hk.binary_conv2d(hk.binarize_pack(x), w_packed, shape[0], shape[3], 1, 1, scale, bias)

    with torch.inference_mode():
        benchmark(binary_layer)


@peer.requires_openvino
@pytest.mark.benchmark(group="layers")
def test_openvino_fp32(benchmark, record, layer):
    shape, x, w, _, bias = layer
    record(*TABLE, layer_id(shape), OPENVINO_FP32, versus=VERSUS)
    size, stride = shape[2], shape[3]
    run = peer.Runner(peer.compile_for_cpu(peer.float_conv_model(w, size, size, stride, 1, 1, bias)))
    peer.check_float_conv(x, w, stride, 1, 1, bias, runner=run)
    benchmark(run, x)


@peer.requires_openvino
@pytest.mark.benchmark(group="layers")
def test_openvino_binary(benchmark, record, layer):
    shape, x, w, scale, bias = layer
    record(*TABLE, layer_id(shape), OPENVINO_BINARY, versus=VERSUS)
    size, stride = shape[2], shape[3]
    run = peer.Runner(peer.compile_for_cpu(peer.binary_conv_model(w, size, size, stride, 1, 1, scale, bias)))
    peer.check_binary_conv(x, w, stride, 1, 1, scale, bias, runner=run)
    benchmark(run, x)
