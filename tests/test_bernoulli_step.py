"""bernoulli_step: bit-exact against the reference, counter-RNG properties, statistics, Eq. 7, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

import hidiff_kernels as hk
from hidiff_kernels import ops, reference

MODES = ("posterior", "ddim")


def step_inputs(shape, generator=None, coef=None):
    """Binary y_t, eps_hat and prior in (0, 1), and per-sample coefficients that differ across the batch."""
    y_t = torch.randint(0, 2, shape, generator=generator).float()
    eps_hat = torch.rand(shape, generator=generator)
    prior = torch.rand(shape, generator=generator)
    if coef is None:
        # The second coefficient spans [-0.5, 1.5] so that the DDIM mean leaves [0, 1] and is clipped.
        coef = torch.stack([torch.rand(shape[0], generator=generator), 2 * torch.rand(shape[0], generator=generator)])
        coef = (coef.T - torch.tensor([0.0, 0.5])).contiguous()
    return y_t, eps_hat, prior, coef


def constant_mean_inputs(mean: float, numel: int):
    """DDIM inputs whose mean is ``mean`` everywhere: y_t = 0, eps_hat = 1, coef = (0, mean)."""
    y_t = torch.zeros(1, numel)
    return y_t, torch.ones_like(y_t), torch.full_like(y_t, 0.5), torch.tensor([[0.0, mean]])


# --- bit-exactness against the reference ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(7,), (1, 1, 1, 1), (2, 1, 9, 13), (3, 3, 5, 7), (2, 3, 4, 5, 3), (1, 1, 64, 67)])
def test_matches_reference_exactly(isa, mode, shape):
    args = step_inputs(shape)
    for seed, offset in [(0, 0), (123, 17), (2**40 + 3, 2**33 - 5)]:
        out = hk.bernoulli_step(*args, mode, seed, offset)
        assert out.dtype == torch.float32 and out.shape == shape and out.is_contiguous()
        assert torch.equal(out, reference.bernoulli_step(*args, mode, seed, offset))


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_and_channels_last_inputs(isa, mode):
    y_t, eps_hat, prior, coef = step_inputs((3, 4, 6, 5))
    expected = reference.bernoulli_step(y_t, eps_hat, prior, coef, mode, 9, 4)
    channels_last = [t.contiguous(memory_format=torch.channels_last) for t in (y_t, eps_hat, prior)]
    assert torch.equal(hk.bernoulli_step(*channels_last, coef, mode, 9, 4), expected)
    # Transposed storage, and a strided coef (a column slice of a wider tensor).
    transposed = [t.transpose(2, 3).contiguous().transpose(2, 3) for t in (y_t, eps_hat, prior)]
    wide_coef = torch.cat([coef, torch.zeros_like(coef)], dim=1)[:, :2]
    assert not transposed[0].is_contiguous() and not wide_coef.is_contiguous()
    assert torch.equal(hk.bernoulli_step(*transposed, wide_coef, mode, 9, 4), expected)
    # A slice with a step: the counter follows the logical order of the view, not its memory.
    big = [torch.rand(3, 4, 12, 5) for _ in range(3)]
    big[0] = big[0].round()
    views = [t[:, :, ::2] for t in big]
    assert torch.equal(
        hk.bernoulli_step(*views, coef, mode, 9, 4),
        reference.bernoulli_step(*[v.contiguous() for v in views], coef, mode, 9, 4),
    )


def test_per_sample_coefficients_are_used(isa):
    # Same state for two samples, DDIM means 0.2 and 0.9: the samples differ in frequency accordingly.
    y_t = torch.zeros(2, 20000)
    eps_hat = torch.ones_like(y_t)
    coef = torch.tensor([[0.0, 0.2], [0.0, 0.9]])
    prior = torch.rand_like(y_t)
    out = hk.bernoulli_step(y_t, eps_hat, prior, coef, "ddim", 5, 0)
    assert torch.equal(out, reference.bernoulli_step(y_t, eps_hat, prior, coef, "ddim", 5, 0))
    frac = out.mean(1)
    assert abs(frac[0].item() - 0.2) < 0.02 and abs(frac[1].item() - 0.9) < 0.02


def test_special_values_match_reference(isa):
    # Saturated prior (0/0 guard) and infinities take the reference's path, bit for bit (NaN is an error: see
    # test_bernoulli_step_refuses_nan_like_torch_bernoulli).
    y_t, eps_hat, prior, coef = step_inputs((2, 40))
    prior[0, :10] = 0.0
    eps_hat[0, :10] = y_t[0, :10]
    prior[1, :10] = 1.0
    eps_hat[1, :10] = 1 - y_t[1, :10]
    eps_hat[0, 21], prior[1, 22] = math.inf, -math.inf
    for mode in MODES:
        out = hk.bernoulli_step(y_t, eps_hat, prior, coef, mode, 3, 0)
        assert torch.equal(out, reference.bernoulli_step(y_t, eps_hat, prior, coef, mode, 3, 0))


def test_empty_tensors():
    for shape, n in [((0, 3), 0), ((2, 0), 2)]:
        out = hk.bernoulli_step(torch.zeros(shape), torch.zeros(shape), torch.zeros(shape), torch.zeros(n, 2))
        assert out.shape == shape


# --- counter-based RNG properties -----------------------------------------------------------------


def test_independent_of_thread_count():
    # 2 x 3 x 96 x 97 elements: several parallel chunks, split differently with 1 and 2 threads.
    args = step_inputs((2, 3, 96, 97))
    threads = torch.get_num_threads()
    try:
        outs = {}
        for count in (1, 2):
            torch.set_num_threads(count)
            outs[count] = [hk.bernoulli_step(*args, mode, 77, 1000) for mode in MODES]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(outs[1], outs[2], strict=True):
        assert torch.equal(a, b)


def test_deterministic_per_seed_and_offset():
    args = step_inputs((2, 1, 32, 32))
    first = hk.bernoulli_step(*args, "posterior", 11, 0)
    assert torch.equal(first, hk.bernoulli_step(*args, "posterior", 11, 0))
    # Uncertain elements (mean strictly inside (0, 1)) are redrawn by another seed or offset.
    for seed, offset in [(12, 0), (11, 1), (11 + 2**32, 0)]:
        assert not torch.equal(first, hk.bernoulli_step(*args, "posterior", seed, offset))


def test_offset_continues_a_larger_draw(isa):
    # The sample of x at offset k equals the tail of one draw over (z, x) at offset 0 when z holds
    # k elements: a caller advancing the offset by numel per step reads one long counter stream.
    z = step_inputs((3, 2, 5, 7))
    x = step_inputs((2, 2, 5, 7))
    joint = [torch.cat([a, b]) for a, b in zip(z, x, strict=True)]
    k = z[0].numel()
    for mode in MODES:
        whole = hk.bernoulli_step(*joint, mode, 2024, 0)
        assert torch.equal(hk.bernoulli_step(*x, mode, 2024, k), whole[3:])
        assert torch.equal(hk.bernoulli_step(*z, mode, 2024, 0), whole[:3])
    # Same on the uniforms themselves.
    assert torch.equal(reference.counter_uniform(5, 100, 50), reference.counter_uniform(5, 0, 150)[100:])


def test_seed_modulo_2_64():
    # Negative seeds are their two's complement modulo 2^64; the high key word matters.
    assert torch.equal(reference.counter_uniform(-1, 0, 64), reference.counter_uniform(2**64 - 1, 0, 64))
    assert torch.equal(reference.counter_uniform(-(2**63), 0, 64), reference.counter_uniform(2**63, 0, 64))
    assert not torch.equal(reference.counter_uniform(7, 0, 64), reference.counter_uniform(7 + 2**32, 0, 64))


@pytest.mark.parametrize("seed", [2**32, 2**32 + 1, 2**62 + 12345, 2**63 - 1, -1, -(2**63), -123456789012])
def test_large_and_negative_seeds_match_reference(isa, seed):
    args = step_inputs((2, 2, 7, 9))
    for mode in MODES:
        assert torch.equal(hk.bernoulli_step(*args, mode, seed, 3), reference.bernoulli_step(*args, mode, seed, 3))


def test_offsets_across_2_32(isa):
    # Counter low word wraps inside the tensor: the carry goes into the high word.
    args = step_inputs((3, 100))
    for offset in (2**32 - 150, 2**33 - 1, 2**63 - 300):
        out = hk.bernoulli_step(*args, "ddim", 1, offset)
        assert torch.equal(out, reference.bernoulli_step(*args, "ddim", 1, offset))


PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_reference_philox_known_answers(counter, key, expected):
    # Random123's known-answer vectors of Philox4x32-10.
    words = reference.philox4x32(tuple(torch.tensor([c], dtype=torch.int64) for c in counter), key)
    assert tuple(int(w) for w in words) == expected


def test_uniform_is_top_24_bits_of_first_word():
    assert reference.counter_uniform(0, 0, 1).item() == (0x6627E8D5 >> 8) / 2**24


# --- statistics -----------------------------------------------------------------------------------


def uniform_chi_square(u: torch.Tensor, bins: int) -> float:
    counts = torch.histc(u.double(), bins=bins, min=0.0, max=1.0)
    expected = u.numel() / bins
    return float(((counts - expected) ** 2 / expected).sum())


CHI2_BINS = 64
# Two-sided at 1e-6 each: a correct RNG fails once in a million seeds; counts that are too even
# (a stratified, counter-like sequence) fail as surely as lumpy ones.
CHI2_LOW, CHI2_HIGH = stats.chi2.ppf(1e-6, CHI2_BINS - 1), stats.chi2.isf(1e-6, CHI2_BINS - 1)


def test_counter_uniform_chi_square():
    u = reference.counter_uniform(20240601, 0, 2**17)
    assert u.min() >= 0 and u.max() < 1
    assert CHI2_LOW < uniform_chi_square(u, CHI2_BINS) < CHI2_HIGH
    # Consecutive counters are independent: pairs (u_i, u_{i+1}) fill an 8 x 8 grid evenly.
    pairs = (u[:-1:2] * 8).long() * 8 + (u[1::2] * 8).long()
    counts = torch.bincount(pairs, minlength=64).double()
    expected = pairs.numel() / 64
    assert CHI2_LOW < float(((counts - expected) ** 2 / expected).sum()) < CHI2_HIGH


@pytest.mark.parametrize("rounds", [2, 3])
def test_chi_square_rejects_a_broken_rng(monkeypatch, rounds):
    # The test catches weak generators: with 2 Philox rounds consecutive counters give lumpy
    # counts, with 3 rounds counts far too even; 10 rounds pass (above).
    monkeypatch.setattr(reference, "PHILOX_ROUNDS", rounds)
    statistic = uniform_chi_square(reference.counter_uniform(20240601, 0, 2**17), CHI2_BINS)
    assert not CHI2_LOW < statistic < CHI2_HIGH


@pytest.mark.parametrize("mean", [0.0, 0.013, 0.25, 0.5, 0.77, 0.999, 1.0])
def test_sample_frequency_matches_constant_mean(mean):
    numel = 2**17
    out = hk.bernoulli_step(*constant_mean_inputs(mean, numel), "ddim", 99, 0)
    frac = out.mean().item()
    if mean in (0.0, 1.0):
        assert frac == mean
    else:
        assert abs(frac - mean) < 5 * math.sqrt(mean * (1 - mean) / numel)


# --- the means: Eq. 7 by Bayes' rule, the 0/0 guard, DDIM clipping --------------------------------


def bayes_posterior(y_t: int, y0: int, p: float, alpha: float, abar_prev: float) -> float:
    """P(y_{t-1} = 1 | y_t, y0) from the forward process, by enumerating y_{t-1} in {0, 1}.

    q(y_{t-1} = 1 | y0) = abar_prev * y0 + (1 - abar_prev) * p and
    q(y_t = 1 | y_{t-1} = v) = alpha * v + (1 - alpha) * p.
    """
    joint = []
    for v in (0, 1):
        prev_one = abar_prev * y0 + (1 - abar_prev) * p
        prev = prev_one if v == 1 else 1 - prev_one
        step_one = alpha * v + (1 - alpha) * p
        step = step_one if y_t == 1 else 1 - step_one
        joint.append(prev * step)
    return joint[1] / (joint[0] + joint[1])


def test_posterior_mean_is_bayes_rule():
    cases = list(
        itertools.product((0, 1), (0, 1), (0.03, 0.3, 0.5, 0.81, 0.97), (0.05, 0.5, 0.9, 0.999), (0.0, 0.2, 0.7, 1.0))
    )
    y_t = torch.tensor([c[0] for c in cases], dtype=torch.float32)
    y0 = torch.tensor([c[1] for c in cases], dtype=torch.float32)
    prior = torch.tensor([c[2] for c in cases], dtype=torch.float32)
    coef = torch.tensor([[c[3], c[4]] for c in cases], dtype=torch.float32)
    eps_hat = (y_t - y0).abs()  # the flip that makes y0_hat = |y_t - eps_hat| equal to y0
    mean = reference.bernoulli_mean(y_t, eps_hat, prior, coef, "posterior")
    # Bayes in float64 on the float32-rounded inputs.
    expected = torch.tensor(
        [
            bayes_posterior(int(y), int(x0), float(p), float(a), float(b))
            for y, x0, p, (a, b) in zip(y_t, y0, prior.double(), coef.double(), strict=True)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(mean.double(), expected, rtol=1e-5, atol=1e-6)


def test_posterior_frequency_of_the_compiled_kernel():
    # y_t = 1, y0 = 1, p = 0.3, alpha = 0.8, abar_{t-1} = 0.4: the sample frequency is the Bayes posterior.
    numel = 2**16
    y_t = torch.ones(1, numel)
    out = hk.bernoulli_step(
        y_t, torch.zeros_like(y_t), torch.full_like(y_t, 0.3), torch.tensor([[0.8, 0.4]]), "posterior", 4, 0
    )
    expected = bayes_posterior(1, 1, 0.3, 0.8, 0.4)
    assert abs(out.mean().item() - expected) < 5 * math.sqrt(expected * (1 - expected) / numel)


@pytest.mark.parametrize(("y_t", "y0", "p"), [(1, 0, 0.0), (0, 1, 1.0)])
def test_posterior_guards_zero_over_zero(isa, y_t, y0, p):
    # p and y0_hat saturated so that y_t is impossible: both thetas are 0, the guarded mean is 0.
    shape = (2, 33)
    y = torch.full(shape, float(y_t))
    eps_hat = (y - y0).abs()
    prior = torch.full(shape, p)
    coef = torch.tensor([[0.9, 0.5], [0.3, 0.99]])
    mean = reference.bernoulli_mean(y, eps_hat, prior, coef, "posterior")
    assert torch.equal(mean, torch.zeros(shape))
    assert torch.equal(hk.bernoulli_step(y, eps_hat, prior, coef, "posterior", 1, 0), torch.zeros(shape))


@pytest.mark.parametrize(("y_t", "y0", "p", "bayes"), [(1, 1, 0.0, 1.0), (0, 0, 1.0, 0.0), (1, 1, 1.0, 1.0)])
def test_posterior_saturated_but_defined(isa, y_t, y0, p, bayes):
    # Saturated inputs where Bayes' rule is defined give exactly its value, without NaN.
    y = torch.full((1, 50), float(y_t))
    eps_hat = (y - y0).abs()
    coef = torch.tensor([[0.6, 0.4]])
    prior = torch.full_like(y, p)
    assert torch.equal(reference.bernoulli_mean(y, eps_hat, prior, coef, "posterior"), torch.full_like(y, bayes))
    assert torch.equal(hk.bernoulli_step(y, eps_hat, prior, coef, "posterior", 8, 0), torch.full_like(y, bayes))


def test_ddim_mean_and_clipping(isa):
    # clip(sigma * y_t + c * y0_hat, 0, 1): inside, above and below [0, 1].
    y_t = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    eps_hat = torch.tensor([[0.25, 0.5, 0.75], [0.0, 1.0, 0.5], [1.0, 0.0, 0.0]])
    coef = torch.tensor([[0.5, 0.25], [0.8, 0.5], [0.0, -0.5]])
    mean = reference.bernoulli_mean(y_t, eps_hat, torch.rand(3, 3), coef, "ddim")
    expected = torch.tensor([[0.5 + 0.25 * 0.75, 0.25 * 0.5, 0.5 + 0.25 * 0.25], [1.0, 0.5, 0.25], [0.0, 0.0, 0.0]])
    assert torch.equal(mean, expected)
    # Clipped means draw deterministically: all ones above 1, all zeros below 0.
    numel = 4096
    above = hk.bernoulli_step(*constant_mean_inputs(1.7, numel), "ddim", 6, 0)
    below = hk.bernoulli_step(*constant_mean_inputs(-0.3, numel), "ddim", 6, 0)
    assert torch.equal(above, torch.ones(1, numel)) and torch.equal(below, torch.zeros(1, numel))


def test_ddim_coefficients_from_a_schedule():
    # With sigma_t = (1 - abar_{t-1}) / (1 - abar_t) the DDIM mean is a convex mix of y_t and y0_hat
    # that reaches y0_hat at abar_{t-1} = 1 (the last step).
    abar_t, abar_prev = 0.3, 0.7
    sigma = (1 - abar_prev) / (1 - abar_t)
    coef = torch.tensor([[sigma, abar_prev - sigma * abar_t]], dtype=torch.float32)
    y_t, eps_hat = torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[0.1, 0.6, 0.9]])
    mean = reference.bernoulli_mean(y_t, eps_hat, torch.rand(1, 3), coef, "ddim")
    y0_hat = (y_t - eps_hat).abs()
    torch.testing.assert_close(mean, sigma * y_t + (abar_prev - sigma * abar_t) * y0_hat)
    last = torch.tensor([[0.0, 1.0]])
    assert torch.equal(reference.bernoulli_mean(y_t, eps_hat, torch.rand(1, 3), last, "ddim"), y0_hat)


# --- errors, opcheck, torch.compile ---------------------------------------------------------------


def _bad_calls():
    y, e, p, c = step_inputs((2, 3, 4))
    return [
        ((y.double(), e, p, c, "ddim", 0, 0), TypeError, "y_t must be float32"),
        ((y, e.half(), p, c, "ddim", 0, 0), TypeError, "eps_hat must be float32"),
        ((y, e, p.to(torch.int64), c, "ddim", 0, 0), TypeError, "prior must be float32"),
        ((y, e[:, :2], p, c, "ddim", 0, 0), ValueError, "eps_hat must have the shape of y_t"),
        ((y, e, p.reshape(2, 12), c, "ddim", 0, 0), ValueError, "prior must have the shape of y_t"),
        ((y, e, p, c.double(), "ddim", 0, 0), TypeError, "coef must be float32"),
        ((y, e, p, c[:1], "ddim", 0, 0), ValueError, r"coef must have shape \(N, 2\) = \(2, 2\)"),
        ((y, e, p, c[:, :1], "ddim", 0, 0), ValueError, r"coef must have shape \(N, 2\)"),
        ((y, e, p, c.reshape(4), "ddim", 0, 0), ValueError, r"coef must have shape \(N, 2\)"),
        ((y[0, 0, 0], e[0, 0, 0], p[0, 0, 0], c, "ddim", 0, 0), ValueError, "y_t must have a batch dimension"),
        ((y, e, p, c, "ancestral", 0, 0), ValueError, "mode must be one of"),
        ((y, e, p, c, "ddim", 0, -1), ValueError, "offset must be non-negative"),
    ]


@pytest.mark.parametrize("kernel", ["compiled", "reference"])
@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_errors(kernel, case):
    args, error, message = _bad_calls()[case]
    # The op's CPU kernel (compiled when built), and the reference kernel that serves other backends.
    call = hk.bernoulli_step if kernel == "compiled" else ops._reference_bernoulli_step
    with pytest.raises(error, match=message):
        call(*args)


def test_fake_kernel_shape():
    y, e, p, c = (t.to("meta") for t in step_inputs((2, 3, 5, 4)))
    out = torch.ops.hidiff.bernoulli_step(y, e, p, c, "posterior", 0, 0)
    assert out.device.type == "meta" and out.shape == (2, 3, 5, 4) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="mode must be one of"):
        torch.ops.hidiff.bernoulli_step(y, e, p, c, "ddpm", 0, 0)


def test_opcheck_special_layouts():
    y, e, p, c = step_inputs((2, 3, 4, 5))
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (y, e, p)]
    op = torch.ops.hidiff.bernoulli_step.default
    torch.library.opcheck(op, (*cl, c, "posterior", -(2**40), 2**35))
    torch.library.opcheck(op, (y.transpose(1, 3), e.transpose(1, 3), p.transpose(1, 3), c, "ddim", 3, 0))


def test_torch_compile_fullgraph():
    def two_steps(y_t, eps_hat, prior, coef, seed: int, offset: int):
        # Two reverse steps in one graph; the second advances the counter by numel, as a sampler does.
        y = hk.bernoulli_step(y_t, eps_hat, prior, coef, "posterior", seed, offset)
        return hk.bernoulli_step(y, eps_hat, prior, coef, "ddim", seed, offset + y.numel())

    args = step_inputs((2, 1, 16, 16))
    compiled = torch.compile(two_steps, fullgraph=True, backend="inductor")
    for seed, offset in [(5, 0), (2**40 + 1, 512)]:
        assert torch.equal(compiled(*args, seed, offset), two_steps(*args, seed, offset))
