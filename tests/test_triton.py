"""The Triton kernels (hidiff_kernels.triton) against the reference, bit for bit.

Without a GPU the kernels run under the Triton interpreter on CPU tensors. ``TRITON_INTERPRET``
must be set before Triton compiles anything and must not leak into other test files, so
``test_interpreter_suite`` reruns this file in a fresh Python process with
``TRITON_INTERPRET=1``; there the ``device`` fixture is "cpu" and every kernel test runs. With a
GPU (and without the variable) the same tests run on CUDA tensors in this process, plus the
CUDA-only tests at the end. Running this file with ``TRITON_INTERPRET=1`` already set runs the
interpreter tests directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hidiff_kernels import ops, reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = HAS_TRITON and not INTERPRETED and torch.cuda.is_available()
REPO = Path(__file__).resolve().parent.parent

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs triton, a CUDA GPU and TRITON_INTERPRET unset")


@pytest.fixture
def device() -> str:
    """Where the kernels run: CPU tensors under the interpreter, else the GPU."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if INTERPRETED:
        return "cpu"
    if ON_GPU:
        return "cuda"
    pytest.skip("no GPU: the kernels run under TRITON_INTERPRET=1 in test_interpreter_suite")


@pytest.fixture
def launch(device):
    """The module of Triton wrappers (imported only once Triton is known to be usable here)."""
    return importlib.import_module("hidiff_kernels.triton.launch")


