"""binary_conv2d is bit-exact against F.conv2d on +-1 tensors, with exact zero padding."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import hidiff_kernels as hk
from hidiff_kernels import reference

# (in_channels, out_channels, spatial (H, W), kernel, stride, padding, dilation)
ODD_SHAPES = [
    (1, 3, (5, 5), 3, 1, 1, 1),
    (3, 8, (7, 9), 3, 1, 1, 1),
    (31, 9, (6, 5), 3, 2, 1, 1),
    (33, 17, (5, 7), 3, 1, 2, 2),
    (63, 8, (4, 4), 1, 1, 0, 1),
    (65, 70, (9, 11), 3, 2, 2, 1),
    (96, 16, (1, 1), 3, 1, 1, 1),
    (193, 10, (5, 6), 3, 1, 1, 2),
    (128, 64, (8, 8), 3, 1, 1, 1),
    (7, 4, (3, 3), 3, 1, 2, 1),
    (33, 5, (1, 7), 3, 2, 1, 1),
    (40, 5, (6, 6), 5, 1, 2, 1),
    (65, 9, (11, 1), 1, 2, 0, 1),
    (3, 2, (3, 3), 3, 1, 0, 1),
]


def pm1_conv(x, w, stride, padding, dilation):
    """The specification: float64 conv of the signs, zero padding."""
    return F.conv2d(
        reference.sign_pm1(x).double(),
        reference.sign_pm1(w).double(),
        stride=stride,
        padding=padding,
        dilation=dilation,
    ).float()


@pytest.mark.parametrize(
    "shape", ODD_SHAPES, ids=lambda s: "c{}-o{}-{}x{}-k{}-s{}-p{}-d{}".format(s[0], s[1], *s[2], *s[3:])
)
def test_exact_against_conv2d(isa, shape):
    cin, cout, (h, w), k, stride, padding, dilation = shape
    x = torch.randn(2, cin, h, w)
    weight = torch.randn(cout, cin, k, k)
    out = hk.binary_conv2d(hk.binarize_pack(x), hk.pack_weight(weight), cin, stride, padding, dilation)
    expected = pm1_conv(x, weight, stride, padding, dilation)
    assert out.shape == expected.shape
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "stride, padding, dilation",
    [((1, 2), (0, 1), (1, 1)), ((2, 1), (2, 0), (1, 3)), ((3, 2), (1, 2), (2, 1))],
)
def test_rectangular_kernels_and_per_axis_arguments(isa, stride, padding, dilation):
    x = torch.randn(1, 45, 9, 10)
    weight = torch.randn(6, 45, 3, 2)
    out = hk.binary_conv2d(hk.binarize_pack(x), hk.pack_weight(weight), 45, stride, padding, dilation)
    assert torch.equal(out, pm1_conv(x, weight, stride, padding, dilation))


def test_padding_larger_than_kernel_reach(isa):
    # Outputs whose every tap is padding are exactly 0 (+ bias).
    x = torch.randn(1, 33, 2, 2)
    weight = torch.randn(4, 33, 1, 1)
    bias = torch.randn(4)
    out = hk.binary_conv2d(hk.binarize_pack(x), hk.pack_weight(weight), 33, 1, 2, 1, bias=bias)
    expected = pm1_conv(x, weight, 1, 2, 1) + bias.view(1, -1, 1, 1)
    assert torch.equal(out, expected)
    assert torch.equal(out[0, :, 0, 0], bias)


def test_scale_and_bias_epilogue(isa):
    x = torch.randn(2, 70, 6, 6)
    weight = torch.randn(12, 70, 3, 3)
    scale, bias = torch.rand(12), torch.randn(12)
    xp, wp = hk.binarize_pack(x), hk.pack_weight(weight)
    out = hk.binary_conv2d(xp, wp, 70, 1, 1, 1, scale=scale, bias=bias)
    assert torch.equal(out, reference.binary_conv2d(xp, wp, 70, [1, 1], [1, 1], [1, 1], scale, bias))
    only_bias = hk.binary_conv2d(xp, wp, 70, 1, 1, 1, bias=bias)
    assert torch.equal(only_bias, reference.binary_conv2d(xp, wp, 70, [1, 1], [1, 1], [1, 1], None, bias))


def test_thresholded_packing_feeds_convolution(isa):
    x = torch.randn(2, 33, 7, 7)
    threshold = torch.randn(2, 33) * 0.3
    weight = torch.randn(5, 33, 3, 3)
    out = hk.binary_conv2d(hk.binarize_pack(x, threshold), hk.pack_weight(weight), 33, 1, 1, 1)
    assert torch.equal(out, pm1_conv(x - threshold[:, :, None, None], weight, 1, 1, 1))


def test_thread_count_does_not_change_result():
    x = torch.randn(1, 96, 17, 19)
    weight = torch.randn(70, 96, 3, 3)
    xp, wp = hk.binarize_pack(x), hk.pack_weight(weight)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = hk.binary_conv2d(xp, wp, 96, 1, 1, 1)
        torch.set_num_threads(max(2, threads))
        multi = hk.binary_conv2d(xp, wp, 96, 1, 1, 1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, multi)


def test_large_reduction_is_exact(isa):
    # 512 channels x 5x5 taps = 12,800 terms per output: the integer count stays exact.
    x = torch.randn(1, 512, 6, 6)
    weight = torch.randn(3, 512, 5, 5)
    out = hk.binary_conv2d(hk.binarize_pack(x), hk.pack_weight(weight), 512, 1, 2, 1)
    assert torch.equal(out, pm1_conv(x, weight, 1, 2, 1))


@pytest.mark.parametrize(
    "cin, k, stride, padding, dilation", list(itertools.product([5, 64], [1, 3], [1, 2], [0, 1, 2], [1, 2]))
)
def test_grid_of_conv_arguments(cin, k, stride, padding, dilation):
    x = torch.randn(1, cin, 7, 6)
    weight = torch.randn(9, cin, k, k)
    out = hk.binary_conv2d(hk.binarize_pack(x), hk.pack_weight(weight), cin, stride, padding, dilation)
    assert torch.equal(out, pm1_conv(x, weight, stride, padding, dilation))


def test_random_configurations(isa):
    """A seeded sweep over random shapes and arguments, every one bit-exact."""
    rng = torch.Generator().manual_seed(2024)

    def draw(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=rng))

    for _ in range(200):
        cin, cout = draw(1, 200), draw(1, 40)
        kh, kw = draw(1, 5), draw(1, 5)
        stride, padding, dilation = (draw(1, 3), draw(1, 3)), (draw(0, 3), draw(0, 3)), (draw(1, 3), draw(1, 3))
        h = max(draw(1, 12), dilation[0] * (kh - 1) + 1 - 2 * padding[0])
        w = max(draw(1, 12), dilation[1] * (kw - 1) + 1 - 2 * padding[1])
        x = torch.randn(draw(1, 3), cin, h, w, generator=rng)
        weight = torch.randn(cout, cin, kh, kw, generator=rng)
        out = hk.binary_conv2d(hk.binarize_pack(x), hk.pack_weight(weight), cin, stride, padding, dilation)
        expected = pm1_conv(x, weight, stride, padding, dilation)
        assert torch.equal(out, expected), (cin, cout, kh, kw, stride, padding, dilation, h, w)


def test_non_contiguous_packed_operands_and_empty_batch(isa):
    x = torch.randn(2, 40, 6, 12)
    weight = torch.randn(5, 40, 3, 3)
    x_packed = hk.binarize_pack(x)[:, :, ::2]  # every other column: a strided view
    out = hk.binary_conv2d(x_packed, hk.pack_weight(weight), 40, 1, 1, 1)
    assert torch.equal(out, pm1_conv(x[:, :, :, ::2], weight, 1, 1, 1))
    empty = hk.binary_conv2d(hk.binarize_pack(torch.randn(0, 40, 6, 6)), hk.pack_weight(weight), 40, 1, 1, 1)
    assert empty.shape == (0, 5, 6, 6)


def test_large_outputs_reuse_blocks_without_aliasing():
    """Outputs of 8 MiB and more come from a cache of released blocks: live results never share one."""
    x = torch.randn(1, 32, 128, 128)
    w = torch.randn(128, 32, 3, 3)  # 128 x 128 x 128 float32 output: 8 MiB
    xp, wp = hk.binarize_pack(x), hk.pack_weight(w)
    first = hk.binary_conv2d(xp, wp, 32, 1, 1, 1)
    second = hk.binary_conv2d(xp, wp, 32, 1, 1, 1)
    assert first.data_ptr() != second.data_ptr()
    expected = first.clone()
    second.add_(1.0)  # writing one result must not touch the other
    assert torch.equal(first, expected)
    del second  # its block goes back to the cache and serves the next output of this size
    third = hk.binary_conv2d(xp, wp, 32, 1, 1, 1)
    assert torch.equal(third, expected)
    assert torch.equal(first, expected)
