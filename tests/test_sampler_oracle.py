"""The samplers against oracle denoisers: defects of the sampler separated from defects of training.

- A denoiser that knows y0 predicts the true flips ``|y_t - y0|``: every chain must return y0
  exactly, and every visited state must have the forward marginal ``abar_s y0 + (1 - abar_s) p``.
- The prior-only Bayes denoiser ``(1 - abar_t) |y_t - p|`` is the exact posterior flip rate when
  ``y0 ~ Bernoulli(p)``: the chain then samples the prior, and the ensemble mean converges to p.
"""

from __future__ import annotations

import pytest
import torch

from hidiff.diffusion import BernoulliDiffusion, prior_flip_rate, sample_chain


def _prior_and_mask(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    prior = torch.rand(shape, generator=generator)
    # Saturated priors (exactly 0 or 1) included: the sampler must not divide 0 by 0 there.
    prior[..., 0] = 0.0
    prior[..., 1] = 1.0
    y0 = (torch.rand(shape, generator=generator) < 0.5).float()
    return prior, y0


def _knows_y0(y0: torch.Tensor):
    return lambda y_t, t: (y_t - y0).abs()


def _prior_only(diffusion: BernoulliDiffusion, prior: torch.Tensor):
    def denoise(y_t, t):
        return prior_flip_rate(y_t, prior, (1 - diffusion.alphas_cumprod[t]).float())

    return denoise


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
@pytest.mark.parametrize("steps", [None, 5, 1])
@pytest.mark.parametrize("schedule", ["cosine", "cosine-unsquared"])
def test_denoiser_that_knows_y0_returns_y0_exactly(sampler, steps, schedule):
    diffusion = BernoulliDiffusion(num_steps=10, schedule=schedule)
    prior, y0 = _prior_and_mask((3, 2, 16, 16), seed=1)
    for seed in range(3):
        result = diffusion.sample(_knows_y0(y0), prior, steps=steps, sampler=sampler, seed=seed)
        assert torch.equal(result, y0)
    # Even from a prior that contradicts y0 everywhere.
    assert torch.equal(diffusion.sample(_knows_y0(y0), 1 - y0, steps=steps, sampler=sampler), y0)


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
@pytest.mark.parametrize("steps", [None, 4])
def test_denoiser_that_knows_y0_keeps_the_forward_marginals(sampler, steps):
    """Every visited state is Bernoulli(abar_s y0 + (1 - abar_s) p), as the forward process says."""
    diffusion = BernoulliDiffusion(num_steps=10)
    # One pixel pattern repeated over a large batch: the batch mean estimates each pixel's marginal.
    prior, y0 = _prior_and_mask((1, 1, 4, 8), seed=2)
    batch = 20000
    prior_b, y0_b = prior.expand(batch, -1, -1, -1).contiguous(), y0.expand(batch, -1, -1, -1).contiguous()
    states: dict[int, torch.Tensor] = {}
    timesteps = diffusion.timesteps(steps)
    sample_chain(
        _knows_y0(y0_b),
        prior_b,
        diffusion.schedule,
        timesteps,
        sampler,
        seed=7,
        trace=lambda t, y_t, eps_hat: states.__setitem__(t, y_t.mean(0)),
    )
    assert sorted(states) == sorted(timesteps)
    for t, mean in states.items():
        abar = float(diffusion.alphas_cumprod[t])
        expected = abar * y0[0] + (1 - abar) * prior[0]
        tolerance = 5 * (expected * (1 - expected) / batch).sqrt() + 1e-6
        assert ((mean - expected).abs() <= tolerance).all(), (t, (mean - expected).abs().max())


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
@pytest.mark.parametrize("steps", [None, 5])
def test_prior_only_bayes_denoiser_ensemble_mean_converges_to_the_prior(sampler, steps):
    diffusion = BernoulliDiffusion(num_steps=10)
    prior, _ = _prior_and_mask((1, 1, 4, 8), seed=3)
    batch = 20000
    prior_b = prior.expand(batch, -1, -1, -1).contiguous()
    refined = diffusion.sample(_prior_only(diffusion, prior_b), prior_b, steps=steps, sampler=sampler, seed=11)
    mean = refined.mean(0)
    # y0_hat = abar_0 y + (1 - abar_0) p with y ~ Bernoulli(p): variance below p (1 - p) / batch.
    tolerance = 5 * (prior[0] * (1 - prior[0]) / batch).sqrt() + 1e-6
    assert ((mean - prior[0]).abs() <= tolerance).all(), (mean - prior[0]).abs().max()
    # The ensemble API gives the same mean from fewer, repeated members.
    small = prior.expand(500, -1, -1, -1).contiguous()
    members = diffusion.sample(_prior_only(diffusion, small), small, steps=steps, sampler=sampler, samples=40)
    tolerance = 5 * (prior[0] * (1 - prior[0]) / 20000).sqrt() + 1e-6
    assert ((members.mean(0) - prior[0]).abs() <= tolerance).all()


def test_prior_only_bayes_denoiser_is_the_posterior_flip_rate():
    """Brute force: with y0 ~ Bernoulli(p), P(y0 != y_t | y_t) equals (1 - abar_t) |y_t - p|."""
    diffusion = BernoulliDiffusion(num_steps=10)
    for t in range(10):
        abar = float(diffusion.alphas_cumprod[t])
        for p in (0.0, 0.1, 0.5, 0.93, 1.0):
            for y_t in (0.0, 1.0):
                joint = {
                    y0: (p if y0 else 1 - p) * (abar * (y_t == y0) + (1 - abar) * (p if y_t else 1 - p))
                    for y0 in (0.0, 1.0)
                }
                total = joint[0.0] + joint[1.0]
                if total == 0:
                    continue
                flip = joint[1.0 - y_t] / total
                got = prior_flip_rate(*(torch.tensor(v, dtype=torch.float64) for v in ([[y_t]], [[p]], [1 - abar])))
                assert got.item() == pytest.approx(flip, abs=1e-12)