def on(device: str, *tensors):
    """The tensors moved to ``device`` (None stays None)."""
    return [None if t is None else t.to(device) for t in tensors]


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-exact equality of values, dtype and shape (the result is compared on the CPU)."""
    actual = actual.cpu()
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.equal(actual, expected), (actual - expected).abs().max() if actual.is_floating_point() else None


# --- driver: the interpreter tests in a fresh process ----------------------------------------


@needs_triton
@pytest.mark.skipif(INTERPRETED, reason="already running under the interpreter")
def test_interpreter_suite():
    env = dict(os.environ, TRITON_INTERPRET="1")
    command = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    passed = re.search(r"(\d+) passed", output)
    # A suite that silently skipped everything would prove nothing.
    assert passed and int(passed.group(1)) >= 50, output[-5000:]


# --- binarize_pack / pack_weight -------------------------------------------------------------

CHANNELS = [1, 3, 31, 33, 63, 65, 96, 193]


@pytest.mark.parametrize("channels", CHANNELS)
def test_binarize_pack(launch, device, channels):
    x = torch.randn(2, channels, 3, 5)
    x[0, 0, 0, :2] = 0.0  # equal to the threshold: -1
    x[1, -1, 2, 4] = float("nan")  # NaN: -1
    per_channel, per_sample = torch.randn(channels) * 0.3, torch.randn(2, channels) * 0.3
    for threshold in (None, per_channel, per_sample):
        xd, td = on(device, x, threshold)
        assert_same(launch.binarize_pack(xd, td), reference.binarize_pack(x, threshold))


@pytest.mark.parametrize("shape", [(1, 33, 1, 1), (3, 70, 1, 7), (2, 5, 9, 1)])
def test_binarize_pack_layouts_and_dtypes(launch, device, shape):
    x = torch.randn(shape)
    expected = reference.binarize_pack(x)
    (xd,) = on(device, x)
    assert_same(launch.binarize_pack(xd.contiguous(memory_format=torch.channels_last)), expected)
    assert_same(launch.binarize_pack(xd.transpose(2, 3).contiguous().transpose(2, 3)), expected)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        assert_same(launch.binarize_pack(xd.to(dtype)), reference.binarize_pack(x.to(dtype)))


def test_binarize_pack_float64_compares_in_float64(launch, device):
    # 1e-50 > 0 in float64 (it would round to 0, hence -1, in float32): +1, as in the reference.
    x = torch.tensor([1e-9, 1e-50, -1e-50, 0.0], dtype=torch.float64).view(1, 4, 1, 1)
    (xd,) = on(device, x)
    out = launch.binarize_pack(xd)
    assert_same(out, reference.binarize_pack(x))
    assert out.item() == 0b1100


def test_binarize_pack_empty_and_errors(launch, device):
    (x,) = on(device, torch.randn(0, 40, 3, 3))
    assert launch.binarize_pack(x).shape == (0, 3, 3, 2)
    with pytest.raises(ValueError, match="threshold must have shape"):
        launch.binarize_pack(*on(device, torch.randn(2, 4, 3, 3), torch.randn(5)))
    with pytest.raises(TypeError, match="floating"):
        launch.binarize_pack(*on(device, torch.ones(1, 4, 2, 2, dtype=torch.int32)))


@pytest.mark.parametrize("shape", [(5, 33, 3, 3), (2, 1, 1, 1), (70, 65, 1, 3)])
def test_pack_weight(launch, device, shape):
    w = torch.randn(shape)
    assert_same(launch.pack_weight(*on(device, w)), reference.pack_weight(w))


# --- binary_conv2d ---------------------------------------------------------------------------

# (in_channels, out_channels, (H, W), (KH, KW), stride, padding, dilation): every channel count
# of the design's odd shapes, kernels 1 and 3, stride 2, dilation 2, padding 0/1/2, spatial 1 and
# odd, several pixel tiles (N * Ho * Wo > 64), several channel tiles (O > 64), reduction chunks
# of 1, 2, 4 and 4 + 3 words.
CONV_SHAPES = [
    (1, 3, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
    (3, 8, (7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
    (31, 9, (6, 5), (3, 3), (2, 2), (1, 1), (1, 1)),
    (33, 17, (5, 7), (3, 3), (1, 1), (2, 2), (2, 2)),
    (63, 40, (4, 4), (1, 1), (1, 1), (0, 0), (1, 1)),
    (65, 70, (9, 11), (3, 3), (2, 2), (2, 2), (1, 1)),
    (96, 16, (1, 1), (3, 3), (1, 1), (1, 1), (1, 1)),
    (193, 10, (5, 6), (3, 3), (1, 1), (1, 1), (2, 2)),
    (33, 5, (1, 7), (3, 3), (2, 2), (1, 1), (1, 1)),
    (65, 9, (11, 1), (1, 1), (2, 2), (0, 0), (1, 1)),
    (45, 6, (9, 10), (3, 2), (2, 1), (2, 0), (1, 3)),
    (40, 5, (6, 6), (5, 5), (1, 1), (2, 2), (1, 1)),
]


def conv_case(shape, batch=2):
    cin, cout, (h, w), (kh, kw), stride, padding, dilation = shape
    x_packed = reference.binarize_pack(torch.randn(batch, cin, h, w))
    w_packed = reference.pack_weight(torch.randn(cout, cin, kh, kw))
    return x_packed, w_packed, cin, list(stride), list(padding), list(dilation)


def conv_id(shape) -> str:
    cin, cout, (h, w), (kh, kw), stride, padding, dilation = shape
    pairs = "-".join(f"{name}{a}{b}" for name, (a, b) in zip("spd", (stride, padding, dilation), strict=True))
    return f"c{cin}-o{cout}-{h}x{w}-k{kh}x{kw}-{pairs}"


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=conv_id)
def test_binary_conv2d(launch, device, shape):
    x_packed, w_packed, cin, stride, padding, dilation = conv_case(shape)
    cout = w_packed.shape[0]
    scale, bias = torch.rand(cout) + 0.1, torch.randn(cout)
    xd, wd, sd, bd = on(device, x_packed, w_packed, scale, bias)
    for s, b, s_ref, b_ref in ((None, None, None, None), (sd, bd, scale, bias), (None, bd, None, bias)):
        out = launch.binary_conv2d(xd, wd, cin, stride, padding, dilation, s, b)
        assert_same(out, reference.binary_conv2d(x_packed, w_packed, cin, stride, padding, dilation, s_ref, b_ref))


def test_binary_conv2d_padding_beyond_the_kernel_reach(launch, device):
    # Outputs whose every tap is padding are exactly 0 (+ bias).
    x_packed, w_packed, cin, *_ = conv_case((33, 4, (2, 2), (1, 1), (1, 1), (0, 0), (1, 1)), batch=1)
    bias = torch.randn(4)
    out = launch.binary_conv2d(*on(device, x_packed, w_packed), cin, [1, 1], [2, 2], [1, 1], None, bias.to(device))
    assert_same(out, reference.binary_conv2d(x_packed, w_packed, cin, [1, 1], [2, 2], [1, 1], None, bias))
    assert torch.equal(out[0, :, 0, 0].cpu(), bias)


def test_binary_conv2d_strided_operands_and_empty_batch(launch, device):
    x_packed = reference.binarize_pack(torch.randn(2, 40, 6, 12))[:, :, ::2]  # a strided view
    w_packed = reference.pack_weight(torch.randn(5, 40, 3, 3))
    w_view = torch.cat([w_packed, torch.zeros_like(w_packed)], dim=3)[..., : w_packed.shape[3]]  # strided along O
    xd, wd = on(device, x_packed, w_view)
    assert not xd.is_contiguous() and not wd.is_contiguous()
    out = launch.binary_conv2d(xd, wd, 40, [1, 1], [1, 1], [1, 1])
    assert_same(out, reference.binary_conv2d(x_packed.contiguous(), w_packed, 40, [1, 1], [1, 1], [1, 1]))
    empty_batch = reference.binarize_pack(torch.randn(0, 40, 6, 6))
    empty = launch.binary_conv2d(*on(device, empty_batch, w_packed), 40, [1, 1], [1, 1], [1, 1])
    assert empty.shape == (0, 5, 6, 6)


def test_binary_conv2d_large_counts(launch, device):
    # Large reduction (512 channels x 3x3 taps) and a count magnitude far above the int8 range.
    x = torch.ones(1, 512, 5, 5)
    w = torch.ones(3, 512, 3, 3)
    w[1] = -1
    xp, wp = reference.binarize_pack(x), reference.pack_weight(w)
    out = launch.binary_conv2d(*on(device, xp, wp), 512, [1, 1], [1, 1], [1, 1])
    assert_same(out, reference.binary_conv2d(xp, wp, 512, [1, 1], [1, 1], [1, 1]))
    assert out[0, 0, 2, 2].item() == 512 * 9 and out[0, 1, 2, 2].item() == -512 * 9


def test_binary_conv2d_errors(launch, device):
    x_packed, w_packed, cin, *_ = conv_case((33, 4, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1)))
    xd, wd = on(device, x_packed, w_packed)
    with pytest.raises(ValueError, match="words per pixel"):
        launch.binary_conv2d(xd, wd, 65)
    with pytest.raises(ValueError, match="padding must be"):
        launch.binary_conv2d(xd, wd, cin, [1, 1], [-1, 0], [1, 1])
    with pytest.raises(TypeError, match="int32"):
        launch.binary_conv2d(xd.float(), wd, cin)


# --- binary_conv2d_fused ---------------------------------------------------------------------

FUSED_SHAPES = [
    (33, 33, (5, 7), (3, 3), (1, 1), (1, 1), (1, 1)),
    (65, 70, (7, 9), (3, 3), (2, 2), (2, 2), (1, 1)),
    (3, 96, (1, 1), (3, 3), (1, 1), (1, 1), (1, 1)),
    (193, 31, (5, 5), (1, 1), (1, 1), (0, 0), (1, 1)),
    (31, 129, (3, 5), (3, 3), (1, 1), (2, 2), (2, 2)),
]


@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=conv_id)
@pytest.mark.parametrize(
    "epilogue", ["affine", "residual", "ta", "residual-ta-pack", "ta-pack-per-channel", "pack-per-sample"]
)
def test_binary_conv2d_fused(launch, device, shape, epilogue):
    x_packed, w_packed, cin, stride, padding, dilation = conv_case(shape)
    n, o = x_packed.shape[0], w_packed.shape[0]
    u_shape = reference.binary_conv2d(x_packed, w_packed, cin, stride, padding, dilation).shape
    scale, bias = torch.rand(o) + 0.1, torch.randn(o)
    residual = torch.randn(u_shape) * 3 if "residual" in epilogue else None
    gamma, zeta, beta = (torch.randn(n, o), torch.randn(n, o), torch.rand(o)) if "ta" in epilogue else (None,) * 3
    threshold = {"ta-pack-per-channel": torch.randn(o), "pack-per-sample": torch.randn(n, o)}.get(epilogue)
    pack = "pack" in epilogue
    args = [x_packed, w_packed, cin, stride, padding, dilation, scale, bias, residual, gamma, zeta, beta, threshold]
    out, packed = launch.binary_conv2d_fused(*on(device, *args[:2]), *args[2:6], *on(device, *args[6:]), pack)
    expected_out, expected_packed = reference.binary_conv2d_fused(*args, pack)
    assert_same(out, expected_out)
    assert_same(packed, expected_packed)
    if pack:
        # The fused packing is the unfused binarize_pack of the output.
        assert_same(packed, reference.binarize_pack(expected_out, threshold))


def test_binary_conv2d_fused_errors(launch, device):
    x_packed, w_packed, cin, *_ = conv_case((33, 4, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1)))
    xd, wd = on(device, x_packed, w_packed)
    conv = (xd, wd, cin, [1, 1], [1, 1], [1, 1], None, None)
    with pytest.raises(ValueError, match="together"):
        launch.binary_conv2d_fused(*conv, None, *on(device, torch.randn(2, 4)), None, None, None, False)
    with pytest.raises(ValueError, match="residual must have shape"):
        launch.binary_conv2d_fused(*conv, *on(device, torch.randn(2, 4, 5, 4)), None, None, None, None, False)


# --- time_activation -------------------------------------------------------------------------


def ta_inputs(shape, dtype=torch.float32):
    n, c = shape[0], shape[1]
    return [t.to(dtype) for t in (torch.randn(shape), torch.randn(n, c) * 0.5, torch.randn(n, c) * 0.5, torch.rand(c))]


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 65, 1, 1), (3, 8), (2, 4, 6), (2, 5, 3, 2, 2)])
def test_time_activation(launch, device, shape):
    inputs = ta_inputs(shape)
    assert_same(launch.time_activation(*on(device, *inputs)), reference.time_activation(*inputs))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_time_activation_dtypes_and_layouts(launch, device, dtype):
    inputs = ta_inputs((2, 6, 4, 5), dtype)
    expected = reference.time_activation(*inputs)
    u, gamma, zeta, beta = on(device, *inputs)
    assert_same(launch.time_activation(u, gamma, zeta, beta), expected)
    assert_same(launch.time_activation(u.contiguous(memory_format=torch.channels_last), gamma, zeta, beta), expected)


def test_time_activation_errors(launch, device):
    u, gamma, zeta, beta = on(device, *ta_inputs((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="beta must have shape"):
        launch.time_activation(u, gamma, zeta, beta[:2])


# --- bernoulli_step --------------------------------------------------------------------------


def step_inputs(shape):
    y_t = torch.randint(0, 2, shape).float()
    eps_hat, prior = torch.rand(shape), torch.rand(shape)
    # The second coefficient spans [-0.5, 1.5] so that the DDIM mean leaves [0, 1] and is clipped.
    coef = torch.stack([torch.rand(shape[0]), 2 * torch.rand(shape[0]) - 0.5], dim=1)
    return y_t, eps_hat, prior, coef


SEEDS_AND_OFFSETS = [
    (0, 0),
    (1, 1),  # words equal to 1 are not specialised away
    (123, 17),
    (2**40 + 3, 2**33 - 5),
    (-3, 2**32 - 100),  # negative seed; the low counter word wraps and carries into the high word
    (2**63 - 1, 2**62),
]


@pytest.mark.parametrize("mode", ["posterior", "ddim"])
@pytest.mark.parametrize("shape", [(7,), (1, 1, 1, 1), (2, 1, 9, 13), (3, 3, 5, 7), (2, 3, 4, 5, 3)])
def test_bernoulli_step(launch, device, mode, shape):
    inputs = step_inputs(shape)
    for seed, offset in SEEDS_AND_OFFSETS:
        out = launch.bernoulli_step(*on(device, *inputs), mode, seed, offset)
        assert out.is_contiguous()
        assert_same(out, reference.bernoulli_step(*inputs, mode, seed, offset))


def test_bernoulli_step_saturated_and_nan_means(launch, device):
    # Priors of exactly 0 and 1 drive the posterior to 0/0 (guarded); a NaN input is an error, as in the reference.
    y_t = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0]])
    eps_hat = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.5, 0.5]])
    prior = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.5, 0.5]])
    for mode, coef in (("posterior", torch.tensor([[1.0, 1.0]])), ("ddim", torch.tensor([[0.3, 0.9]]))):
        for seed in (0, 5):
            out = launch.bernoulli_step(*on(device, y_t, eps_hat, prior, coef), mode, seed, 0)
            assert_same(out, reference.bernoulli_step(y_t, eps_hat, prior, coef, mode, seed, 0))
    for name, value in (("eps_hat", eps_hat.clone()), ("prior", prior.clone())):
        value[0, 4] = float("nan")
        inputs = {"eps_hat": eps_hat, "prior": prior, name: value}
        with pytest.raises(ValueError, match=f"{name} holds NaN"):
            launch.bernoulli_step(*on(device, y_t, inputs["eps_hat"], inputs["prior"], coef), "ddim", 0, 0)


def test_bernoulli_step_strided_inputs(launch, device):
    big = step_inputs((3, 4, 12, 5))
    views = [t[:, :, ::2] for t in big[:3]]
    wide_coef = torch.cat([big[3], torch.zeros_like(big[3])], dim=1)[:, :2]
    out = launch.bernoulli_step(*on(device, *views, wide_coef), "posterior", 9, 4)
    expected = reference.bernoulli_step(*[v.contiguous() for v in views], big[3], "posterior", 9, 4)
    assert_same(out, expected)


def test_bernoulli_step_errors(launch, device):
    y_t, eps_hat, prior, coef = on(device, *step_inputs((2, 3)))
    with pytest.raises(ValueError, match="mode must be one of"):
        launch.bernoulli_step(y_t, eps_hat, prior, coef, "euler", 0, 0)
    with pytest.raises(ValueError, match="offset must be non-negative"):
        launch.bernoulli_step(y_t, eps_hat, prior, coef, "ddim", 0, -1)


# --- registration (no GPU needed) ------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
@pytest.mark.skipif(INTERPRETED, reason="runs in the parent process")
def test_registration_is_a_no_op_without_a_gpu():
    from hidiff_kernels.triton import registration

    assert not registration.triton_usable()
    assert registration.register_triton_kernels() == []
    assert not registration.TRITON_SERVED


@pytest.mark.skipif(INTERPRETED, reason="runs in the parent process")
def test_importing_the_package_does_not_need_triton():
    # Triton is blocked in a fresh interpreter: the package imports and runs its ops.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, hidiff_kernels as hk\n"
        "x = hk.binarize_pack(torch.randn(1, 3, 2, 2))\n"
        "print(x.shape, 'triton' in sys.modules and sys.modules['triton'] is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch.Size([1, 2, 2, 1]) False"


def test_every_op_has_a_triton_kernel(launch):
    assert set(launch.KERNELS) == set(ops.SCHEMAS)


# --- CUDA only -------------------------------------------------------------------------------


@gpu_only
def test_gpu_kernels_launch_on_the_current_stream_and_device(launch):
    x_packed, w_packed, cin, stride, padding, dilation = conv_case((65, 70, (9, 11), (3, 3), (1, 1), (1, 1), (1, 1)))
    expected = reference.binary_conv2d(x_packed, w_packed, cin, stride, padding, dilation)
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    xd, wd = x_packed.to(last), w_packed.to(last)
    stream = torch.cuda.Stream(last)
    stream.wait_stream(torch.cuda.current_stream(last))  # the copies above ran on the default stream
    with torch.cuda.stream(stream):
        out = launch.binary_conv2d(xd, wd, cin, stride, padding, dilation)
    stream.synchronize()
    assert out.device == last
    assert_same(out, expected)


@gpu_only
def test_gpu_cuda_graph_of_a_refinement_step(launch):
    """TB -> fused binary block (affine, residual, TA, packing) -> binary conv -> Bernoulli step, in a graph."""
    n, c, h, w = 2, 64, 9, 9
    x = torch.randn(n, c, h, w)
    w1 = reference.pack_weight(torch.randn(c, c, 3, 3))
    w2 = reference.pack_weight(torch.randn(1, c, 3, 3))
    scale, bias = torch.rand(c), torch.randn(c)
    gamma, zeta, beta = torch.randn(n, c), torch.randn(n, c), torch.rand(c)
    y_t = torch.randint(0, 2, (n, 1, h, w)).float()
    prior = torch.rand(n, 1, h, w)
    coef = torch.tensor([[0.9, 0.5], [0.8, 0.4]])
    conv = ([1, 1], [1, 1], [1, 1])

    def step(impl, x, w1, w2, scale, bias, gamma, zeta, beta, y_t, prior, coef) -> torch.Tensor:
        packed = impl.binarize_pack(x, None)
        _, hidden = impl.binary_conv2d_fused(packed, w1, c, *conv, scale, bias, x, gamma, zeta, beta, None, True)
        logits = impl.binary_conv2d(hidden, w2, c, *conv, None, None)
        eps_hat = torch.where(logits > 0, 0.9, 0.1)  # exact on every device, unlike a sigmoid
        return impl.bernoulli_step(y_t, eps_hat, prior, coef, "posterior", 7, 11)

    inputs = [x, w1, w2, scale, bias, gamma, zeta, beta, y_t, prior, coef]
    gpu_inputs = on("cuda", *inputs)
    step(launch, *gpu_inputs)  # compiles every kernel before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(launch, *gpu_inputs)
    new_x = torch.randn(n, c, h, w)
    gpu_inputs[0].copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    assert_same(captured, step(reference, new_x, *inputs[1:]))
