"""Tests of hidiff.models: the BBDM refiner (binary and real), the X-Former, segmentors and HiDiff."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hidiff_kernels
from hidiff.models import (
    BBDM,
    SEGMENTORS,
    HiDiff,
    MeritSegmentor,
    TimmSegmentor,
    UNet,
    XFormer,
    build_segmentor,
    prior_from_logits,
)
from hidiff.models.layers import BinaryBlock, DownBlock, channel_pair_mean, timestep_embedding
from hidiff.models.xformer import (
    CenteredBinaryLinear,
    LayerScale,
    binarized_attention,
    map_to_tokens,
    tokens_to_map,
)
from hidiff_kernels.nn import BinaryConv2d, BinaryLinear, packed_kernels

COND = (16, 24, 32, 48)
SIZE = 64


@pytest.fixture(autouse=True)
def _single_thread():
    """These models are tiny: one intra-op thread avoids thread-pool contention on a busy machine
    (measured 20x slower with two threads while other jobs share the cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_inputs(refiner: BBDM, batch: int = 2, size: int = SIZE, seed: int = 1):
    """(image, y_t, prior, t, features) for ``refiner`` at ``size`` x ``size``."""
    g = torch.Generator().manual_seed(seed)
    k = refiner.num_classes
    features = [
        torch.randn(batch, c, size // s, size // s, generator=g)
        for c, s in zip(refiner.cond_channels, (4, 8, 16, 32), strict=True)
    ]
    image = torch.randn(batch, refiner.image_channels, size, size, generator=g)
    y_t = torch.randint(0, 2, (batch, k, size, size), generator=g).float()
    prior = torch.rand(batch, k, size, size, generator=g)
    t = torch.randint(0, 10, (batch,), generator=g)
    return image, y_t, prior, t, features


def randomize_zero_init(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Replaces every all-zero parameter (zero-initialised head, time shifts, LayerScale, ...) by noise,
    so that every path of the network affects the output."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return model


def small_refiner(num_classes: int = 1, binary: bool = True, **kwargs) -> BBDM:
    return BBDM(3, num_classes, model_channels=32, cond_channels=COND, binary=binary, **kwargs)


# ---------------------------------------------------------------------------------------------
# Parameter count (construction only, on the meta device)


def test_parameter_count_matches_public_refiner():
    with torch.device("meta"):
        binary = BBDM(3, 1)
        real = BBDM(3, 1, binary=False)
    counts = binary.parameter_breakdown()
    # Public code, C = 128, K = 1, conditions (96, 192, 384, 768): 89.18 M parameters, of which
    # 38.73 M binarisable weights (32.44 M conv + 6.29 M linear).
    assert abs(counts["total"] - 89.18e6) / 89.18e6 < 0.01
    assert abs(counts["binary_conv"] - 32.44e6) / 32.44e6 < 1e-3
    assert abs(counts["binary_linear"] - 6.29e6) / 6.29e6 < 1e-3
    assert abs(counts["binary_conv"] + counts["binary_linear"] - 38.73e6) / 38.73e6 < 1e-3
    assert sum(p.numel() for p in real.parameters()) == counts["total"]
    assert real.parameter_breakdown()["binary_conv"] == 0


# ---------------------------------------------------------------------------------------------
# Refiner forward: shapes, range, init


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_refiner_output_shape_and_range(binary, num_classes):
    refiner = small_refiner(num_classes, binary)
    inputs = make_inputs(refiner)
    with torch.no_grad():
        assert torch.equal(refiner(*inputs), torch.full((2, num_classes, SIZE, SIZE), 0.5))
        randomize_zero_init(refiner)
        eps_hat = refiner(*inputs)
    assert eps_hat.shape == (2, num_classes, SIZE, SIZE) and eps_hat.dtype == torch.float32
    assert eps_hat.min() > 0 and eps_hat.max() < 1
    assert eps_hat.std() > 1e-3  # the randomised network is not constant


def test_refiner_without_xformer_and_scalar_t():
    refiner = randomize_zero_init(small_refiner(2, xformer=False))
    image, y_t, prior, _, features = make_inputs(refiner)
    assert not any(isinstance(m, XFormer) for m in refiner.modules())
    with torch.no_grad():
        out = refiner(image, y_t, prior, torch.tensor(4), features)
        same = refiner(image, y_t, prior, torch.tensor([4, 4]), features)
    assert out.shape == (2, 2, SIZE, SIZE)
    assert torch.equal(out, same)


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0, 3])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(1e4)) * torch.arange(4) / 4)
    assert torch.allclose(emb[1, :4], torch.cos(3 * freqs)) and torch.allclose(emb[1, 4:], torch.sin(3 * freqs))
    assert torch.equal(emb[0], torch.cat([torch.ones(4), torch.zeros(4)]))


