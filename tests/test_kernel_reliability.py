"""Issue 13, the ops: unused bits, stale packed weights, float64 signs, the output cache, argument errors, compile."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hidiff_kernels as hk
from hidiff_kernels import ops, reference
from hidiff_kernels.nn import BinaryConv2d

# --- 5. unused bits of the last packed word -----------------------------------------------------


@pytest.mark.parametrize("packed_channels, in_channels", [(32, 20), (40, 33), (64, 63)])
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0)])
def test_conv_ignores_the_unused_bits_of_the_last_word(isa, packed_channels, in_channels, stride, padding):
    x = torch.randn(2, packed_channels, 7, 6)
    w = torch.randn(5, packed_channels, 3, 3)
    x_packed, w_packed = hk.binarize_pack(x), hk.pack_weight(w)
    expected = F.conv2d(
        reference.sign_pm1(x[:, :in_channels]), reference.sign_pm1(w[:, :in_channels]), stride=stride, padding=padding
    )
    out = hk.binary_conv2d(x_packed, w_packed, in_channels, stride, padding)
    assert torch.equal(out, expected)
    assert torch.equal(reference.binary_conv2d(x_packed, w_packed, in_channels, (stride,) * 2, (padding,) * 2), out)
    fused, packed = hk.binary_conv2d_fused(x_packed, w_packed, in_channels, stride, padding, pack=True)
    assert torch.equal(fused, expected) and torch.equal(packed, reference.binarize_pack(expected))


def test_conv_ignores_stray_high_bits_of_the_input(isa):
    x = torch.randn(1, 20, 5, 5)
    w = torch.randn(3, 20, 3, 3)
    x_packed, w_packed = hk.binarize_pack(x), hk.pack_weight(w)
    stray = torch.tensor(-(1 << 20), dtype=torch.int32)  # bits 20..31 set
    expected = hk.binary_conv2d(x_packed, w_packed, 20, padding=1)
    assert torch.equal(hk.binary_conv2d(x_packed | stray, w_packed, 20, padding=1), expected)
    assert torch.equal(hk.binary_conv2d(x_packed, w_packed | stray, 20, padding=1), expected)


# --- 6. the packed-weight cache and a new weight Parameter --------------------------------------


def test_packed_cache_sees_a_new_weight_parameter_at_a_reused_address():
    layer = BinaryConv2d(8, 4, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 8, 6, 6)
    shape = layer.weight.shape
    layer.weight = nn.Parameter(torch.randn(shape))
    with torch.no_grad():
        for _ in range(20):
            layer(x)  # packs and caches the current weight
            layer.weight = None  # frees it, so that the next one can take its address
            layer.weight = nn.Parameter(torch.randn(shape))
            w = layer.weight
            scale = w.abs().mean((1, 2, 3)).view(1, -1, 1, 1)
            expected = F.conv2d(reference.sign_pm1(x), reference.sign_pm1(w), padding=1) * scale
            torch.testing.assert_close(layer(x), expected)


# --- 8. float64 signs -------------------------------------------------------------------------------


def test_float64_is_compared_in_float64(isa):
    x = torch.tensor([1e-300, -1e-300, 0.0, 1e-46, 5e-324, 1 + 1e-12], dtype=torch.float64).view(1, 6, 1, 1)
    # +1 (bit 0) where x > 0: channels 0, 3, 4, 5.
    assert hk.binarize_pack(x).item() == 0b000110
    assert torch.equal(hk.binarize_pack(x), reference.binarize_pack(x))
    threshold = torch.ones(6, dtype=torch.float64)
    assert hk.binarize_pack(x, threshold).item() == 0b011111  # only 1 + 1e-12 > 1
    assert torch.equal(hk.binarize_pack(x, threshold), reference.binarize_pack(x, threshold))
    channels_last = x.expand(2, 6, 3, 3).contiguous(memory_format=torch.channels_last)
    assert torch.equal(hk.binarize_pack(channels_last), reference.binarize_pack(channels_last))


def test_binary_conv2d_float64_eval_and_train_paths_agree():
    layer = BinaryConv2d(6, 3, 3, padding=1).double()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64) * 1e-300
    train = layer(x)
    with torch.no_grad():
        packed = layer.eval()(x)
    torch.testing.assert_close(packed, train.detach(), rtol=1e-6, atol=1e-6)


# --- 11. the output cache ------------------------------------------------------------------------


@pytest.mark.skipif(not hk.COMPILED, reason="the output cache belongs to the compiled kernels")
def test_cached_output_resized_by_out_is_an_ordinary_tensor():
    code = """
import torch, hidiff_kernels as hk
u = torch.randn(1, 4, 1024, 1024)  # 16 MiB: served by the output cache
y = hk.time_activation(u, torch.zeros(1, 4), torch.zeros(1, 4), torch.ones(4))
try:
    torch.mul(torch.ones(1, 8, 1024, 1024), 2, out=y)  # grows y's storage
except RuntimeError as error:
    print("out= failed:", error)
print(float(y.sum()))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(2.0 * 8 * 1024 * 1024), result.stdout


