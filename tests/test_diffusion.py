"""Bernoulli diffusion (hidiff.diffusion): schedules, forward process, posterior, loss, samplers."""

from __future__ import annotations

import math

import pytest
import torch

from hidiff.diffusion import (
    MAX_BETA,
    BernoulliDiffusion,
    continuous_alpha_bar,
    make_schedule,
    posterior_mean,
    respace,
    sample_chain,
    step_coefficients,
)
from hidiff_kernels import reference

SCHEDULES = ("cosine", "cosine-unsquared")


def closed_form_alpha_bar(s: float, num_steps: int, squared: bool) -> float:
    power = 2 if squared else 1
    f = math.cos((s / num_steps + 0.008) / 1.008 * math.pi / 2) ** power
    return f / math.cos(0.008 / 1.008 * math.pi / 2) ** power


def random_mask(shape, generator=None) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) > 0.5).float()


def oracle(y0: torch.Tensor, record: list | None = None):
    """Exact denoiser: eps_hat = |y_t - y0|; optionally records (y_t, t) per call."""

    def denoise(y_t, t):
        if record is not None:
            record.append((y_t.clone(), t.clone()))
        return (y_t - y0).abs()

    return denoise


# --- schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("num_steps", [1, 10, 1000])
def test_schedule_matches_closed_form(name, num_steps):
    schedule = make_schedule(name, num_steps)
    squared = name == "cosine"
    expected = torch.tensor(
        [closed_form_alpha_bar(t + 1, num_steps, squared) for t in range(num_steps)], dtype=torch.float64
    )
    for tensor in (schedule.betas, schedule.alphas, schedule.alphas_cumprod, schedule.alphas_cumprod_prev):
        assert tensor.dtype == torch.float64 and tensor.shape == (num_steps,)
    # Index t uses abar at s = t + 1; only the last beta is clipped (abar(T) = 0).
    torch.testing.assert_close(schedule.alphas_cumprod[:-1], expected[:-1], rtol=1e-12, atol=0)
    assert schedule.betas[-1] == MAX_BETA
    assert (schedule.betas[:-1] < MAX_BETA).all() and (schedule.betas > 0).all()
    torch.testing.assert_close(schedule.alphas, 1 - schedule.betas, rtol=0, atol=0)
    torch.testing.assert_close(schedule.alphas_cumprod, torch.cumprod(schedule.alphas, 0), rtol=0, atol=0)
    assert schedule.alphas_cumprod_prev[0] == 1.0
    torch.testing.assert_close(schedule.alphas_cumprod_prev[1:], schedule.alphas_cumprod[:-1], rtol=0, atol=0)
    torch.testing.assert_close(
        schedule.alphas_cumprod[-1], (1 - MAX_BETA) * schedule.alphas_cumprod_prev[-1], rtol=1e-12, atol=0
    )


def test_schedule_known_values_and_variants():
    # abar_0 of the paper's schedule at T = 10, written out by hand.
    abar0 = (math.cos(0.108 / 1.008 * math.pi / 2) / math.cos(0.008 / 1.008 * math.pi / 2)) ** 2
    squared, unsquared = make_schedule("cosine", 10), make_schedule("cosine-unsquared", 10)
    assert squared.alphas_cumprod[0].item() == pytest.approx(abar0, rel=1e-14)
    assert squared.alphas_cumprod[0].item() == pytest.approx(0.97209, abs=1e-5)
    # The paper's schedule is the square of the public code's, wherever nothing was clipped.
    torch.testing.assert_close(squared.alphas_cumprod[:-1], unsquared.alphas_cumprod[:-1] ** 2, rtol=1e-12, atol=0)
    s = torch.linspace(0, 10, 11, dtype=torch.float64)
    torch.testing.assert_close(
        continuous_alpha_bar("cosine", s, 10), continuous_alpha_bar("cosine-unsquared", s, 10) ** 2
    )
    assert continuous_alpha_bar("cosine", 0.0, 10).item() == pytest.approx(1.0, abs=1e-15)


def test_schedule_errors():
    with pytest.raises(ValueError, match="schedule must be one of"):
        make_schedule("linear", 10)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        make_schedule("cosine", 0)
    with pytest.raises(TypeError, match="num_steps must be an int"):
        BernoulliDiffusion(num_steps=2.5)
    with pytest.raises(ValueError, match="schedule must be one of"):
        BernoulliDiffusion(schedule="quadratic")
    with pytest.raises(ValueError, match="focal_gamma"):
        BernoulliDiffusion(focal_gamma=-1.0)


