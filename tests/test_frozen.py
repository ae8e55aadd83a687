"""Tests of the deployable refiner: hidiff_kernels.deploy and hidiff.models.frozen.

Tolerances (measured on this project's CPU kernels, float32):

* Frozen vs ``refiner.eval()``: folding BatchNorm into the popcount's affine, the per-step tables
  (the time MLP's GEMM rounds differently for a batch of S timesteps than for a batch of B samples,
  ~1e-7; the training-form model itself differs by as much between batch sizes) and splitting the
  input conv into its cached image share and its per-step share change float results by ~1 ulp. A
  binarised activation lying within ~1e-7 of its TB threshold can then flip, and the flip cascades
  through the chaotic random binary network: that sample's eps_hat diverges. Measured at 64x64: with
  this file's randomisation, no flip in 172 samples (160 at C = 32 plus the 12 of the cases below,
  ~1M binarised activations each); with BatchNorm affines left at 1/0, 2 of 100 samples diverged (C
  = 32 and 24), a first-order rate of ~2e-8 per binarised activation. Samples without a flip agree
  to < 5e-7 (asserted: 1e-5). The test checks, per sample, that the binarised inputs of every binary
  layer agree, or that the earliest disagreement is a near-tie (|x - threshold| < 1e-5) in the
  training-form model, and that at most one of 4 samples diverges.
* Real refiner (binary=False): no binarisation, so no cascade: max |diff| ~1e-6 (asserted: 1e-4).
"""

from __future__ import annotations

import io
import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

import hidiff_kernels as hk
from hidiff.diffusion import BernoulliDiffusion
from hidiff.models import BBDM, FrozenBBDM, HiDiff, UNet, freeze
from hidiff.models.frozen import FrozenBlock, FrozenXFormer
from hidiff.models.frozen.layers import avg_pool2x2, pair_mean_of_concat, upsample2x
from hidiff.models.layers import channel_pair_mean
from hidiff_kernels.deploy import (
    FusedBinaryConv2d,
    FusedConv2d,
    concat_packed,
    fold_batchnorm,
    fold_batchnorm_into_weight,
    upsample_packed,
)
from hidiff_kernels.nn import BinaryConv2d, BinaryLinear
from hidiff_kernels.reference import unpack_bits

COND = (16, 24, 32, 48)
SIZE = 64
TIMESTEPS = tuple(range(10))
TIE = 1e-5


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models: one intra-op thread avoids contention on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every path that is trivial at init: the zero-initialised layers (TB/TA
    linears, FiLM, LayerScale, the head and ResBlock output convs), BatchNorm statistics and
    affines, and the TA slopes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("beta"):
                p.copy_(0.5 * torch.rand(p.shape, generator=g))
    return model.eval()


def make_refiner(channels: int = 32, binary: bool = True, num_classes: int = 1, xformer: bool = True) -> BBDM:
    return randomize(BBDM(3, num_classes, model_channels=channels, cond_channels=COND, binary=binary, xformer=xformer))