@pytest.mark.skipif(not hk.COMPILED, reason="the output cache belongs to the compiled kernels")
def test_output_cache_keeps_the_most_recent_blocks_and_can_be_cleared():
    compiled = hk._C
    limit = compiled.output_cache_limit()
    mib = 1 << 20
    try:
        hk.clear_output_cache()
        compiled.set_output_cache_limit(40 * mib)
        gamma, zeta, beta = torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1)
        for size in (9, 10, 11, 12):
            out = hk.time_activation(torch.zeros(1, 1, size * mib // 4), gamma, zeta, beta)
            del out
        assert compiled.output_cache_blocks() == [12 * mib, 11 * mib, 10 * mib]  # 9 MiB was the oldest
        hk.clear_output_cache()
        assert compiled.output_cache_blocks() == []
    finally:
        compiled.set_output_cache_limit(limit)


# --- 12. errors that name the argument -----------------------------------------------------------


@pytest.fixture
def packed():
    return hk.binarize_pack(torch.randn(1, 40, 6, 6)), hk.pack_weight(torch.randn(3, 40, 3, 3))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"stride": 1.0}, TypeError, r"stride must be an int or a pair of ints in .*, got 1.0"),
        ({"padding": (1, 2.5)}, TypeError, r"padding must be an int or a pair of ints in .*, got \(1, 2.5\)"),
        ({"dilation": "2"}, TypeError, "dilation must be an int or a pair of ints"),
        ({"padding": 2**62}, ValueError, r"padding must be two non-negative ints in \[0, 2147483647\], got \[4611"),
        ({"padding": 2**63}, ValueError, r"padding must be an int or a pair of ints in \[-9223372036854775808, "),
        ({"stride": (1, 2**40)}, ValueError, r"stride must be two positive ints in \[1, 2147483647\]"),
        ({"in_channels": 40.0}, TypeError, "in_channels must be an int"),
    ],
)
def test_conv_argument_errors_name_the_argument(packed, kwargs, error, message):
    arguments = {"in_channels": 40, **kwargs}
    with pytest.raises(error, match=message):
        hk.binary_conv2d(*packed, **arguments)


def test_conv_accepts_numpy_and_tensor_integers(packed):
    expected = hk.binary_conv2d(*packed, 40, stride=2, padding=1)
    assert torch.equal(hk.binary_conv2d(*packed, np.int64(40), stride=np.int32(2), padding=torch.tensor(1)), expected)


def test_direct_op_call_with_huge_padding_names_it(packed):
    with pytest.raises(ValueError, match=r"padding must be two non-negative ints in \[0, 2147483647\]"):
        torch.ops.hidiff.binary_conv2d(*packed, 40, [1, 1], [2**62, 2**62], [1, 1])


def test_bernoulli_seed_and_offset_errors_and_range():
    y = torch.zeros(2, 3)
    coef = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    args = (y, torch.full_like(y, 0.5), torch.full_like(y, 0.5), coef, "ddim")
    # A seed in [2^63, 2^64) is its two's-complement int64, as the reference takes seeds modulo 2^64.
    assert torch.equal(hk.bernoulli_step(*args, seed=2**64 - 5), hk.bernoulli_step(*args, seed=-5))
    assert torch.equal(hk.bernoulli_step(*args, seed=2**63), reference.bernoulli_step(*args, 2**63, 0))
    with pytest.raises(ValueError, match=r"seed must be an int in \[-9223372036854775808, 18446744073709551615\]"):
        hk.bernoulli_step(*args, seed=2**64)
    with pytest.raises(TypeError, match="seed must be an int .*, got 1.5"):
        hk.bernoulli_step(*args, seed=1.5)
    with pytest.raises(ValueError, match="offset must be non-negative and at most 2\\^63 - y_t.numel"):
        hk.bernoulli_step(*args, offset=2**63)
    with pytest.raises(TypeError, match="offset must be non-negative"):
        hk.bernoulli_step(*args, offset=2.0)
    assert ops.as_int(np.int64(3), "x", 0, 5) == 3


# --- 14. eager, meta and compiled agree -------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize(
    "name, value", [("gamma", torch.zeros(2, 3, dtype=torch.int64)), ("beta", torch.ones(3).bool())]
)
def test_time_activation_rejects_integer_parameters_everywhere(device, name, value):
    arguments = {"gamma": torch.zeros(2, 3), "zeta": torch.zeros(2, 3), "beta": torch.ones(3), name: value}
    arguments = {k: v.to(device) for k, v in arguments.items()}
    with pytest.raises(TypeError, match=f"{name} must be a floating tensor"):
        hk.time_activation(torch.randn(2, 3, 4, device=device), **arguments)


def test_binary_conv2d_module_compiles_with_fullgraph():
    torch._dynamo.reset()
    model = nn.Sequential(BinaryConv2d(8, 8, 3, padding=1), nn.ReLU(), BinaryConv2d(8, 4, 3, padding=1)).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="eager")(x)
    assert torch.equal(compiled, eager)