# --- forward process ---------------------------------------------------------------------------


def test_forward_marginal_and_xor():
    diffusion = BernoulliDiffusion()
    generator = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 3, 6, 9])
    n = 20_000
    y0 = torch.zeros(4, 1, 2, n)
    y0[:, :, 0] = 1.0  # first row ones, second zeros
    p_value = 0.3
    prior = torch.full_like(y0, p_value)
    y_t, eps = diffusion.q_sample(y0, prior, t, generator=generator)
    assert y_t.dtype == torch.float32 and y_t.shape == y0.shape
    assert set(y_t.unique().tolist()) <= {0.0, 1.0} and set(eps.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(eps, (y_t != y0).float())  # eps = y_t XOR y0
    for i, step in enumerate(t.tolist()):
        abar = diffusion.alphas_cumprod[step].item()
        for row, y0_value in ((0, 1.0), (1, 0.0)):
            expected = abar * y0_value + (1 - abar) * p_value
            observed = y_t[i, 0, row].mean().item()
            assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / n) + 1e-6


def test_forward_keeps_saturated_prior_fixed():
    diffusion = BernoulliDiffusion()
    y0 = random_mask((3, 2, 8, 8))
    y_t, eps = diffusion.q_sample(y0, y0.clone(), torch.tensor([9, 9, 9]))
    assert torch.equal(y_t, y0) and not eps.any()