def make_inputs(refiner: BBDM, batch: int = 2, seed: int = 1, t: list[int] | None = None):
    """(image, y_t, prior, t, features) at SIZE x SIZE."""
    g = torch.Generator().manual_seed(seed)
    k = refiner.num_classes
    features = [
        torch.randn(batch, c, SIZE // s, SIZE // s, generator=g) for c, s in zip(COND, (4, 8, 16, 32), strict=True)
    ]
    image = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    y_t = torch.randint(0, 2, (batch, k, SIZE, SIZE), generator=g).float()
    prior = torch.rand(batch, k, SIZE, SIZE, generator=g)
    steps = torch.tensor(t) if t is not None else torch.randint(0, 10, (batch,), generator=g)
    return image, y_t, prior, steps, features


def _frozen_key(name: str) -> str:
    """Name of the frozen fused conv that replaces the training-form layer ``name``."""
    return re.sub(r"\.convs\.\d+$", ".conv", re.sub(r"\.linear$", ".conv", name))


def binarised_inputs(refiner: BBDM, frozen: FrozenBBDM, inputs) -> tuple[dict, dict, dict, Tensor, Tensor]:
    """Runs both models once and records the binarised input of every binary layer.

    Returns:
        ``(bits_ref, margins_ref, bits_frozen, eps_ref, eps_frozen)``: per frozen conv name, bool
        ``(B, H, W, C)`` (+1 where True) for both models and the training-form ``x - threshold``,
        the dicts in the training-form model's execution order.
    """
    bits_ref, margins, bits_frozen, handles = {}, {}, {}, []

    def record_ref(key):
        def hook(module, args):
            x, threshold = args
            if x.dim() == 4:  # conv input (B, C, H, W)
                margin = (x - threshold[:, :, None, None]).permute(0, 2, 3, 1)
            else:  # X-Former tokens (B, N, C): the frozen 1x1 conv sees (B, N, 1, C)
                margin = (x - threshold[:, None, :]).unsqueeze(2)
            bits_ref[key], margins[key] = margin > 0, margin

        return hook

    def record_frozen(key):
        def hook(module, args):
            bits_frozen[key] = ~unpack_bits(args[0], module.in_channels)

        return hook

    for name, module in refiner.named_modules():
        if isinstance(module, (BinaryConv2d, BinaryLinear)):
            handles.append(module.register_forward_pre_hook(record_ref(_frozen_key(name))))
    for name, module in frozen.named_modules():
        if isinstance(module, FusedBinaryConv2d):
            handles.append(module.register_forward_pre_hook(record_frozen(name)))
    try:
        with torch.inference_mode():
            eps_ref = refiner(*inputs)
            eps_frozen = frozen(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return bits_ref, margins, bits_frozen, eps_ref, eps_frozen


# ---------------------------------------------------------------------------------------------
# hidiff_kernels.deploy


def test_fold_batchnorm_matches_batchnorm():
    bn = randomize(nn.BatchNorm2d(5), seed=3)
    scale, bias = torch.rand(5) + 0.5, torch.randn(5)
    x = torch.randn(2, 5, 4, 4)
    folded_scale, folded_bias = fold_batchnorm(scale, bias, bn)
    expected = bn(x * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1))
    torch.testing.assert_close(x * folded_scale.view(1, -1, 1, 1) + folded_bias.view(1, -1, 1, 1), expected)
    conv = nn.Conv2d(5, 5, 3, padding=1)
    weight, conv_bias = fold_batchnorm_into_weight(conv.weight, conv.bias, bn)
    with torch.no_grad():
        torch.testing.assert_close(F.conv2d(x, weight, conv_bias, padding=1), bn(conv(x)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(None, None, nn.BatchNorm2d(5, track_running_stats=False))
    with pytest.raises(ValueError, match="bias must have shape"):
        fold_batchnorm(None, torch.zeros(4), bn)


def test_fused_binary_conv_equals_parallel_branches():
    """DownBlock's trick: two BinaryConv2d + BN branches on one TB(x) == one conv with concatenated weights."""
    convs = [BinaryConv2d(40, 40, 3, stride=2, padding=1) for _ in range(2)]
    bns = [randomize(nn.BatchNorm2d(40), seed=i) for i in range(2)]
    x, threshold = torch.randn(2, 40, 8, 8), 0.1 * torch.randn(2, 40)
    residual, next_threshold = torch.randn(2, 80, 4, 4), 0.1 * torch.randn(2, 80)
    gamma, zeta, beta = 0.1 * torch.randn(2, 80), 0.1 * torch.randn(2, 80), torch.rand(80)
    fused = FusedBinaryConv2d.from_binary_convs(convs, bns)
    out, packed = fused(fused.prepare(x, threshold), residual, gamma, zeta, beta, next_threshold, pack=True)
    with torch.inference_mode():
        u = torch.cat([bn(conv(x, threshold)) for conv, bn in zip(convs, bns, strict=True)], dim=1) + residual
        expected = hk.time_activation(u, gamma, zeta, beta)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(packed, hk.binarize_pack(out, next_threshold))
    assert fused.weight.dtype == torch.int32 and fused.weight.shape == (80, 3, 3, 2)
    # The real twin on the same structure.
    real_convs = [nn.Conv2d(40, 40, 3, stride=2, padding=1) for _ in range(2)]
    real = FusedConv2d.from_convs(real_convs, bns)
    out, shifted = real(real.prepare(x, threshold), residual, gamma, zeta, beta, next_threshold, pack=True)
    with torch.no_grad():
        shifted_x = x - threshold[:, :, None, None]
        u = torch.cat([bn(conv(shifted_x)) for conv, bn in zip(real_convs, bns, strict=True)], dim=1) + residual
        torch.testing.assert_close(out, hk.time_activation(u, gamma, zeta, beta), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shifted, out - next_threshold[:, :, None, None])


def test_packed_upsample_and_concat():
    x, threshold = torch.randn(2, 64, 3, 5), torch.randn(2, 64)
    up = F.interpolate(x, scale_factor=2.0, mode="nearest")
    assert torch.equal(upsample_packed(hk.binarize_pack(x, threshold)), hk.binarize_pack(up, threshold))
    b, tb = torch.randn(2, 33, 3, 5), torch.randn(2, 33)
    joined = concat_packed([hk.binarize_pack(x, threshold), hk.binarize_pack(b, tb)], [64, 33])
    assert torch.equal(joined, hk.binarize_pack(torch.cat([x, b], 1), torch.cat([threshold, tb], 1)))
    with pytest.raises(ValueError, match="not a multiple of 32"):
        concat_packed([hk.binarize_pack(b), hk.binarize_pack(x)], [33, 64])


def test_pair_mean_of_concat_is_bit_identical():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, 5, 7, generator=g) * torch.exp(20 * torch.randn(3, 64, 5, 7, generator=g))
    x[0, :2, 0, 0] = torch.tensor([1e-44, 3e-45])  # subnormals: halving must round like the mean does
    for split in (30, 31):  # pairs aligned with the parts, and a pair straddling them
        assert torch.equal(pair_mean_of_concat(x[:, :split], x[:, split:]), channel_pair_mean(x))


# ---------------------------------------------------------------------------------------------
# Frozen refiner vs the training form


@pytest.mark.parametrize(
    ("channels", "num_classes", "xformer"),
    [(32, 1, True), (24, 1, True), (32, 2, False)],
    ids=["C32-words", "C24-partial-words", "C32-no-xformer-K2"],
)
def test_frozen_binary_refiner_matches_eval(channels, num_classes, xformer):
    """C = 32 packs every concatenation part by part (all widths are multiples of 32); C = 24 has
    widths 24 and 48 that fall back to packing the float concatenation."""
    refiner = make_refiner(channels, True, num_classes, xformer)
    frozen = freeze(refiner, TIMESTEPS)
    batch = 4
    inputs = make_inputs(refiner, batch=batch, seed=channels)
    bits_ref, margins, bits_frozen, eps_ref, eps_frozen = binarised_inputs(refiner, frozen, inputs)
    assert list(bits_ref) and set(bits_ref) == set(bits_frozen)
    flipped = total = 0
    diverged = []
    for n in range(batch):
        first = next((k for k in bits_ref if not torch.equal(bits_ref[k][n], bits_frozen[k][n])), None)
        total += sum(v[n].numel() for v in bits_ref.values())
        flipped += sum(int((bits_ref[k][n] != bits_frozen[k][n]).sum()) for k in bits_ref)
        if first is None:
            torch.testing.assert_close(eps_frozen[n], eps_ref[n], atol=TIE, rtol=0)
        else:
            # The divergence must start at a rounding tie, not at a structural difference.
            differ = bits_ref[first][n] != bits_frozen[first][n]
            assert margins[first][n][differ].abs().max() < TIE, f"sample {n}: {first} differs beyond a tie"
            diverged.append(n)
    assert len(diverged) <= 1, f"samples {diverged} diverged ({flipped} of {total} binarised activations)"
    assert eps_frozen.shape == eps_ref.shape and eps_frozen.dtype == torch.float32


@pytest.mark.parametrize("residual", [False, True], ids=["direct", "residual"])
def test_frozen_real_refiner_matches_eval(residual):
    refiner = make_refiner(32, binary=False)
    if residual:  # the residual output around the prior-only denoiser, with its per-timestep flip scales
        refiner.prior_flip_rates = tuple(0.05 + 0.09 * t for t in range(10))
    frozen = freeze(refiner, TIMESTEPS)
    assert frozen.prior_flip_rates == refiner.prior_flip_rates
    assert FrozenBBDM.from_state_dict(frozen.state_dict()).prior_flip_rates == refiner.prior_flip_rates
    assert not any(isinstance(m, FusedBinaryConv2d) for m in frozen.modules())
    inputs = make_inputs(refiner, batch=2)
    with torch.inference_mode():
        torch.testing.assert_close(frozen(*inputs), refiner(*inputs), atol=1e-4, rtol=0)


def test_step_tables_equal_the_time_linears_on_the_fly():
    refiner = make_refiner(32)
    frozen = freeze(refiner, (9, 7, 5, 2, 0))
    blocks = {name: m for name, m in frozen.named_modules() if isinstance(m, FrozenBlock) and "fuse" not in name}
    assert len(blocks) == 25  # block1-5, down1-5, concat1-3 blocks, mid1-2, up1-5, merge1-5
    with torch.no_grad():
        for row, t in enumerate(frozen.frozen_timesteps):
            emb = refiner.time_embed(torch.tensor([t]))
            e = F.silu(emb)
            for name, block in blocks.items():
                original = refiner.get_submodule(name)
                torch.testing.assert_close(block.threshold[row], original.tb.threshold(emb)[0], atol=1e-6, rtol=0)
                gamma, zeta = original.ta.shifts(e)[0].chunk(2)
                torch.testing.assert_close(block.gamma[row], gamma, atol=1e-6, rtol=0)
                torch.testing.assert_close(block.zeta[row], zeta, atol=1e-6, rtol=0)
            for name in ("concat1", "concat2", "concat3", "fuse"):
                scale, shift = refiner.get_submodule(name).condition.film(emb)[0].chunk(2)
                condition = frozen.get_submodule(name).condition
                torch.testing.assert_close(condition.film_scale[row], 1 + scale, atol=1e-6, rtol=0)
                torch.testing.assert_close(condition.film_shift[row], shift, atol=1e-6, rtol=0)
            xformer, frozen_xformer = refiner.fuse, frozen.fuse
            assert isinstance(frozen_xformer, FrozenXFormer)
            torch.testing.assert_close(
                frozen_xformer.attn2.shift_v[row], xformer.attn2.tb_v.threshold(emb)[0], atol=1e-6, rtol=0
            )
            torch.testing.assert_close(
                frozen_xformer.ffn1.local_scales[3].shift[row],
                xformer.ffn1.local_scales[3].shift(e)[0],
                atol=1e-6,
                rtol=0,
            )
            torch.testing.assert_close(
                frozen_xformer.proj2.unit.threshold[row], xformer.proj2.unit.tb.threshold(emb)[0], atol=1e-6, rtol=0
            )
    image, y_t, prior, _, features = make_inputs(refiner, batch=2)
    with torch.inference_mode():
        assert frozen(image, y_t, prior, 7, features).shape == y_t.shape
        with pytest.raises(ValueError, match=r"t=\[3\] is not one of the frozen timesteps"):
            frozen(image, y_t, prior, torch.tensor([7, 3]), features)
        with pytest.raises(ValueError, match="t must have shape"):
            frozen(image, y_t, prior, torch.tensor([7, 7, 7]), features)


def test_condition_cache_is_reused_across_steps():
    refiner = make_refiner(32)
    frozen = freeze(refiner, TIMESTEPS)
    image, y_t, prior, _, features = make_inputs(refiner, batch=2)
    y_other = 1 - y_t
    with torch.inference_mode():
        cache = frozen.prepare(image, features)
        cached = [cache.image_term, *(t for pair in cache.conditions.values() for t in pair)]
        saved = [t.clone() for t in cached]
        first = frozen.step(cache, y_t, prior, torch.tensor([9, 9]))
        second = frozen.step(cache, y_other, prior, torch.tensor([4, 2]))
        assert torch.equal(first, frozen(image, y_t, prior, torch.tensor([9, 9]), features))
        assert torch.equal(second, frozen(image, y_other, prior, torch.tensor([4, 2]), features))
        assert not torch.equal(first, second)
        assert all(torch.equal(a, b) for a, b in zip(saved, cached, strict=True))  # steps do not modify the cache
        with pytest.raises(ValueError, match="y_t must have shape"):
            frozen.step(cache, y_t[:1], prior, 9)
        with pytest.raises(ValueError, match=r"features\[2\] must have shape"):
            frozen.prepare(image, [*features[:2], features[3], features[3]])


def _nbytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))


