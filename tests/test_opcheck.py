"""torch.library.opcheck on every hidiff:: op, and a torch.compile(fullgraph=True) smoke test."""

from __future__ import annotations

import pytest
import torch

import hidiff_kernels as hk
from hidiff_kernels import ops


def _conv_samples():
    x = torch.randn(2, 33, 6, 5)
    w = torch.randn(4, 33, 3, 3)
    xp, wp = hk.binarize_pack(x), hk.pack_weight(w)
    scale = torch.rand(4, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    return [
        (xp, wp, 33, [1, 1], [1, 1], [1, 1], None, None),
        (xp, wp, 33, [2, 1], [0, 2], [1, 2], scale, bias),
        (xp, wp, 33, [1, 1], [1, 1], [1, 1], None, bias),
    ]


def _fused_samples():
    x = torch.randn(2, 40, 6, 5)
    w = torch.randn(35, 40, 3, 3)
    xp, wp = hk.binarize_pack(x), hk.pack_weight(w)
    n, o = 2, 35
    residual = torch.randn(n, o, 6, 5)
    gamma, zeta, beta = torch.randn(n, o), torch.randn(n, o), torch.rand(o)
    return [
        (xp, wp, 40, [1, 1], [1, 1], [1, 1], None, None, None, None, None, None, None, False),
        (xp, wp, 40, [1, 1], [1, 1], [1, 1], torch.rand(o), torch.randn(o), residual, gamma, zeta, beta, None, True),
        (xp, wp, 40, [2, 1], [0, 2], [1, 2], None, torch.randn(o), None, None, None, None, torch.randn(n, o), True),
    ]


def _bernoulli_samples():
    y_t = torch.randint(0, 2, (2, 3, 4, 5)).float()
    coef = torch.tensor([[0.9, 0.6], [0.5, 0.2]])
    y_1d = torch.randint(0, 2, (5,)).float()
    coef_1d = torch.rand(5, 2)
    return [
        (y_t, torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5), coef, "posterior", 7, 0),
        (y_t, torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5), coef, "ddim", 2**40, 120),
        (y_1d, torch.rand(5), torch.rand(5), coef_1d, "ddim", -3, 2**33),
    ]


SAMPLES = {
    "binarize_pack": lambda: [
        (torch.randn(2, 33, 4, 5), None),
        (torch.randn(2, 7, 3, 3), torch.randn(7)),
        (torch.randn(2, 70, 3, 2).contiguous(memory_format=torch.channels_last), torch.randn(2, 70)),
    ],
    "pack_weight": lambda: [(torch.randn(5, 33, 3, 3),), (torch.randn(2, 1, 1, 1),)],
    "binary_conv2d": _conv_samples,
    "binary_conv2d_fused": _fused_samples,
    "time_activation": lambda: [
        (
            torch.randn(2, 3, 4, 4, requires_grad=True),
            torch.randn(2, 3, requires_grad=True),
            torch.randn(2, 3, requires_grad=True),
            torch.rand(3, requires_grad=True),
        ),
        (torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5), torch.rand(5)),
    ],
    "bernoulli_step": _bernoulli_samples,
}


def test_every_op_has_samples():
    assert set(SAMPLES) == set(ops.SCHEMAS)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_opcheck(name):
    op = getattr(torch.ops.hidiff, name).default
    for args in SAMPLES[name]():
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    def block(x, threshold, w_packed, scale, gamma, zeta, beta):
        packed = hk.binarize_pack(x, threshold)
        y = hk.binary_conv2d(packed, w_packed, x.shape[1], 1, 1, 1, scale=scale)
        return hk.time_activation(y, gamma, zeta, beta)

    x = torch.randn(2, 40, 8, 8)
    args = (
        x,
        torch.randn(2, 40) * 0.1,
        hk.pack_weight(torch.randn(24, 40, 3, 3)),
        torch.rand(24),
        torch.randn(2, 24),
        torch.randn(2, 24),
        torch.rand(24),
    )
    compiled = torch.compile(block, fullgraph=True, backend="inductor")
    assert torch.equal(compiled(*args), block(*args))
