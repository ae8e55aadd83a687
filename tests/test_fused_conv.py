"""binary_conv2d_fused against the reference (the unfused chain of ops), on every CPU path.

The integer part and every float step must match the reference bit for bit: the fused epilogue
performs the same float32 operations in the same order.
"""

from __future__ import annotations

import pytest
import torch

import hidiff_kernels as hk
from hidiff_kernels import reference

# (in_channels, out_channels, height, width, kernel, stride, padding, dilation)
SHAPES = [
    (1, 3, 5, 5, 3, 1, 1, 1),
    (33, 31, 7, 9, 3, 1, 1, 1),
    (64, 64, 9, 40, 3, 1, 1, 1),
    (65, 96, 6, 5, 3, 2, 1, 1),
    (96, 33, 1, 1, 3, 1, 1, 1),
    (193, 65, 5, 6, 3, 1, 2, 2),
    (31, 130, 11, 3, 1, 1, 0, 1),
    (128, 70, 17, 33, 3, 2, 2, 1),
]


def _case(shape, batch=2, per_sample_threshold=True):
    cin, cout, h, w, k, stride, pad, dil = shape
    x = torch.randn(batch, cin, h, w)
    weight = torch.randn(cout, cin, k, k)
    xp, wp = hk.binarize_pack(x), hk.pack_weight(weight)
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    extras = {
        "scale": torch.rand(cout) + 0.1,
        "bias": torch.randn(cout),
        # Scaled so that the residual matters next to the counts.
        "residual": torch.randn(batch, cout, ho, wo) * cin,
        "gamma": torch.randn(batch, cout) * cin,
        "zeta": torch.randn(batch, cout),
        "beta": torch.rand(cout),
        "threshold": torch.randn(batch, cout) * cin if per_sample_threshold else torch.randn(cout),
    }
    return (xp, wp, cin, (stride, stride), (pad, pad), (dil, dil)), extras


def _run(fn, conv, extras, use, pack):
    args = [extras[name] if name in use else None for name in ("scale", "bias", "residual", "gamma", "zeta", "beta")]
    threshold = extras["threshold"] if pack and "threshold" in use else None
    return fn(*conv, *args, threshold, pack)


EPILOGUES = {
    "conv only": (),
    "affine": ("scale", "bias"),
    "affine + residual": ("scale", "bias", "residual"),
    "affine + residual + TA": ("scale", "bias", "residual", "gamma", "zeta", "beta"),
    "TA + threshold": ("gamma", "zeta", "beta", "threshold"),
    "everything": ("scale", "bias", "residual", "gamma", "zeta", "beta", "threshold"),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("epilogue", sorted(EPILOGUES))
@pytest.mark.parametrize("pack", [False, True])
def test_fused_matches_reference(isa, shape, epilogue, pack):
    conv, extras = _case(shape)
    use = EPILOGUES[epilogue]
    out, packed = _run(torch.ops.hidiff.binary_conv2d_fused, conv, extras, use, pack)
    want_out, want_packed = _run(reference.binary_conv2d_fused, conv, extras, use, pack)
    assert torch.equal(out, want_out)
    assert torch.equal(packed, want_packed)
    if pack:
        # The packed output is exactly what the next layer's binarize_pack would produce.
        threshold = extras["threshold"] if "threshold" in use else None
        assert torch.equal(packed, hk.binarize_pack(out, threshold))


def test_fused_equals_unfused_ops(isa):
    conv, e = _case((64, 96, 12, 10, 3, 1, 1, 1), per_sample_threshold=False)
    out, packed = hk.binary_conv2d_fused(
        *conv, e["scale"], e["bias"], e["residual"], e["gamma"], e["zeta"], e["beta"], e["threshold"], True
    )
    u = hk.binary_conv2d(*conv, e["scale"], e["bias"]) + e["residual"]
    want = hk.time_activation(u, e["gamma"], e["zeta"], e["beta"])
    assert torch.equal(out, want)
    assert torch.equal(packed, hk.binarize_pack(want, e["threshold"]))


def test_unpacked_output_is_empty():
    conv, _ = _case((8, 8, 4, 4, 3, 1, 1, 1))
    out, packed = hk.binary_conv2d_fused(*conv)
    assert out.shape == (2, 8, 4, 4)
    assert packed.shape == (0,) and packed.dtype == torch.int32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gamma": torch.zeros(2, 8)}, "must be given together"),
        ({"residual": torch.zeros(2, 8, 4, 5)}, "residual must have shape"),
        ({"residual": torch.zeros(2, 8, 4, 4, dtype=torch.float64)}, "residual must be float32"),
        ({"threshold": torch.zeros(8)}, "only used with pack=True"),
        ({"threshold": torch.zeros(3), "pack": True}, "threshold must have shape"),
        ({"gamma": torch.zeros(2, 7), "zeta": torch.zeros(2, 8), "beta": torch.zeros(8)}, "gamma must have shape"),
    ],
)
def test_bad_epilogue_arguments(change, message):
    conv, _ = _case((8, 8, 4, 4, 3, 1, 1, 1))
    kwargs = {"pack": False, **change}
    with pytest.raises((ValueError, TypeError), match=message):
        hk.binary_conv2d_fused(*conv, **kwargs)
