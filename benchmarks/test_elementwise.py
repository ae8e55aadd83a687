"""Fused elementwise ops vs what the float simulation of a binary network runs in torch.

* ``binarize_pack`` (TB + sign + packing, 1 bit out per value) vs the float sign the public
  HiDiff code computes, ``torch.where(x > t, 1, -1)`` (32 bits out per value);
* ``time_activation`` (TA, one pass) vs the same formula written with torch ops;
* ``bernoulli_step`` (calibrated mean + counter-RNG draw, one pass) vs the mean in torch ops
  followed by ``torch.bernoulli``.

Batch 1, 2 threads (as every benchmark), per-sample thresholds and shifts as in the refiner.
"""

from __future__ import annotations

import pytest
import torch

import hidiff_kernels as hk
from hidiff_kernels import reference

TABLE = ("elementwise", "Fused elementwise ops vs torch fp32 equivalents, batch 1", "torch fp32")
SHAPES = [(128, 256), (256, 64), (512, 16)]


def shape_id(shape) -> str:
    channels, size = shape
    return f"{channels}x{size}x{size}"


@pytest.fixture(params=SHAPES, ids=shape_id)
def tensors(request):
    channels, size = request.param
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, size, size, generator=generator)
    per_sample = [torch.randn(1, channels, generator=generator) for _ in range(2)]
    return request.param, x, per_sample[0], per_sample[1], torch.rand(channels, generator=generator)


def torch_sign(x, threshold):
    return torch.where(x > threshold[:, :, None, None], 1.0, -1.0)


def torch_time_activation(u, gamma, zeta, beta):
    g, z = gamma[:, :, None, None], zeta[:, :, None, None]
    return torch.where(u > g, u - g + z, beta[None, :, None, None] * (u - g) + z)


def run_side_by_side(benchmark, record, row, variant, fn, *args):
    record(*TABLE, row, variant)
    with torch.inference_mode():
        benchmark(fn, *args)


@pytest.mark.benchmark(group="elementwise")
@pytest.mark.parametrize("variant", ["torch fp32", "binarize_pack"])
def test_binarize(benchmark, record, tensors, variant):
    shape, x, threshold, _, _ = tensors
    fn = torch_sign if variant == "torch fp32" else hk.binarize_pack
    run_side_by_side(benchmark, record, f"TB {shape_id(shape)}", variant, fn, x, threshold)


@pytest.mark.benchmark(group="elementwise")
@pytest.mark.parametrize("variant", ["torch fp32", "time_activation"])
def test_time_activation(benchmark, record, tensors, variant):
    shape, u, gamma, zeta, beta = tensors
    assert torch.equal(hk.time_activation(u, gamma, zeta, beta), reference.time_activation(u, gamma, zeta, beta))
    fn = torch_time_activation if variant == "torch fp32" else hk.time_activation
    run_side_by_side(benchmark, record, f"TA {shape_id(shape)}", variant, fn, u, gamma, zeta, beta)


BERNOULLI_SHAPES = [(1, 1, 256), (8, 1, 256), (1, 9, 256)]


def bernoulli_shape_id(shape) -> str:
    batch, classes, size = shape
    return f"{batch}x{classes}x{size}x{size}"


def torch_bernoulli_step(y_t, eps_hat, prior, coef, mode):
    """The step as the float code writes it: the mean in torch ops, then torch's own Bernoulli draw."""
    return torch.bernoulli(reference.bernoulli_mean(y_t, eps_hat, prior, coef, mode))


@pytest.mark.benchmark(group="bernoulli_step")
@pytest.mark.parametrize("mode", ["posterior", "ddim"])
@pytest.mark.parametrize("variant", ["torch fp32", "bernoulli_step"])
@pytest.mark.parametrize("shape", BERNOULLI_SHAPES, ids=bernoulli_shape_id)
def test_bernoulli_step(benchmark, record, shape, mode, variant):
    batch, classes, size = shape
    generator = torch.Generator().manual_seed(0)
    prior = torch.rand(batch, classes, size, size, generator=generator)
    y_t = torch.bernoulli(prior, generator=generator)
    eps_hat = torch.rand(batch, classes, size, size, generator=generator)
    coef = torch.tensor([[0.8, 0.3]]).expand(batch, 2).contiguous()
    if variant == "torch fp32":
        fn, args = torch_bernoulli_step, (y_t, eps_hat, prior, coef, mode)
    else:
        fn, args = hk.bernoulli_step, (y_t, eps_hat, prior, coef, mode, 0, 0)
    record(*TABLE, f"Bernoulli {mode} {bernoulli_shape_id(shape)}", variant)
    with torch.inference_mode():
        benchmark(fn, *args)
