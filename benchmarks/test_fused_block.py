"""A binary block in one call vs the same chain of separate ops, batch 1, refiner shapes.

Block: packed input -> 3x3 binary conv -> per-channel affine (folded BatchNorm) -> + residual ->
TA -> the next layer's TB and packing. The unfused chain is ``binary_conv2d`` (with the affine),
an add, ``time_activation`` and ``binarize_pack``; the fused op does it in the conv's output
pass. Both produce the float output and the packed next input, bit for bit the same.
"""

from __future__ import annotations

import pytest
import torch

import hidiff_kernels as hk

TABLE = ("fused", "Fused binary block vs the unfused chain of ops, batch 1", "unfused ops")

# (channels, size): the widths and resolutions of the refiner's levels at 256x256
BLOCKS = [(128, 256), (128, 128), (256, 64), (512, 16)]


def block_id(block) -> str:
    channels, size = block
    return f"{channels}->{channels} {size}x{size}"


@pytest.fixture(params=BLOCKS, ids=block_id, scope="module")
def block(request):
    channels, size = request.param
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, size, size, generator=g)
    args = {
        "x_packed": hk.binarize_pack(x),
        "w_packed": hk.pack_weight(torch.randn(channels, channels, 3, 3, generator=g)),
        "scale": torch.rand(channels, generator=g),
        "bias": torch.randn(channels, generator=g),
        "residual": x,
        "gamma": torch.randn(1, channels, generator=g),
        "zeta": torch.randn(1, channels, generator=g),
        "beta": torch.rand(channels, generator=g),
        "threshold": torch.randn(1, channels, generator=g),
    }
    return request.param, args


def unfused(a, channels):
    y = hk.binary_conv2d(a["x_packed"], a["w_packed"], channels, 1, 1, 1, a["scale"], a["bias"])
    out = hk.time_activation(y + a["residual"], a["gamma"], a["zeta"], a["beta"])
    return out, hk.binarize_pack(out, a["threshold"])


def fused(a, channels):
    return hk.binary_conv2d_fused(
        a["x_packed"],
        a["w_packed"],
        channels,
        1,
        1,
        1,
        a["scale"],
        a["bias"],
        a["residual"],
        a["gamma"],
        a["zeta"],
        a["beta"],
        a["threshold"],
        True,
    )


@pytest.mark.benchmark(group="fused")
@pytest.mark.parametrize("variant", ["unfused ops", "fused op"])
def test_binary_block(benchmark, record, block, variant):
    (channels, size), args = block
    record(*TABLE, block_id((channels, size)), variant)
    fn = unfused if variant == "unfused ops" else fused
    with torch.inference_mode():
        out, packed = benchmark(fn, args, channels)
    want_out, want_packed = unfused(args, channels)
    assert torch.equal(out, want_out) and torch.equal(packed, want_packed)
