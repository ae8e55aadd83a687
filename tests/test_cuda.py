"""The hidiff:: ops on CUDA tensors, whatever kernel serves them (compiled CUDA, Triton or reference).

Every result is compared bit for bit with the reference computed on the CPU; opcheck, torch.compile
and CUDA-graph capture run on the GPU. The whole module skips without a GPU.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import hidiff_kernels as hk
from hidiff_kernels import info, ops, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = "cuda"


def on_gpu(*tensors):
    return [None if t is None else t.to(CUDA) for t in tensors]


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.is_cuda
    actual = actual.cpu()
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(actual, expected)


def test_every_cuda_op_has_a_gpu_kernel():
    """With the CUDA extension built or Triton installed, no CUDA op falls back to the reference."""
    compiled_cuda = hk.COMPILED and hk._C.with_cuda
    if not compiled_cuda and importlib.util.find_spec("triton") is None:
        pytest.skip("neither the CUDA extension nor triton is available")
    served = {name: row["CUDA"] for name, row in info.kernel_table().items()}
    assert all(kernel in ("CUDA", "Triton") for kernel in served.values()), served


@pytest.mark.parametrize("channels", [1, 3, 31, 33, 63, 65, 96, 193])
def test_binarize_pack(channels):
    x = torch.randn(2, channels, 5, 7)
    x[0, 0, 0, 0] = float("nan")
    for threshold in (None, torch.randn(channels), torch.randn(2, channels)):
        expected = reference.binarize_pack(x, threshold)
        xd, td = on_gpu(x, threshold)
        assert_same(hk.binarize_pack(xd, td), expected)
        assert_same(hk.binarize_pack(xd.contiguous(memory_format=torch.channels_last), td), expected)
        for dtype in (torch.float64, torch.float16, torch.bfloat16):
            assert_same(hk.binarize_pack(xd.to(dtype), td), reference.binarize_pack(x.to(dtype), threshold))
    w = torch.randn(9, channels, 3, 3)
    assert_same(hk.pack_weight(w.to(CUDA)), reference.pack_weight(w))


# (in_channels, out_channels, (H, W), (KH, KW), stride, padding, dilation)
CONV_SHAPES = [
    (1, 3, (5, 5), (3, 3), 1, 1, 1),
    (3, 8, (7, 9), (3, 3), 1, 1, 1),
    (31, 9, (6, 5), (3, 3), 2, 1, 1),
    (33, 17, (5, 7), (3, 3), 1, 2, 2),
    (63, 40, (4, 4), (1, 1), 1, 0, 1),
    (65, 70, (9, 11), (3, 3), 2, 2, 1),
    (96, 16, (1, 1), (3, 3), 1, 1, 1),
    (193, 10, (5, 6), (3, 3), 1, 1, 2),
    (45, 6, (9, 10), (3, 2), (2, 1), (2, 0), (1, 3)),
    (512, 3, (6, 6), (5, 5), 1, 2, 1),
    (128, 130, (33, 31), (3, 3), 1, 1, 1),
]


def conv_case(shape, batch=2):
    cin, cout, (h, w), (kh, kw), stride, padding, dilation = shape
    x_packed = reference.binarize_pack(torch.randn(batch, cin, h, w))
    w_packed = reference.pack_weight(torch.randn(cout, cin, kh, kw))
    pair = ops.as_pair
    return x_packed, w_packed, cin, pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_binary_conv2d(shape):
    x_packed, w_packed, cin, stride, padding, dilation = conv_case(shape)
    cout = w_packed.shape[0]
    scale, bias = torch.rand(cout) + 0.1, torch.randn(cout)
    xd, wd, sd, bd = on_gpu(x_packed, w_packed, scale, bias)
    assert_same(
        hk.binary_conv2d(xd, wd, cin, stride, padding, dilation),
        reference.binary_conv2d(x_packed, w_packed, cin, stride, padding, dilation),
    )
    assert_same(
        hk.binary_conv2d(xd, wd, cin, stride, padding, dilation, sd, bd),
        reference.binary_conv2d(x_packed, w_packed, cin, stride, padding, dilation, scale, bias),
    )


@pytest.mark.parametrize("shape", CONV_SHAPES[1::2])
@pytest.mark.parametrize("threshold_kind", [None, "per-channel", "per-sample"])
def test_binary_conv2d_fused(shape, threshold_kind):
    x_packed, w_packed, cin, stride, padding, dilation = conv_case(shape)
    n, o = x_packed.shape[0], w_packed.shape[0]
    u_shape = reference.binary_conv2d(x_packed, w_packed, cin, stride, padding, dilation).shape
    threshold = {None: None, "per-channel": torch.randn(o), "per-sample": torch.randn(n, o)}[threshold_kind]
    epilogue = [torch.rand(o) + 0.1, torch.randn(o), torch.randn(u_shape), torch.randn(n, o), torch.randn(n, o)]
    epilogue += [torch.rand(o), threshold]
    conv = (cin, list(stride), list(padding), list(dilation))
    out, packed = hk.binary_conv2d_fused(*on_gpu(x_packed, w_packed), *conv, *on_gpu(*epilogue), pack=True)
    expected_out, expected_packed = reference.binary_conv2d_fused(x_packed, w_packed, *conv, *epilogue, True)
    assert_same(out, expected_out)
    assert_same(packed, expected_packed)
    plain, empty = hk.binary_conv2d_fused(*on_gpu(x_packed, w_packed), *conv)
    assert_same(plain, reference.binary_conv2d(x_packed, w_packed, *conv))
    assert empty.shape == (0,) and empty.dtype == torch.int32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 65, 1, 1), (3, 8), (2, 5, 3, 2, 2)])
def test_time_activation(shape, dtype):
    n, c = shape[0], shape[1]
    inputs = [t.to(dtype) for t in (torch.randn(shape), torch.randn(n, c), torch.randn(n, c), torch.rand(c))]
    assert_same(hk.time_activation(*on_gpu(*inputs)), reference.time_activation(*inputs))


@pytest.mark.parametrize("mode", ["posterior", "ddim"])
@pytest.mark.parametrize("shape", [(7,), (2, 1, 9, 13), (3, 3, 5, 7), (2, 1, 64, 67)])
def test_bernoulli_step(mode, shape):
    y_t = torch.randint(0, 2, shape).float()
    eps_hat, prior = torch.rand(shape), torch.rand(shape)
    coef = torch.stack([torch.rand(shape[0]), 2 * torch.rand(shape[0]) - 0.5], dim=1)
    for seed, offset in [(0, 0), (123, 17), (2**40 + 3, 2**33 - 5), (-3, 2**32 - 100)]:
        out = hk.bernoulli_step(*on_gpu(y_t, eps_hat, prior, coef), mode, seed, offset)
        assert_same(out, reference.bernoulli_step(y_t, eps_hat, prior, coef, mode, seed, offset))


def test_errors_name_the_argument():
    x_packed, w_packed, cin, *_ = conv_case((33, 4, (5, 5), (3, 3), 1, 1, 1))
    xd, wd = on_gpu(x_packed, w_packed)
    with pytest.raises(ValueError, match="words per pixel"):
        hk.binary_conv2d(xd, wd, 65)
    with pytest.raises(ValueError, match="device"):
        hk.binary_conv2d(xd, w_packed, cin)
    with pytest.raises(ValueError, match="together"):
        hk.binary_conv2d_fused(xd, wd, cin, 1, 1, 1, gamma=torch.randn(2, 4, device=CUDA))


def test_kernels_follow_the_current_device_and_stream():
    x_packed, w_packed, cin, stride, padding, dilation = conv_case((65, 70, (9, 11), (3, 3), 1, 1, 1))
    expected = reference.binary_conv2d(x_packed, w_packed, cin, stride, padding, dilation)
    last = torch.device(CUDA, torch.cuda.device_count() - 1)
    stream = torch.cuda.Stream(last)
    xd, wd = x_packed.to(last), w_packed.to(last)
    stream.wait_stream(torch.cuda.current_stream(last))  # the copies above ran on the default stream
    with torch.cuda.stream(stream):
        out = hk.binary_conv2d(xd, wd, cin, stride, padding, dilation)
    stream.synchronize()
    assert out.device == last
    assert torch.equal(out.cpu(), expected)


def _cuda_samples():
    x = torch.randn(2, 33, 6, 5, device=CUDA)
    xp, wp = hk.binarize_pack(x), hk.pack_weight(torch.randn(4, 33, 3, 3, device=CUDA))
    scale = torch.rand(4, device=CUDA, requires_grad=True)
    bias = torch.randn(4, device=CUDA, requires_grad=True)
    gamma, zeta, beta = (torch.randn(2, 4, device=CUDA), torch.randn(2, 4, device=CUDA), torch.rand(4, device=CUDA))
    y_t = torch.randint(0, 2, (2, 3, 4, 5), device=CUDA).float()
    return {
        "binarize_pack": [
            (x, None),
            (x.contiguous(memory_format=torch.channels_last), torch.randn(2, 33, device=CUDA)),
        ],
        "pack_weight": [(torch.randn(5, 33, 3, 3, device=CUDA),)],
        "binary_conv2d": [
            (xp, wp, 33, [1, 1], [1, 1], [1, 1], None, None),
            (xp, wp, 33, [2, 1], [0, 2], [1, 2], scale, bias),
        ],
        "binary_conv2d_fused": [
            (xp, wp, 33, [1, 1], [1, 1], [1, 1], None, None, None, None, None, None, None, False),
            (xp, wp, 33, [1, 1], [1, 1], [1, 1], scale.detach(), bias.detach(), None, gamma, zeta, beta, None, True),
        ],
        "time_activation": [
            (
                torch.randn(2, 3, 4, 4, device=CUDA, requires_grad=True),
                torch.randn(2, 3, device=CUDA, requires_grad=True),
                torch.randn(2, 3, device=CUDA, requires_grad=True),
                torch.rand(3, device=CUDA, requires_grad=True),
            )
        ],
        "bernoulli_step": [
            (y_t, torch.rand_like(y_t), torch.rand_like(y_t), torch.rand(2, 2, device=CUDA), "posterior", 7, 0),
            (y_t, torch.rand_like(y_t), torch.rand_like(y_t), torch.rand(2, 2, device=CUDA), "ddim", 2**40, 120),
        ],
    }


def test_opcheck_on_cuda():
    samples = _cuda_samples()
    assert set(samples) == set(ops.SCHEMAS)
    for name, cases in samples.items():
        op = getattr(torch.ops.hidiff, name).default
        for args in cases:
            torch.library.opcheck(op, args)


def _refinement_step(x, w1, w2, scale, bias, gamma, zeta, beta, y_t, prior, coef):
    """One binary refinement step: TB, a fused binary block (affine, residual, TA, packing), a binary
    head and the Bernoulli draw, all through the public ops."""
    channels = x.shape[1]
    packed = hk.binarize_pack(x)
    _, hidden = hk.binary_conv2d_fused(
        packed, w1, channels, 1, 1, 1, scale, bias, residual=x, gamma=gamma, zeta=zeta, beta=beta, pack=True
    )
    logits = hk.binary_conv2d(hidden, w2, channels, 1, 1, 1)
    eps_hat = torch.where(logits > 0, 0.9, 0.1)  # exact on every device, unlike a sigmoid
    return hk.bernoulli_step(y_t, eps_hat, prior, coef, "posterior", 7, 11)


def _step_inputs(n=2, c=64, h=16, w=16):
    return [
        torch.randn(n, c, h, w),
        reference.pack_weight(torch.randn(c, c, 3, 3)),
        reference.pack_weight(torch.randn(1, c, 3, 3)),
        torch.rand(c),
        torch.randn(c),
        torch.randn(n, c),
        torch.randn(n, c),
        torch.rand(c),
        torch.randint(0, 2, (n, 1, h, w)).float(),
        torch.rand(n, 1, h, w),
        torch.tensor([[0.9, 0.5], [0.8, 0.4]]),
    ]


def test_refinement_step_matches_the_reference():
    inputs = _step_inputs()
    with torch.no_grad():
        expected = _refinement_step(*inputs)  # CPU kernels, equal to the reference
        assert_same(_refinement_step(*on_gpu(*inputs)), expected)


def test_torch_compile_fullgraph_on_cuda():
    inputs = on_gpu(*_step_inputs())
    compiled = torch.compile(_refinement_step, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(*inputs), _refinement_step(*inputs))


def test_cuda_graph_capture_of_a_refinement_step():
    inputs = _step_inputs()
    gpu_inputs = on_gpu(*inputs)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (kernel compilation, allocator) off the capture
            _refinement_step(*gpu_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = _refinement_step(*gpu_inputs)
        new_x = torch.randn_like(inputs[0])
        gpu_inputs[0].copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        assert_same(captured, _refinement_step(new_x, *inputs[1:]))