def test_state_dict_is_compact_and_reloads():
    refiner = make_refiner(32)
    frozen = freeze(refiner, (9, 4, 0))
    state = frozen.state_dict()
    # 1 bit per binary weight and S = 3 table rows instead of the time linears' weights.
    assert _nbytes(state) < _nbytes(refiner.state_dict()) / 4
    assert not any(p.requires_grad for p in frozen.parameters())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    reloaded = FrozenBBDM.from_state_dict(loaded)
    shell = FrozenBBDM.from_config(frozen.config)
    shell.load_state_dict(loaded)
    inputs = make_inputs(refiner, batch=2, t=[9, 0])
    with torch.inference_mode():
        expected = frozen(*inputs)
        assert torch.equal(reloaded(*inputs), expected)
        assert torch.equal(shell(*inputs), expected)
    other = FrozenBBDM.from_config({**frozen.config, "timesteps": [9, 4, 1]})
    with pytest.raises(ValueError, match="config"):
        other.load_state_dict(loaded)
    with pytest.raises(ValueError, match="_extra_state"):
        FrozenBBDM.from_state_dict({k: v for k, v in loaded.items() if k != "_extra_state"})


def test_freeze_rejects_bad_timesteps():
    refiner = make_refiner(32)
    for bad in ([], [3, 3], [1.5], [-1]):
        with pytest.raises(ValueError, match="timesteps"):
            freeze(refiner, bad)
    with pytest.raises(TypeError, match="refiner must be a BBDM"):
        freeze(nn.Linear(2, 2), [0])


