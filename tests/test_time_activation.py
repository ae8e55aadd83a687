"""time_activation (TA, paper Eq. 16) against the reference, with gradients."""

from __future__ import annotations

import pytest
import torch

import hidiff_kernels as hk
from hidiff_kernels import reference


def ta_inputs(shape, dtype=torch.float32, requires_grad=False):
    n, c = shape[0], shape[1]
    tensors = [torch.randn(shape), torch.randn(n, c) * 0.5, torch.randn(n, c) * 0.5, torch.rand(c)]
    return [t.to(dtype).requires_grad_(requires_grad) for t in tensors]


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 65, 1, 1), (3, 8), (2, 4, 6), (2, 5, 3, 2, 2)])
def test_matches_reference_exactly(shape):
    u, gamma, zeta, beta = ta_inputs(shape)
    out = hk.time_activation(u, gamma, zeta, beta)
    assert torch.equal(out, reference.time_activation(u, gamma, zeta, beta))


def test_definition_on_known_values():
    u = torch.tensor([[[-1.0, 0.5, 2.0]]])  # (N=1, C=1, 3)
    gamma, zeta, beta = torch.tensor([[0.5]]), torch.tensor([[1.0]]), torch.tensor([0.25])
    out = hk.time_activation(u, gamma, zeta, beta)
    assert out.flatten().tolist() == [0.25 * -1.5 + 1.0, 1.0, 2.5]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes(dtype):
    u, gamma, zeta, beta = ta_inputs((2, 6, 4, 4), dtype)
    out = hk.time_activation(u, gamma, zeta, beta)
    assert out.dtype == dtype
    assert torch.equal(out, reference.time_activation(u, gamma, zeta, beta))


def test_channels_last_input():
    u, gamma, zeta, beta = ta_inputs((2, 6, 4, 5))
    u_cl = u.contiguous(memory_format=torch.channels_last)
    assert torch.equal(hk.time_activation(u_cl, gamma, zeta, beta), reference.time_activation(u, gamma, zeta, beta))


def test_gradcheck():
    inputs = ta_inputs((2, 3, 4, 5), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(hk.time_activation, inputs)


def test_gradients_match_reference_autograd():
    inputs = ta_inputs((2, 5, 3, 3), requires_grad=True)
    ours = torch.autograd.grad(hk.time_activation(*inputs).square().sum(), inputs)
    theirs = torch.autograd.grad(reference.time_activation(*inputs).square().sum(), inputs)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