def test_q_sample_generator_is_deterministic():
    diffusion = BernoulliDiffusion()
    y0, prior = random_mask((2, 1, 16, 16)), torch.rand(2, 1, 16, 16)
    t = torch.tensor([5, 8])
    first = diffusion.q_sample(y0, prior, t, generator=torch.Generator().manual_seed(3))
    second = diffusion.q_sample(y0, prior, t, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# --- posterior ---------------------------------------------------------------------------------


def brute_force_posterior(y_t, y0, p, alpha, abar_prev):
    """P(y_{t-1} = 1 | y_t, y0) by Bayes over y_{t-1} in {0, 1}."""
    weights = []
    for v in (0.0, 1.0):
        forward_one = alpha * v + (1 - alpha) * p  # q(y_t = 1 | y_{t-1} = v)
        likelihood = forward_one if y_t == 1 else 1 - forward_one
        marginal_one = abar_prev * y0 + (1 - abar_prev) * p  # q(y_{t-1} = 1 | y0)
        weights.append(likelihood * (marginal_one if v == 1 else 1 - marginal_one))
    return weights[1] / (weights[0] + weights[1])


@pytest.mark.parametrize("name", SCHEDULES)
def test_posterior_matches_bayes(name):
    diffusion = BernoulliDiffusion(schedule=name)
    generator = torch.Generator().manual_seed(2)
    steps = diffusion.num_steps
    for y0_kind in ("binary", "continuous"):
        y_t = random_mask((steps, 1, 4, 4), generator).double()
        y0 = torch.rand(steps, 1, 4, 4, generator=generator, dtype=torch.float64)
        if y0_kind == "binary":
            y0 = (y0 > 0.5).double()
        prior = torch.rand(steps, 1, 4, 4, generator=generator, dtype=torch.float64) * 0.98 + 0.01
        t = torch.arange(steps)
        got = diffusion.posterior(y_t, y0, prior, t)
        assert got.dtype == torch.float64
        for i in range(steps):
            alpha, abar_prev = diffusion.alphas[i].item(), diffusion.alphas_cumprod_prev[i].item()
            for index in range(16):
                args = (y_t[i].flatten()[index].item(), y0[i].flatten()[index].item(), prior[i].flatten()[index].item())
                expected = brute_force_posterior(*args, alpha, abar_prev)
                assert got[i].flatten()[index].item() == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_posterior_float32_matches_sampling_op_mean():
    diffusion = BernoulliDiffusion()
    y_t, y0_hat, prior = random_mask((10, 2, 5, 5)), torch.rand(10, 2, 5, 5), torch.rand(10, 2, 5, 5)
    t = torch.arange(10)
    got = diffusion.posterior(y_t, y0_hat, prior, t)
    assert got.dtype == torch.float32
    coef = torch.stack([diffusion.alphas, diffusion.alphas_cumprod_prev], dim=1).float()
    # y0_hat = |y_t - eps_hat| with eps_hat = |y_t - y0_hat| for binary y_t.
    eps_hat = (y_t - y0_hat).abs()
    expected = reference.bernoulli_mean(y_t, eps_hat, prior, coef, "posterior")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_posterior_guards_zero_over_zero():
    # p and y0 saturated at 0 with y_t = 1 (and the mirror case) give theta0 = theta1 = 0.
    y_t = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(4, 1)
    y0 = torch.tensor([0.0, 1.0, 0.0, 1.0]).reshape(4, 1)
    prior = torch.tensor([0.0, 1.0, 0.0, 1.0]).reshape(4, 1)
    for dtype in (torch.float32, torch.float64):
        out = posterior_mean(y_t.to(dtype), y0.to(dtype), prior.to(dtype), torch.full((4,), 0.9), torch.ones(4) * 0.5)
        assert torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()


# --- loss --------------------------------------------------------------------------------------


def test_kl_is_zero_for_the_true_eps_and_positive_otherwise():
    diffusion = BernoulliDiffusion()
    y0, prior = random_mask((4, 1, 16, 16)), torch.rand(4, 1, 16, 16) * 0.9 + 0.05
    t = torch.tensor([1, 4, 7, 9])
    exact = diffusion.training_loss(oracle(y0), y0, prior, t)
    assert exact.kl.item() == 0.0
    assert exact.focal.item() < 1e-6
    wrong = diffusion.training_loss(lambda y_t, t: torch.full_like(y_t, 0.5), y0, prior, t)
    assert wrong.kl.item() > 1e-3 and wrong.focal.item() > 1e-3
    torch.testing.assert_close(wrong.total, wrong.kl + wrong.focal)


def manual_terms(diffusion, y_t, y0, prior, eps_hat, t, gamma=0.0, first_step_term="y0_hat", model_posterior="mixture"):
    """Per-sample KL / NLL and focal (BCE at gamma = 0), written directly from the formulas in float64."""
    y_t, y0, prior, eps_hat = (x.double() for x in (y_t, y0, prior, eps_hat))
    vb, focal = [], []
    for i, step in enumerate(t.tolist()):
        alpha, abar_prev = diffusion.alphas[step].item(), diffusion.alphas_cumprod_prev[step].item()

        def post(y0_like, i=i, alpha=alpha, abar_prev=abar_prev):
            return torch.tensor(
                [
                    brute_force_posterior(a, b, c, alpha, abar_prev)
                    for a, b, c in zip(
                        y_t[i].flatten().tolist(), y0_like.flatten().tolist(), prior[i].flatten().tolist(), strict=True
                    )
                ],
                dtype=torch.float64,
            )

        y0_hat = (y_t[i] - eps_hat[i]).abs()
        if model_posterior == "plugin":
            mu_hat = post(y0_hat)
        else:  # the mixture of the exact posteriors of y0 = 1 and y0 = 0
            mu_hat = y0_hat.flatten() * post(torch.ones_like(y0_hat)) + (1 - y0_hat.flatten()) * post(y0_hat * 0)
        mu_hat = mu_hat.clamp(1e-7, 1 - 1e-7)
        target = y0[i].flatten()
        if step == 0:
            decoder = mu_hat if first_step_term == "posterior" else y0_hat.flatten().clamp(1e-7, 1 - 1e-7)
            vb.append(-(target * decoder.log() + (1 - target) * (1 - decoder).log()).mean())
        else:
            q = post(y0[i]).clamp(1e-7, 1 - 1e-7)
            vb.append((q * (q / mu_hat).log() + (1 - q) * ((1 - q) / (1 - mu_hat)).log()).mean())
        e, e_hat = (y_t[i] - y0[i]).abs().flatten(), eps_hat[i].flatten().clamp(1e-7, 1 - 1e-7)
        bce = -(e * e_hat.log() + (1 - e) * (1 - e_hat).log())
        focal.append(((1 - torch.exp(-bce)) ** gamma * bce).mean())
    return torch.stack(vb), torch.stack(focal)


@pytest.mark.parametrize(
    "gamma, first_step_term, model_posterior", [(0.0, "y0_hat", "mixture"), (2.0, "posterior", "plugin")]
)
@pytest.mark.parametrize("steps", [[0, 0, 0], [0, 5, 9], [2, 0, 0]])
def test_loss_terms_per_sample_with_t0_nll(steps, gamma, first_step_term, model_posterior):
    diffusion = BernoulliDiffusion(focal_gamma=gamma, first_step_term=first_step_term, model_posterior=model_posterior)
    y0, prior = random_mask((3, 2, 6, 6)), torch.rand(3, 2, 6, 6) * 0.9 + 0.05
    eps_table = torch.rand(3, 2, 6, 6) * 0.9 + 0.05
    record = []

    def denoise(y_t, t):
        record.append((y_t, t))
        return eps_table

    loss = diffusion.training_loss(denoise, y0, prior, torch.tensor(steps))
    ((y_t, t_seen),) = record
    assert torch.equal(t_seen, torch.tensor(steps))
    vb, focal = manual_terms(diffusion, y_t, y0, prior, eps_table, t_seen, gamma, first_step_term, model_posterior)
    # Tight tolerance: at t = 0 the KL to the (clamped) delta posterior differs from the NLL only by the
    # entropy of the clamped target (~2e-6 per pixel), so a looser one would not see a wrong branch.
    torch.testing.assert_close(loss.kl.double(), vb.mean(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss.focal.double(), focal.mean(), rtol=1e-5, atol=1e-6)


def test_loss_single_call_and_gradients():
    diffusion = BernoulliDiffusion()
    generator = torch.Generator().manual_seed(4)
    y0 = random_mask((4, 1, 8, 8), generator)
    logits = torch.randn(4, 1, 8, 8, generator=generator, requires_grad=True)
    weight = torch.tensor(0.7, requires_grad=True)
    calls = []

    def denoise(y_t, t):
        calls.append(t)
        return torch.sigmoid(weight * (2 * y_t - 1) + torch.sigmoid(logits))

    prior = torch.sigmoid(logits)
    loss = diffusion.training_loss(denoise, y0, prior, generator=generator)
    assert len(calls) == 1
    assert calls[0].dtype == torch.int64 and calls[0].shape == (4,)
    assert ((calls[0] >= 0) & (calls[0] < 10)).all()
    assert loss.total.dim() == 0 and loss.total.requires_grad
    loss.total.backward()
    assert weight.grad is not None and weight.grad.abs().item() > 0
    assert logits.grad is not None and logits.grad.abs().sum().item() > 0


def test_loss_prior_gradient_through_the_posterior_alone():
    diffusion = BernoulliDiffusion()
    y0 = random_mask((2, 1, 8, 8))
    prior = (torch.rand(2, 1, 8, 8) * 0.8 + 0.1).requires_grad_(True)
    eps_hat = (torch.rand(2, 1, 8, 8) * 0.8 + 0.1).requires_grad_(True)
    loss = diffusion.training_loss(lambda y_t, t: eps_hat, y0, prior, torch.tensor([3, 6]))
    prior_grad, eps_grad = torch.autograd.grad(loss.total, (prior, eps_hat))
    assert prior_grad.abs().sum() > 0 and eps_grad.abs().sum() > 0


def test_loss_input_errors():
    diffusion = BernoulliDiffusion()
    y0, prior = random_mask((2, 1, 4, 4)), torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="t must lie in"):
        diffusion.training_loss(oracle(y0), y0, prior, torch.tensor([0, 10]))
    with pytest.raises(TypeError, match="t must be an integer tensor"):
        diffusion.training_loss(oracle(y0), y0, prior, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="prior must have the shape"):
        diffusion.training_loss(oracle(y0), y0, prior[:, :, :2])
    with pytest.raises(ValueError, match="denoise_fn must return"):
        diffusion.training_loss(lambda y_t, t: y_t[:1], y0, prior)
    with pytest.raises(ValueError, match="y0 must have the shape of y_t"):
        diffusion.posterior(y0, y0[..., :2], prior, torch.tensor([1, 2]))


# --- samplers ----------------------------------------------------------------------------------


def test_respacing():
    assert respace(10, None) == tuple(range(9, -1, -1))
    assert respace(10, 10) == tuple(range(9, -1, -1))
    assert respace(10, 5) == (9, 7, 5, 2, 0)
    assert respace(10, 2) == (9, 0)
    assert respace(10, 1) == (9,)
    assert respace(1000, 10) == (999, 888, 777, 666, 555, 444, 333, 222, 111, 0)
    for steps in range(2, 31):
        visited = respace(30, steps)
        assert len(visited) == steps and visited[0] == 29 and visited[-1] == 0
        assert all(a > b for a, b in zip(visited, visited[1:], strict=False))
    assert BernoulliDiffusion().timesteps(5) == (9, 7, 5, 2, 0)


def test_step_coefficients():
    schedule = make_schedule("cosine", 10)
    abar = schedule.alphas_cumprod
    alpha, abar_prev = step_coefficients(schedule, "ancestral", 5, 4)
    assert alpha == schedule.alphas[5].item() and abar_prev == abar[4].item()
    alpha, abar_prev = step_coefficients(schedule, "ancestral", 7, 2)
    assert alpha == pytest.approx(abar[7].item() / abar[2].item(), rel=1e-12) and abar_prev == abar[2].item()
    sigma, c = step_coefficients(schedule, "ddim", 7, 2)
    expected_sigma = (1 - abar[2].item()) / (1 - abar[7].item())
    assert sigma == pytest.approx(expected_sigma, rel=1e-12)
    assert c == pytest.approx(abar[2].item() - expected_sigma * abar[7].item(), rel=1e-12)


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
@pytest.mark.parametrize("steps", [None, 5])
def test_oracle_sampling_recovers_y0_and_keeps_forward_marginals(sampler, steps):
    diffusion = BernoulliDiffusion()
    n = 8192
    y0 = torch.zeros(2, 1, 2, n)
    y0[:, :, 0] = 1.0
    p_value = 0.3
    prior = torch.full_like(y0, p_value)
    record = []
    y0_hat = diffusion.sample(oracle(y0, record), prior, steps=steps, sampler=sampler, seed=11)
    assert y0_hat.dtype == torch.float32 and y0_hat.shape == y0.shape
    assert torch.equal(y0_hat, y0)
    visited = diffusion.timesteps(steps)
    assert [int(t[0]) for _, t in record] == list(visited)
    assert all(t.dtype == torch.int64 and t.shape == (2,) for _, t in record)
    # With the exact denoiser, each visited state has the forward marginal Bernoulli(abar y0 + (1 - abar) p).
    for y_t, t in record:
        abar = diffusion.alphas_cumprod[int(t[0])].item()
        for row, y0_value in ((0, 1.0), (1, 0.0)):
            expected = abar * y0_value + (1 - abar) * p_value
            observed = y_t[:, 0, row].mean().item()
            assert abs(observed - expected) < 5 * math.sqrt(max(expected * (1 - expected), 1e-4) / (2 * n))


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_sampling_is_determined_by_the_seed(sampler):
    diffusion = BernoulliDiffusion()
    prior = torch.rand(2, 3, 8, 8)

    def denoise(y_t, t):  # the result depends on the whole random trajectory
        return torch.full_like(y_t, 0.2) + 0.05 * (t.float() / 10).reshape(-1, 1, 1, 1)

    first = diffusion.sample(denoise, prior, sampler=sampler, seed=5)
    again = diffusion.sample(denoise, prior, sampler=sampler, seed=5)
    other = diffusion.sample(denoise, prior, sampler=sampler, seed=6)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert (first >= 0).all() and (first <= 1).all()
    torch.manual_seed(123)  # the global torch RNG plays no part
    assert torch.equal(first, diffusion.sample(denoise, prior, sampler=sampler, seed=5))


def test_ensemble_is_the_mean_of_distinct_members():
    diffusion = BernoulliDiffusion()
    prior = torch.rand(2, 1, 8, 8)

    def denoise(y_t, t):
        return torch.full_like(y_t, 0.3)

    ensemble = diffusion.sample(denoise, prior, steps=5, samples=3, seed=9)
    visited = diffusion.timesteps(5)
    members, offset = [], 0
    for _ in range(3):
        member, offset = sample_chain(denoise, prior, diffusion.schedule, visited, "ddim", seed=9, offset=offset)
        members.append(member)
    assert offset == 3 * len(visited) * prior.numel()
    torch.testing.assert_close(ensemble, torch.stack(members).mean(0), rtol=0, atol=1e-6)
    assert not torch.equal(members[0], members[1]) and not torch.equal(members[1], members[2])
    assert torch.equal(members[0], diffusion.sample(denoise, prior, steps=5, samples=1, seed=9))
    calls = []
    diffusion.sample(lambda y_t, t: calls.append(t) or denoise(y_t, t), prior, steps=5, samples=3)
    assert len(calls) == 15


def test_initial_state_is_bernoulli_of_the_prior():
    diffusion = BernoulliDiffusion()
    prior = torch.tensor([0.0, 0.25, 1.0]).repeat_interleave(20_000).reshape(1, 3, 20_000)
    record = []
    diffusion.sample(oracle(torch.zeros_like(prior), record), prior, steps=1)
    ((y_start, t),) = record
    assert int(t[0]) == 9
    assert not y_start[0, 0].any() and y_start[0, 2].all()
    assert abs(y_start[0, 1].mean().item() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 20_000)


def test_to_mask():
    single = torch.tensor([0.2, 0.5, 0.51, 0.9]).reshape(1, 1, 2, 2)
    assert BernoulliDiffusion.to_mask(single).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    multi = torch.rand(2, 4, 5, 5)
    mask = BernoulliDiffusion.to_mask(multi)
    assert mask.dtype == torch.float32 and mask.shape == multi.shape
    assert torch.equal(mask.sum(1), torch.ones(2, 5, 5))
    assert torch.equal(mask.argmax(1), multi.argmax(1))
    with pytest.raises(ValueError, match="y0_hat must have shape"):
        BernoulliDiffusion.to_mask(torch.rand(4))


def test_sampler_errors():
    diffusion = BernoulliDiffusion()
    prior = torch.rand(1, 1, 4, 4)
    denoise = oracle(torch.zeros_like(prior))
    with pytest.raises(ValueError, match="steps must be in 1..10"):
        diffusion.sample(denoise, prior, steps=0)
    with pytest.raises(ValueError, match="steps must be in 1..10"):
        diffusion.sample(denoise, prior, steps=11)
    with pytest.raises(TypeError, match="steps must be an int"):
        diffusion.sample(denoise, prior, steps="5")
    with pytest.raises(ValueError, match="sampler must be one of"):
        diffusion.sample(denoise, prior, sampler="ddpm++")
    with pytest.raises(ValueError, match="samples must be >= 1"):
        diffusion.sample(denoise, prior, samples=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        diffusion.sample(denoise, prior, seed=1.5)
    with pytest.raises(ValueError, match="denoise_fn must return"):
        diffusion.sample(lambda y_t, t: y_t[..., :2], prior)
    with pytest.raises(ValueError, match="strictly descending"):
        sample_chain(denoise, prior, diffusion.schedule, [0, 5])


def test_modes_parse_once_with_an_error_naming_the_argument_and_the_choices():
    from hidiff.config import DiffusionConfig
    from hidiff.diffusion import FirstStepTerm, ModelPosterior, Parameterization, Sampler

    assert Sampler.parse("ancestral", "sampler") is Sampler.ANCESTRAL
    assert Sampler.parse(Sampler.DDIM, "sampler") is Sampler.DDIM
    assert Sampler.DDIM == "ddim" and str(ModelPosterior.PLUGIN) == "plugin"
    assert FirstStepTerm.choices() == ("y0_hat", "posterior")
    assert Parameterization.choices() == ("residual", "direct")
    with pytest.raises(ValueError, match=r"sampler must be one of \('ddim', 'ancestral'\), got 'dim'"):
        Sampler.parse("dim", "sampler")
    with pytest.raises(ValueError, match="diffusion.model_posterior must be one of"):
        DiffusionConfig(model_posterior="mix")
    with pytest.raises(ValueError, match="model_posterior must be one of"):
        BernoulliDiffusion(model_posterior="mix")
    config = DiffusionConfig(sampler=Sampler.ANCESTRAL)
    assert type(config.sampler) is str and config.sampler == "ancestral"  # plain strings stay YAML-safe


def test_last_step_fraction_draws_that_share_of_training_timesteps_at_t_minus_1():
    uniform = BernoulliDiffusion(num_steps=10)
    weighted = BernoulliDiffusion(num_steps=10, last_step_fraction=0.5)
    t = weighted.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert abs((t == 9).float().mean().item() - 0.55) < 0.02  # half at T-1, plus the uniform half's share
    assert ((t >= 0) & (t < 10)).all()
    only_last = BernoulliDiffusion(num_steps=10, last_step_fraction=1.0)
    assert (only_last.sample_timesteps(64, generator=torch.Generator().manual_seed(1)) == 9).all()
    reference = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(uniform.sample_timesteps(32, generator=torch.Generator().manual_seed(2)), reference)
    with pytest.raises(ValueError, match="last_step_fraction"):
        BernoulliDiffusion(last_step_fraction=1.5)
