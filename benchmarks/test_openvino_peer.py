"""OpenVINO's BinaryConvolution against ours, bit for bit, on odd shapes (the peer of the layer table).

The layer table checks its own shapes before timing them; this test covers what the table does
not: input channels 1, 3, 33, 65 (not multiples of 8, where the peer adds filler channels, see
``openvino_peer``) and 96, output channels 1 to 33, kernels 1 and 3, stride 2, dilation 2,
padding 0 to 2, images of 1x1 and odd, non-square sizes. The fp32 convolution peer is checked
against ``F.conv2d`` on the same shapes. Skipped without OpenVINO (``pip install .[peers]``).
"""

from __future__ import annotations

import itertools

import openvino_peer as peer
import pytest
import torch

pytestmark = peer.requires_openvino

# in_channels -> out_channels
CHANNELS = {1: 17, 3: 5, 33: 1, 65: 9, 96: 33}


def fits(size: tuple[int, int], kernel: int, padding: int, dilation: int) -> bool:
    """Whether the dilated kernel fits in the padded image (at least one output)."""
    return all(s + 2 * padding >= dilation * (kernel - 1) + 1 for s in size)


# (kernel, stride, padding, dilation, (height, width))
GEOMETRIES = [
    (k, s, p, d, size)
    for k, s, p, d, size in itertools.product([1, 3], [1, 2], [0, 1, 2], [1, 2], [(1, 1), (9, 5)])
    if fits(size, k, p, d)
]


def geometry_id(geometry) -> str:
    k, s, p, d, (h, w) = geometry
    return f"k{k}s{s}p{p}d{d}-{h}x{w}"


def layer(in_channels: int, kernel: int, size: tuple[int, int], seed: int = 0):
    """A float input, weights, scale and bias for one case (batch 1)."""
    generator = torch.Generator().manual_seed(seed)
    out_channels = CHANNELS[in_channels]
    x = torch.randn(1, in_channels, *size, generator=generator)
    w = torch.randn(out_channels, in_channels, kernel, kernel, generator=generator)
    scale = torch.rand(out_channels, generator=generator) + 0.1
    bias = torch.randn(out_channels, generator=generator)
    return x, w, scale, bias


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
@pytest.mark.parametrize("in_channels", list(CHANNELS), ids=lambda c: f"c{c}")
def test_binary_and_float_conv_match(in_channels, geometry):
    kernel, stride, padding, dilation, size = geometry
    x, w, scale, bias = layer(in_channels, kernel, size)
    try:
        peer.check_binary_conv(x, w, stride, padding, dilation, scale, bias)
    except peer.Unsupported as error:
        pytest.skip(f"OpenVINO's CPU plugin rejects this layer ({error})")
    peer.check_float_conv(x, w, stride, padding, dilation, bias)


def test_sign_convention_on_ties():
    """Zeros binarise to -1 on both sides (ours: +1 only where x > 0), inputs and weights alike."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 7, 7, generator=generator)
    x[x.abs() < 0.5] = 0.0
    w = torch.randn(8, 16, 3, 3, generator=generator)
    w[w.abs() < 0.5] = 0.0
    peer.check_binary_conv(x, w, 1, 1, 1)


def test_mismatch_is_reported():
    """The check fails loudly when OpenVINO computes something else (here: weights of the other sign)."""
    generator = torch.Generator().manual_seed(2)
    x, w = torch.randn(1, 8, 5, 5, generator=generator), torch.randn(4, 8, 3, 3, generator=generator)
    runner = peer.Runner(peer.compile_for_cpu(peer.binary_conv_model(-w, 5, 5, 1, 1, 1, scale=torch.ones(4))))
    with pytest.raises(peer.PeerMismatch, match="with scale and bias"):
        peer.check_binary_conv(x, w, 1, 1, 1, scale=torch.ones(4), runner=runner)