# ---------------------------------------------------------------------------------------------
# HiDiff integration


def test_hidiff_refinement_with_the_frozen_refiner():
    """Same masks for a fixed seed. The Bernoulli draws compare uniforms with eps_hat-derived means,
    so they match as long as no binarised activation flips at a rounding tie (see the module
    docstring); for this seed none does, and the refined maps agree to float rounding."""
    torch.manual_seed(0)
    segmentor = UNet(in_channels=3, num_classes=1, base_channels=4)
    refiner = randomize(BBDM(3, 1, model_channels=32, cond_channels=segmentor.feature_channels))
    model = HiDiff(segmentor, refiner, BernoulliDiffusion(num_steps=10)).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    frozen = model.freeze(steps=3)
    assert frozen.frozen_timesteps == model.diffusion.timesteps(3)
    with torch.inference_mode():
        y0_hat = model.refine(x, steps=3, samples=2, seed=5)
        y0_frozen = model.refine(x, steps=3, samples=2, seed=5, frozen=frozen)
        torch.testing.assert_close(y0_frozen, y0_hat, atol=1e-5, rtol=0)
        mask = model.segment(x, steps=3, samples=2, seed=5, frozen=frozen)
        assert torch.equal(mask, model.diffusion.to_mask(y0_hat))
        # The cache is built once per refinement: equal to driving the sampler with full forwards.
        prior, features = model.prior(x)
        direct = model.diffusion.sample(
            lambda y_t, t: frozen(x, y_t, prior, t, features), prior, steps=3, samples=2, seed=5
        )
        assert torch.equal(y0_frozen, direct)
        with pytest.raises(ValueError, match=r"no tables for the timesteps \[2, 7\]"):
            model.refine(x, steps=5, frozen=frozen)


def test_avg_pool2x2_is_bit_identical_to_avg_pool2d():

    x = torch.randn(2, 5, 12, 10)
    assert torch.equal(avg_pool2x2(x), torch.nn.functional.avg_pool2d(x, 2))


def test_prior_share_cached_by_prepare():
    refiner = make_refiner(32)
    frozen = freeze(refiner, TIMESTEPS)
    image, y_t, prior, _, features = make_inputs(refiner, batch=2)
    t = torch.tensor([9, 4])
    with torch.inference_mode():
        with_prior = frozen.prepare(image, features, prior)
        assert torch.equal(
            frozen.step(with_prior, y_t, prior, t), frozen.step(frozen.prepare(image, features), y_t, prior, t)
        )
        with pytest.raises(ValueError, match="prior must be the prior given to prepare"):
            frozen.step(with_prior, y_t, 1 - prior, t)
        with pytest.raises(ValueError, match="prior must have shape"):
            frozen.prepare(image, features, prior[:1])


def test_upsample2x_is_nearest_interpolation():

    x = torch.randn(2, 3, 5, 4)
    want = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    assert torch.equal(upsample2x(x), want)
    out = torch.empty(2, 3, 10, 8)
    assert upsample2x(x, out) is out and torch.equal(out, want)