def test_channel_pair_mean_averages_adjacent_channels():
    x = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).reshape(2, 6, 2, 2)
    out = channel_pair_mean(x)
    assert torch.equal(out[:, 1], (x[:, 2] + x[:, 3]) / 2)


# ---------------------------------------------------------------------------------------------
# X-Former


def test_tokens_to_map_transposes():
    b, c, h, w = 2, 5, 3, 4
    x = torch.randn(b, c, h, w)
    tokens = map_to_tokens(x)
    assert tokens.shape == (b, h * w, c)
    assert torch.equal(tokens[1, 2 * w + 3], x[1, :, 2, 3])
    assert torch.equal(tokens_to_map(tokens, h, w), x)
    # The public code's tokens.reshape(B, C, H, W) scrambles channels and positions.
    assert not torch.equal(tokens.reshape(b, c, h, w), x)


@pytest.mark.parametrize("binary", [True, False])
def test_xformer_is_identity_at_init_and_layerscale_is_zero(binary):
    dim, emb_dim = 64, 32
    xformer = XFormer(48, dim, emb_dim, binary=binary)
    h, feature, emb = torch.randn(2, dim, 2, 3), torch.randn(2, 48, 2, 3), torch.randn(2, emb_dim)
    scale = LayerScale(dim, emb_dim)
    assert torch.equal(scale(torch.randn(2, 6, dim), emb), torch.zeros(2, 6, dim))
    # Every branch ends in a zero-initialised LayerScale, so the diffusion stream passes unchanged,
    # which needs the (B, N, C) -> (B, C, H, W) transpose (a plain reshape fails here).
    assert torch.equal(xformer(h, feature, emb), h)
    randomize_zero_init(xformer)
    assert not torch.allclose(xformer(h, feature, emb), h)


