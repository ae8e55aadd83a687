"""Binary layers: STE gradients, packed vs straight-through paths, binarize() as a drop-in."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hidiff_kernels.nn as hnn
from hidiff_kernels import ops, reference


def test_approx_sign_gradient_matches_reference_autograd():
    x = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64).requires_grad_()
    ours = torch.autograd.grad(hnn.ApproxSign.apply(x).mul(torch.arange(301.0)).sum(), x)[0]
    theirs = torch.autograd.grad(reference.approx_sign_ste(x).mul(torch.arange(301.0)).sum(), x)[0]
    torch.testing.assert_close(ours, theirs)
    assert torch.equal(hnn.ApproxSign.apply(x), reference.sign_pm1(x))


def test_weight_sign_gradient_matches_reference_autograd():
    w = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.7, 1.0, 1.2], requires_grad=True)
    ours = torch.autograd.grad(hnn.WeightSign.apply(w).sum(), w)[0]
    theirs = torch.autograd.grad(reference.weight_sign_ste(w).sum(), w)[0]
    assert torch.equal(ours, theirs)
    assert ours.tolist() == [0, 1, 1, 1, 1, 1, 0]


def test_binary_conv2d_gradients_match_reference_formulation():
    layer = hnn.BinaryConv2d(12, 6, 3, stride=2, padding=1, learnable_threshold=True)
    with torch.no_grad():
        layer.threshold.normal_(0, 0.1)
    x = torch.randn(2, 12, 7, 7, requires_grad=True)
    target = torch.randn(2, 6, 4, 4)

    def reference_forward(x, weight, bias, threshold):
        xb = reference.approx_sign_ste(x - threshold.view(1, -1, 1, 1))
        wb = reference.weight_sign_ste(weight)
        alpha = weight.detach().abs().mean((1, 2, 3))
        return F.conv2d(xb, wb, None, 2, 1) * alpha.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)

    params = [x, layer.weight, layer.bias, layer.threshold]
    ours = torch.autograd.grad(F.mse_loss(layer(x), target), params)
    theirs = torch.autograd.grad(F.mse_loss(reference_forward(*params), target), params)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=45, out_channels=20, kernel_size=3, stride=2, padding=1),
        dict(in_channels=33, out_channels=7, kernel_size=(3, 1), padding=(1, 0), dilation=2, bias=False),
        dict(in_channels=45, out_channels=20, kernel_size=3, padding="same", groups=5),
        dict(in_channels=8, out_channels=16, kernel_size=1, padding="valid", learnable_threshold=True),
    ],
)
def test_conv_packed_and_straight_through_paths_agree(kwargs, isa):
    layer = hnn.BinaryConv2d(**kwargs)
    if layer.threshold is not None:
        with torch.no_grad():
            layer.threshold.normal_(0, 0.2)
    x = torch.randn(2, kwargs["in_channels"], 9, 8)
    external = torch.randn(2, kwargs["in_channels"]) * 0.1
    for threshold in (None, external):
        train_out = layer.train()(x, threshold)
        with torch.no_grad():
            packed_out = layer.eval()(x, threshold)
        torch.testing.assert_close(packed_out, train_out, rtol=1e-6, atol=1e-6)


def test_eval_under_no_grad_uses_packed_kernels(monkeypatch):
    calls = []
    original = ops.binary_conv2d
    monkeypatch.setattr(ops, "binary_conv2d", lambda *a, **k: calls.append(1) or original(*a, **k))
    layer = hnn.BinaryConv2d(16, 8, 3, padding=1).eval()
    x = torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        layer(x)
    assert len(calls) == 1
    layer(x.requires_grad_())  # autograd needed: straight-through path, same values
    assert len(calls) == 1


def test_packed_weights_follow_weight_updates():
    layer = hnn.BinaryConv2d(16, 8, 3, padding=1).eval()
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        before = layer(x)
        layer.weight.neg_()
        after = layer(x)
    torch.testing.assert_close(after, -before + 2 * layer.bias.view(1, -1, 1, 1))
    fresh = hnn.BinaryConv2d(16, 8, 3, padding=1)
    layer.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        reloaded = layer(x)
        torch.testing.assert_close(reloaded, fresh.eval()(x))


def test_binary_linear_paths_agree_with_per_sample_threshold(isa):
    layer = hnn.BinaryLinear(70, 33)
    x = torch.randn(3, 5, 70)
    threshold = torch.randn(3, 70) * 0.2
    train_out = layer(x, threshold)
    with torch.no_grad():
        packed_out = layer.eval()(x, threshold)
    assert packed_out.shape == (3, 5, 33)
    torch.testing.assert_close(packed_out, train_out, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x.view(15, 70)), layer.train()(x.view(15, 70)), rtol=1e-6, atol=1e-6)


def test_binary_linear_matches_definition():
    linear = nn.Linear(40, 6)
    layer = hnn.BinaryLinear.from_linear(linear).eval()
    x = torch.randn(4, 40)
    alpha = linear.weight.abs().mean(1)
    expected = F.linear(reference.sign_pm1(x), reference.sign_pm1(linear.weight)) * alpha + linear.bias
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)


def test_time_binarize_and_activation_modules():
    tb = hnn.TimeBinarize(6, embed_dim=16)
    ta = hnn.TimeActivation(6, embed_dim=16)
    emb = torch.randn(2, 16)
    x = torch.randn(2, 6, 4, 4)
    # Zero-initialised projections: threshold 0 and an RPReLU with slope 0.25 at t = 0.
    assert torch.equal(tb.threshold(emb), torch.zeros(2, 6))
    assert torch.equal(tb(x, emb), reference.sign_pm1(x))
    assert torch.equal(ta(x, emb), torch.where(x > 0, x, 0.25 * x))
    # Both learn: the zero-initialised layers receive gradients.
    (tb(x.requires_grad_(), emb).sum() + ta(x, emb).square().sum()).backward()
    assert tb.shift.weight.grad.abs().sum() > 0
    assert ta.shifts.weight.grad.abs().sum() > 0
    assert ta.beta.grad.abs().sum() > 0


def test_time_binarize_threshold_fuses_into_binary_conv():
    tb = hnn.TimeBinarize(16, embed_dim=8)
    with torch.no_grad():
        tb.shift.weight.normal_()
    conv = hnn.BinaryConv2d(16, 4, 3, padding=1)
    x, emb = torch.randn(2, 16, 6, 6), torch.randn(2, 8)
    unfused = conv(tb(x, emb))
    with torch.no_grad():
        fused = conv.eval()(x, tb.threshold(emb))
    torch.testing.assert_close(fused, unfused, rtol=1e-6, atol=1e-6)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(32),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.BatchNorm2d(64),
            nn.Hardtanh(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.Hardtanh(),
        )
        self.head = nn.Conv2d(64, 2, 1)

    def forward(self, x):
        return self.head(self.body(self.stem(x))).mean((2, 3))


def test_binarize_swaps_inner_convolutions_and_keeps_weights():
    model = SmallCNN()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hnn.binarize(model)
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Conv2d
    assert isinstance(model.body[1], hnn.BinaryConv2d) and isinstance(model.body[4], hnn.BinaryConv2d)
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_binarize_exclude_patterns_and_all_layers():
    model = hnn.binarize(SmallCNN(), skip_first_last=False, exclude=["body.4"])
    assert isinstance(model.stem, hnn.BinaryConv2d) and isinstance(model.head, hnn.BinaryConv2d)
    assert type(model.body[4]) is nn.Conv2d
    model = hnn.binarize(SmallCNN(), exclude=["body.*"])
    assert not any(isinstance(m, hnn.BinaryConv2d) for m in model.modules())


def test_binarize_keeps_unsupported_padding_mode_real(caplog):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.Conv2d(8, 1, 1))
    hnn.binarize(model)
    assert type(model[1]) is nn.Conv2d
    assert "padding_mode" in caplog.text


def test_drop_in_training_loss_falls_and_paths_agree():
    torch.manual_seed(1)
    # Task: which half (top or bottom) of the image is brighter.
    images = torch.randn(64, 3, 16, 16)
    labels = torch.randint(0, 2, (64,))
    images[labels == 1, :, :8] += 1.0
    images[labels == 0, :, 8:] += 1.0
    model = hnn.binarize(SmallCNN())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    model.eval()
    with torch.no_grad():
        packed = model(images)
    straight_through = model(images.clone().requires_grad_())
    torch.testing.assert_close(packed, straight_through, rtol=1e-5, atol=1e-5)


def test_binarized_model_under_torch_compile():
    model = hnn.binarize(SmallCNN()).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(x), expected)
    model.train()
    compiled = torch.compile(model)
    compiled(x).sum().backward()
    assert model.body[1].weight.grad is not None


def test_packed_kernels_switch_selects_the_float_path_with_equal_results():
    torch.manual_seed(0)
    layer = hnn.BinaryConv2d(35, 12, 3, padding=1).eval()
    x = torch.randn(2, 35, 9, 11)
    with torch.no_grad():
        packed = layer(x)
        with hnn.packed_kernels(False):
            assert not layer._use_packed_kernels(x, None)
            simulated = layer(x)
        assert layer._use_packed_kernels(x, None)
    torch.testing.assert_close(packed, simulated, rtol=1e-5, atol=1e-4)
