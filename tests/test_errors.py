"""Bad input raises an error that names the argument and what was expected."""

from __future__ import annotations

import pytest
import torch

import hidiff_kernels as hk
from hidiff_kernels.nn import BinaryConv2d, BinaryLinear

ERRORS = (ValueError, TypeError, RuntimeError)


@pytest.fixture
def packed():
    return hk.binarize_pack(torch.randn(1, 40, 5, 5)), hk.pack_weight(torch.randn(3, 40, 3, 3))


def test_binarize_pack_rejects_integer_input():
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        hk.binarize_pack(torch.ones(1, 3, 2, 2, dtype=torch.int64))


def test_binarize_pack_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\)"):
        hk.binarize_pack(torch.randn(3, 4, 5))


@pytest.mark.parametrize("shape", [(4,), (5, 2), (1, 2, 5)])
def test_binarize_pack_rejects_threshold_shape(shape):
    with pytest.raises(ValueError, match=r"threshold must have shape \(C,\) = \(5,\) or \(N, C\) = \(2, 5\)"):
        hk.binarize_pack(torch.randn(2, 5, 3, 3), torch.zeros(shape))


def test_pack_weight_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"w must be 4-D \(O, I, KH, KW\)"):
        hk.pack_weight(torch.randn(3, 4))


def test_conv_rejects_float_packed_input(packed):
    x_packed, w_packed = packed
    with pytest.raises(TypeError, match="x_packed must be int32 packed bits"):
        hk.binary_conv2d(x_packed.float(), w_packed, 40)


def test_conv_rejects_wrong_rank(packed):
    x_packed, w_packed = packed
    with pytest.raises(ValueError, match=r"w_packed must be 4-D \(O, KH, KW, words\)"):
        hk.binary_conv2d(x_packed, w_packed[0], 40)


@pytest.mark.parametrize("in_channels", [20, 65, 100])
def test_conv_rejects_channel_count_that_does_not_match_words(packed, in_channels):
    x_packed, w_packed = packed
    with pytest.raises(ValueError, match=rf"x_packed has 2 words per pixel but in_channels={in_channels}"):
        hk.binary_conv2d(x_packed, w_packed, in_channels)


def test_conv_rejects_weight_words_mismatch(packed):
    x_packed, _ = packed
    w_packed = hk.pack_weight(torch.randn(3, 70, 3, 3))
    with pytest.raises(ValueError, match="w_packed has 3 words per tap but in_channels=40 needs 2"):
        hk.binary_conv2d(x_packed, w_packed, 40)


def test_conv_rejects_negative_padding(packed):
    with pytest.raises(ValueError, match="padding must be two non-negative ints"):
        hk.binary_conv2d(*packed, 40, padding=-1)


@pytest.mark.parametrize("name, kwargs", [("stride", {"stride": 0}), ("dilation", {"dilation": (1, 0)})])
def test_conv_rejects_non_positive_stride_and_dilation(packed, name, kwargs):
    with pytest.raises(ValueError, match=f"{name} must be two positive ints"):
        hk.binary_conv2d(*packed, 40, **kwargs)


def test_conv_rejects_empty_output():
    x_packed = hk.binarize_pack(torch.randn(1, 8, 2, 2))
    w_packed = hk.pack_weight(torch.randn(1, 8, 3, 3))
    with pytest.raises(ValueError, match="output would be empty"):
        hk.binary_conv2d(x_packed, w_packed, 8)


def test_conv_rejects_scale_shape(packed):
    with pytest.raises(ValueError, match=r"scale must have shape \(O,\) = \(3,\)"):
        hk.binary_conv2d(*packed, 40, scale=torch.ones(4))


def test_conv_rejects_bad_pair_argument(packed):
    with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
        hk.binary_conv2d(*packed, 40, stride=(1, 2, 3))


def test_direct_op_call_is_checked_in_cpp(packed):
    x_packed, w_packed = packed
    with pytest.raises(ValueError, match="x_packed has 2 words per pixel but in_channels=80 needs 3"):
        torch.ops.hidiff.binary_conv2d(x_packed, w_packed, 80, [1, 1], [0, 0], [1, 1], None, None)


def test_fake_kernel_checks_under_meta():
    x_packed = torch.empty(1, 5, 5, 2, dtype=torch.int32, device="meta")
    w_packed = torch.empty(3, 3, 3, 1, dtype=torch.int32, device="meta")
    with pytest.raises(ValueError, match="w_packed has 1 words per tap"):
        hk.binary_conv2d(x_packed, w_packed, 40)


@pytest.mark.parametrize(
    "name, args",
    [
        ("gamma", (torch.randn(2, 3, 4), torch.randn(3, 3), torch.randn(2, 3), torch.rand(3))),
        ("zeta", (torch.randn(2, 3, 4), torch.randn(2, 3), torch.randn(2), torch.rand(3))),
        ("beta", (torch.randn(2, 3, 4), torch.randn(2, 3), torch.randn(2, 3), torch.rand(2, 3))),
    ],
)
def test_time_activation_names_bad_argument(name, args):
    with pytest.raises(ValueError, match=f"{name} must have shape"):
        hk.time_activation(*args)


def test_time_activation_rejects_integer_input():
    with pytest.raises(TypeError, match="u must be a floating tensor"):
        hk.time_activation(torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3), torch.ones(2, 3), torch.ones(3))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_binary_conv2d_module_rejects_padding_mode(mode):
    with pytest.raises(ValueError, match=f"padding_mode must be 'zeros' for BinaryConv2d.*got '{mode}'"):
        BinaryConv2d(8, 8, 3, padding=1, padding_mode=mode)


def test_binary_conv2d_module_rejects_wrong_input_channels():
    layer = BinaryConv2d(8, 4, 3).eval()
    with pytest.raises(ValueError, match=r"x must be \(N, 8, H, W\)"):
        with torch.no_grad():
            layer(torch.randn(1, 7, 5, 5))


def test_binary_conv2d_module_rejects_groups():
    with pytest.raises(ValueError, match="groups must be positive and divide"):
        BinaryConv2d(8, 6, 3, groups=4)


def test_binary_conv2d_module_rejects_asymmetric_same_padding():
    with pytest.raises(ValueError, match="padding='same'.*asymmetric"):
        BinaryConv2d(8, 6, 2, padding="same")


def test_binary_linear_rejects_wrong_features():
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., 16\)"):
        BinaryLinear(16, 4)(torch.randn(2, 15))