def test_centered_binary_linear_packed_matches_float_and_tracks_updates():
    layer = CenteredBinaryLinear(70, 33).eval()
    x, threshold = torch.randn(2, 5, 70), 0.1 * torch.randn(2, 70)
    centred = layer.weight - layer.weight.mean(dim=1, keepdim=True)
    sign = lambda v: torch.where(v > 0, 1.0, -1.0)  # noqa: E731
    shifted = x - threshold[:, None, :]
    expected = F.linear(sign(shifted), sign(centred)) * centred.abs().mean(dim=1) + layer.bias
    with torch.no_grad():
        packed = layer(x, threshold)
        with packed_kernels(False):
            simulated = layer(x, threshold)
    torch.testing.assert_close(packed, expected.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(simulated, expected.detach(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        layer.weight.mul_(-1)  # in-place update: the packed cache must notice
        torch.testing.assert_close(layer(x, threshold), -expected.detach() + 2 * layer.bias, rtol=1e-6, atol=1e-6)


def test_binarized_attention_forward_and_softmax_gradient():
    scores = torch.randn(2, 4, 5, 7, requires_grad=True)
    probs = binarized_attention(scores)
    row_max = scores.detach().amax(-1, keepdim=True)
    assert torch.equal(probs, (scores.detach() > 0.35 * row_max).float())
    with torch.no_grad():
        assert torch.equal(binarized_attention(scores), probs)
    weights = torch.randn_like(probs)
    (probs * weights).sum().backward()
    reference = scores.detach().clone().requires_grad_(True)
    (torch.softmax(reference, -1) * weights).sum().backward()
    torch.testing.assert_close(scores.grad, reference.grad)


# ---------------------------------------------------------------------------------------------
# Gradients, topology, packed path


@pytest.mark.parametrize("binary", [True, False])
def test_gradients_reach_parameters_prior_and_features(binary):
    refiner = randomize_zero_init(small_refiner(2, binary))
    image, y_t, prior, t, features = make_inputs(refiner)
    prior.requires_grad_(True)
    for f in features:
        f.requires_grad_(True)
    refiner(image, y_t, prior, t, features).square().sum().backward()
    assert prior.grad is not None and prior.grad.abs().sum() > 0
    for i, f in enumerate(features):
        assert f.grad is not None and f.grad.abs().sum() > 0, f"no gradient reaches features[{i}]"
    missing = [n for n, p in refiner.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"parameters without gradient: {missing}"


def test_binary_and_real_refiners_have_the_same_topology():
    binary, real = small_refiner(binary=True), small_refiner(binary=False)
    pairs = {(BinaryConv2d, nn.Conv2d), (CenteredBinaryLinear, nn.Linear)}
    binary_modules, real_modules = dict(binary.named_modules()), dict(real.named_modules())
    assert list(binary_modules) == list(real_modules)
    swapped = 0
    for name, module in binary_modules.items():
        other = type(real_modules[name])
        if type(module) is not other:
            assert (type(module), other) in pairs, f"{name}: {type(module).__name__} vs {other.__name__}"
            swapped += 1
    assert swapped == sum(isinstance(m, (BinaryConv2d, BinaryLinear)) for m in binary.modules()) > 0
    real.load_state_dict(binary.state_dict())  # same keys and shapes: checkpoints are interchangeable


def test_eval_packed_path_matches_float_path(monkeypatch):
    refiner = randomize_zero_init(small_refiner(2, binary=True))
    inputs = make_inputs(refiner)
    with torch.no_grad():
        refiner(*inputs)  # one training-mode pass: non-trivial BatchNorm running statistics
    refiner.eval()
    calls = []

    def counting(original):
        def wrapper(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(hidiff_kernels.ops, "binary_conv2d", counting(hidiff_kernels.ops.binary_conv2d))
    monkeypatch.setattr(hidiff_kernels, "binary_conv2d", counting(hidiff_kernels.binary_conv2d))
    with torch.no_grad():
        packed = refiner(*inputs)
    binary_layers = sum(isinstance(m, (BinaryConv2d, BinaryLinear)) for m in refiner.modules())
    assert len(calls) == binary_layers  # every binary layer ran the packed kernel
    calls.clear()
    with torch.no_grad(), packed_kernels(False):
        simulated = refiner(*inputs)
    assert not calls
    # Both paths count +-1 products exactly (float32 sums of +-1 are exact below 2^24); they differ
    # only in the rounding of the per-channel affine (alpha, bias), ~1 ulp, which a sign decision
    # downstream would turn into an O(1) difference only if a value fell within an ulp of its
    # threshold. 1e-5 is ~100 ulp of values in (0, 1) and 4 orders below the output's spread.
    assert simulated.std() > 1e-2
    torch.testing.assert_close(packed, simulated, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Refiner errors


def test_refiner_input_errors():
    refiner = small_refiner(1)
    image, y_t, prior, t, features = make_inputs(refiner)
    with pytest.raises(ValueError, match="divisible by 32"):
        small = make_inputs(refiner, size=48)
        refiner(*small)
    with pytest.raises(ValueError, match="image must be"):
        refiner(image[:, :2], y_t, prior, t, features)
    with pytest.raises(ValueError, match="y_t must have shape"):
        refiner(image, torch.cat([y_t, y_t], 1), prior, t, features)
    with pytest.raises(ValueError, match="prior must have shape"):
        refiner(image, y_t, prior[:1], t, features)
    with pytest.raises(ValueError, match="t must have shape"):
        refiner(image, y_t, prior, t[:1], features)
    with pytest.raises(TypeError, match="t must be an int or a tensor"):
        refiner(image, y_t, prior, "3", features)
    with pytest.raises(ValueError, match="list of 4"):
        refiner(image, y_t, prior, t, features[:3])
    with pytest.raises(ValueError, match=r"features\[1\] must have shape"):
        refiner(image, y_t, prior, t, [features[0], features[1][:, :5], *features[2:]])
    with pytest.raises(ValueError, match=r"features\[3\] must have shape"):
        refiner(image, y_t, prior, t, [*features[:3], F.avg_pool2d(features[3], 2)])


def test_constructor_errors():
    with pytest.raises(ValueError, match="cond_channels"):
        BBDM(3, 1, model_channels=32, cond_channels=(16, 24, 32))
    with pytest.raises(ValueError, match="num_classes"):
        BBDM(3, 0, model_channels=32)
    with pytest.raises(ValueError, match="in_channels must equal out_channels or twice"):
        BinaryBlock(48, 32, 16)
    with pytest.raises(ValueError, match="out_channels must equal in_channels or twice"):
        DownBlock(16, 64, 16)


# ---------------------------------------------------------------------------------------------
# Segmentors


def test_unet_shapes_and_feature_strides():
    unet = UNet(in_channels=2, num_classes=3, base_channels=8)
    logits, features = unet(torch.randn(2, 2, SIZE, SIZE))
    assert logits.shape == (2, 3, SIZE, SIZE)
    assert unet.feature_channels == (32, 64, 64, 64) and unet.in_channels == 2 and unet.num_classes == 3
    assert len(features) == 4
    for f, c, s in zip(features, unet.feature_channels, (4, 8, 16, 32), strict=True):
        assert f.shape == (2, c, SIZE // s, SIZE // s)
    with pytest.raises(ValueError, match="divisible by 32"):
        unet(torch.randn(1, 2, 40, 64))
    with pytest.raises(ValueError, match="x must be"):
        unet(torch.randn(1, 3, SIZE, SIZE))


def test_prior_from_logits():
    logits = torch.randn(2, 1, 4, 4)
    assert torch.equal(prior_from_logits(logits), torch.sigmoid(logits))
    multi = prior_from_logits(torch.randn(2, 4, 4, 4))
    torch.testing.assert_close(multi.sum(1), torch.ones(2, 4, 4))


def test_build_segmentor():
    unet = build_segmentor("unet", in_channels=1, num_classes=2, base_channels=8)
    assert isinstance(unet, UNet) and (unet.in_channels, unet.num_classes) == (1, 2)
    assert isinstance(build_segmentor(" UNet ", 3, 1), UNet)
    assert set(SEGMENTORS) == {"unet", "merit"} and SEGMENTORS["merit"].fixed_size


@pytest.mark.parametrize("name", ["segformer", "timm:", "", 3])
def test_build_segmentor_unknown_name_lists_the_known_ones(name):
    with pytest.raises(ValueError, match=r"segmentor.*'unet', 'merit', 'timm:<backbone>'"):
        build_segmentor(name, in_channels=3, num_classes=1)


def test_merit_segmentor_contract():
    merit = build_segmentor("merit", in_channels=1, num_classes=2, image_size=SIZE).eval()
    assert isinstance(merit, MeritSegmentor)
    assert (merit.in_channels, merit.num_classes, merit.feature_channels) == (1, 2, (96, 192, 384, 768))
    image = torch.randn(1, 1, SIZE, SIZE)
    with torch.no_grad():
        logits, features = merit(image)
        torch.testing.assert_close(logits, merit.merit(image), rtol=0, atol=0)  # the wrapper adds no computation
    assert logits.shape == (1, 2, SIZE, SIZE)
    for f, c, s in zip(features, merit.feature_channels, (4, 8, 16, 32), strict=True):
        assert f.shape == (1, c, SIZE // s, SIZE // s)


class _FakeFeatureInfo:
    def __init__(self, reductions, channels):
        self._reductions, self._channels = reductions, channels

    def reduction(self):
        return list(self._reductions)

    def channels(self):
        return list(self._channels)


class _FakeFeatureNet(nn.Module):
    """Stands in for a timm ``features_only`` CNN: levels at strides 2..32, the last one NHWC (like Swin)."""

    def __init__(self, in_chans):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 4, 3, stride=2, padding=1)
        self.stages = nn.ModuleList(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1) for c in (4, 8, 16, 32))
        self.feature_info = _FakeFeatureInfo((2, 4, 8, 16, 32), (4, 8, 16, 32, 64))

    def forward(self, x):
        outs = [self.stem(x)]
        for stage in self.stages:
            outs.append(stage(outs[-1]))
        outs[-1] = outs[-1].permute(0, 2, 3, 1)
        return outs


def _fake_timm():
    module = types.ModuleType("timm")
    created = []

    def create_model(name, features_only, pretrained, in_chans, **kwargs):
        assert features_only and not pretrained and not kwargs
        created.append(name)
        return _FakeFeatureNet(in_chans)

    module.create_model = create_model
    module.created = created
    return module


def test_timm_segmentor_adapter_with_fake_timm(monkeypatch, tmp_path):
    fake = _fake_timm()
    monkeypatch.setitem(sys.modules, "timm", fake)
    checkpoint = tmp_path / "backbone.pt"
    reference = _FakeFeatureNet(3)
    torch.save({"state_dict": {**reference.state_dict(), "head.weight": torch.zeros(3)}}, checkpoint)
    seg = build_segmentor("timm:fakenet", in_channels=3, num_classes=2, pretrained_path=checkpoint, decoder_channels=16)
    assert isinstance(seg, TimmSegmentor) and fake.created == ["fakenet"]
    assert torch.equal(seg.backbone.stem.weight, reference.stem.weight)
    assert seg.feature_channels == (8, 16, 32, 64)
    logits, features = seg(torch.randn(1, 3, SIZE, SIZE))
    assert logits.shape == (1, 2, SIZE, SIZE)
    for f, c, s in zip(features, seg.feature_channels, (4, 8, 16, 32), strict=True):
        assert f.shape == (1, c, SIZE // s, SIZE // s)
    with pytest.raises(ValueError, match="never downloads"):
        TimmSegmentor("fakenet", 3, 1, pretrained=True)
    with pytest.raises(FileNotFoundError):
        TimmSegmentor("fakenet", 3, 1, pretrained_path=tmp_path / "missing.pt")


def test_timm_segmentor_missing_timm_explains_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install \.\[timm\]"):
        build_segmentor("timm:resnet18", 3, 1)


def test_timm_segmentor_with_real_timm():
    pytest.importorskip("timm")
    seg = TimmSegmentor("resnet18", in_channels=3, num_classes=1)
    logits, features = seg(torch.randn(1, 3, SIZE, SIZE))
    assert logits.shape == (1, 1, SIZE, SIZE)
    assert [f.shape[-1] for f in features] == [SIZE // s for s in (4, 8, 16, 32)]


# ---------------------------------------------------------------------------------------------
# HiDiff


def _hidiff(num_classes: int = 1):
    from hidiff.diffusion import BernoulliDiffusion

    segmentor = UNet(in_channels=3, num_classes=num_classes, base_channels=8)
    refiner = BBDM(3, num_classes, model_channels=32, cond_channels=segmentor.feature_channels)
    return HiDiff(segmentor, refiner, BernoulliDiffusion(num_steps=10))


def test_hidiff_prior_loss_and_segmentation():
    model = _hidiff(num_classes=2)
    randomize_zero_init(model.refiner)
    x = torch.randn(2, 3, SIZE, SIZE)
    prior, features = model.prior(x)
    assert prior.shape == (2, 2, SIZE, SIZE) and len(features) == 4
    y0 = F.one_hot(torch.randint(0, 2, (2, SIZE, SIZE)), 2).permute(0, 3, 1, 2).float()
    loss = model.diffusion_loss(x, y0, t=torch.tensor([0, 5]))
    loss.total.backward()
    # L_Diff reaches the segmentor through the prior and the features (alternate training, step 2).
    seg_grads = [p.grad for p in model.segmentor.parameters()]
    assert all(g is not None for g in seg_grads) and any(g.any() for g in seg_grads)
    model.eval()
    y0_hat = model.refine(x, steps=3, seed=0)
    assert y0_hat.shape == (2, 2, SIZE, SIZE) and 0 <= y0_hat.min() and y0_hat.max() <= 1
    mask = model.segment(x, steps=3, seed=0)
    assert torch.equal(mask.sum(1), torch.ones(2, SIZE, SIZE))
    assert torch.equal(model.segment(x, refine=False), model.diffusion.to_mask(model.prior(x)[0]))


def test_hidiff_checks_compatibility():
    from hidiff.diffusion import BernoulliDiffusion

    segmentor = UNet(in_channels=3, num_classes=1, base_channels=8)
    diffusion = BernoulliDiffusion(num_steps=10)
    with pytest.raises(ValueError, match="cond_channels"):
        HiDiff(segmentor, BBDM(3, 1, model_channels=32, cond_channels=COND), diffusion)
    with pytest.raises(ValueError, match="num_classes"):
        HiDiff(segmentor, BBDM(3, 2, model_channels=32, cond_channels=segmentor.feature_channels), diffusion)
    with pytest.raises(ValueError, match="image_channels"):
        HiDiff(segmentor, BBDM(1, 1, model_channels=32, cond_channels=segmentor.feature_channels), diffusion)
    with pytest.raises(TypeError, match="diffusion must have"):
        HiDiff(segmentor, BBDM(3, 1, model_channels=32, cond_channels=segmentor.feature_channels), object())


def test_residual_refiner_starts_as_the_prior_only_bayes_denoiser():
    """With the zero-initialised head, the residual output is exactly (1 - abar_t) |y_t - p| (clamped)."""
    from hidiff.diffusion import BernoulliDiffusion, prior_flip_rate
    from hidiff.models.layers import PRIOR_RATE_FLOOR

    diffusion = BernoulliDiffusion(num_steps=10)
    torch.manual_seed(0)
    segmentor = UNet(3, 1, base_channels=4)
    refiner = BBDM(
        3, 1, model_channels=32, cond_channels=segmentor.feature_channels, prior_flip_rates=diffusion.flip_scales
    ).eval()
    image = torch.rand(2, 3, 64, 64)
    prior = torch.rand(2, 1, 64, 64)
    y_t = (torch.rand(2, 1, 64, 64) < 0.5).float()
    t = torch.tensor([0, 9])
    _, features = segmentor(image)
    with torch.no_grad():
        eps_hat = refiner(image, y_t, prior, t, features)
    expected = prior_flip_rate(y_t, prior, (1 - diffusion.alphas_cumprod[t]).float())
    torch.testing.assert_close(eps_hat, expected.clamp(PRIOR_RATE_FLOOR, 1 - PRIOR_RATE_FLOOR), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="prior_flip_rates"):
        refiner(image, y_t, prior, torch.tensor([0, 10]), features)
    with pytest.raises(ValueError, match="prior_flip_rates"):
        BBDM(3, 1, model_channels=32, cond_channels=segmentor.feature_channels, prior_flip_rates=[1.5])
