"""binarize_pack and pack_weight against the reference: bit-exact, pad bits zero."""

from __future__ import annotations

import pytest
import torch

import hidiff_kernels as hk
from hidiff_kernels import reference

CHANNELS = [1, 3, 31, 32, 33, 63, 65, 96, 193]


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("threshold_kind", ["none", "per_channel", "per_sample"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_binarize_pack_matches_reference(channels, threshold_kind, channels_last):
    x = torch.randn(2, channels, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    threshold = {
        "none": None,
        "per_channel": torch.randn(channels) * 0.5,
        "per_sample": torch.randn(2, channels) * 0.5,
    }[threshold_kind]
    packed = hk.binarize_pack(x, threshold)
    assert packed.dtype == torch.int32
    assert packed.shape == (2, 5, 7, reference.packed_words(channels))
    assert torch.equal(packed, reference.binarize_pack(x, threshold))


@pytest.mark.parametrize("channels", CHANNELS)
def test_pad_bits_are_zero_and_signs_roundtrip(channels):
    x = torch.randn(3, channels, 4, 3)
    packed = hk.binarize_pack(x)
    used = channels % 32
    if used:
        last = packed[..., -1].to(torch.int64) & 0xFFFFFFFF
        assert torch.all(last >> used == 0)
    assert torch.equal(reference.unpack_pm1(packed, channels), reference.sign_pm1(x))


def test_all_ones_and_all_minus_ones():
    # bit 1 means -1: an all-negative 32-channel pixel is the int32 word -1 (0xffffffff).
    assert torch.all(hk.binarize_pack(-torch.ones(1, 32, 2, 2)) == -1)
    assert torch.all(hk.binarize_pack(torch.ones(1, 32, 2, 2)) == 0)


def test_threshold_equality_and_nan_give_minus_one():
    x = torch.tensor([0.5, 0.5, float("nan"), 0.6]).view(1, 4, 1, 1)
    threshold = torch.full((4,), 0.5)
    bits = reference.unpack_bits(hk.binarize_pack(x, threshold), 4).flatten().tolist()
    assert bits == [True, True, True, False]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_binarize_pack_other_dtypes(dtype):
    x = torch.randn(2, 40, 3, 3).to(dtype)
    threshold = (torch.randn(40) * 0.3).to(dtype)
    assert torch.equal(hk.binarize_pack(x, threshold), reference.binarize_pack(x, threshold))


def test_non_contiguous_input():
    x = torch.randn(2, 9, 6, 10)[:, :, :, ::2]
    assert torch.equal(hk.binarize_pack(x), reference.binarize_pack(x))


@pytest.mark.parametrize("in_channels", [1, 3, 33, 65, 193])
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (2, 5)])
def test_pack_weight_matches_reference(in_channels, kernel):
    w = torch.randn(7, in_channels, *kernel)
    packed = hk.pack_weight(w)
    assert packed.shape == (7, *kernel, reference.packed_words(in_channels))
    assert torch.equal(packed, reference.pack_weight(w))


def test_pack_weight_zero_is_minus_one():
    w = torch.zeros(1, 1, 1, 1)
    assert hk.pack_weight(w).item() == 1
