"""The frozen refiner is the default inference path: HiDiff.refine/segment, evaluate and the CLI run it,
freeze once, reuse it, and refreeze when the refiner's weights change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hidiff import cli
from hidiff.diffusion import BernoulliDiffusion
from hidiff.models import BBDM, FrozenBBDM, HiDiff, UNet

TINY_CONFIG = {
    "data": {"name": "synthetic", "image_size": 64, "batch_size": 2, "num_workers": 0, "kwargs": {"length": 4}},
    "model": {"segmentor_kwargs": {"base_channels": 4}, "refiner_channels": 32},
    "diffusion": {"num_steps": 4, "sample_steps": 2, "ensemble": 2},
    # The sampler settings stay the configuration's (not chosen on validation), so the call counts below are known.
    "train": {
        "pretrain_iterations": 2,
        "alternate_iterations": 2,
        "eval_interval": 0,
        "checkpoint_interval": 0,
        "select_sampling": False,
    },
}


class CallCounter:
    """Counts calls of FrozenBBDM.step and BBDM.forward (monkeypatched wrappers of the real methods)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frozen_steps = 0
        self.layer_by_layer = 0
        step, forward = FrozenBBDM.step, BBDM.forward

        def counted_step(frozen, *args, **kwargs):
            self.frozen_steps += 1
            return step(frozen, *args, **kwargs)

        def counted_forward(refiner, *args, **kwargs):
            self.layer_by_layer += 1
            return forward(refiner, *args, **kwargs)

        monkeypatch.setattr(FrozenBBDM, "step", counted_step)
        monkeypatch.setattr(BBDM, "forward", counted_forward)


def _model() -> HiDiff:
    torch.manual_seed(0)
    segmentor = UNet(3, 1, base_channels=4)
    refiner = BBDM(3, 1, model_channels=32, cond_channels=segmentor.feature_channels)
    with torch.no_grad():  # a non-zero head, so that the refiner's output depends on its weights
        refiner.head.conv.weight.normal_(0, 0.05)
    return HiDiff(segmentor, refiner, BernoulliDiffusion(num_steps=4)).eval()


def test_refine_runs_the_frozen_refiner_by_default(monkeypatch):
    model = _model()
    x = torch.rand(2, 3, 32, 32)
    calls = CallCounter(monkeypatch)
    refined = model.refine(x, steps=2, samples=2)
    assert calls.frozen_steps == 4 and calls.layer_by_layer == 0  # 2 steps for each of 2 samples
    model.segment(x, steps=2)
    assert calls.frozen_steps == 6 and calls.layer_by_layer == 0
    layer_by_layer = model.refine(x, steps=2, samples=2, frozen=False)
    assert calls.layer_by_layer == 4
    # Same function up to float rounding (an activation within an ulp of a threshold may flip a bit).
    assert (refined - layer_by_layer).abs().mean() < 0.05


def test_training_mode_runs_layer_by_layer(monkeypatch):
    model = _model().train()
    calls = CallCounter(monkeypatch)
    model.refine(torch.rand(2, 3, 32, 32), steps=2)
    assert calls.frozen_steps == 0 and calls.layer_by_layer == 2


def test_frozen_refiner_is_reused_and_refrozen_when_weights_change():
    model = _model()
    first = model.frozen_refiner(2)
    assert model.frozen_refiner(2) is first
    assert model.frozen_refiner(4) is not first  # other timesteps: another table
    assert model.frozen_refiner(2) is first
    x = torch.rand(2, 3, 32, 32)
    before = model.refine(x, steps=2)
    with torch.no_grad():  # an in-place update, as an optimizer step does
        model.refiner.head.conv.bias.add_(3.0)
    second = model.frozen_refiner(2)
    assert second is not first
    after = model.refine(x, steps=2)
    assert not torch.equal(before, after)
    assert torch.equal(after, model.refine(x, steps=2, frozen=model.freeze(2)))
    model.refiner.load_state_dict(_model().refiner.state_dict())
    assert model.frozen_refiner(2) is not second
    assert torch.equal(model.refine(x, steps=2), before)


def test_frozen_argument_is_checked():
    with pytest.raises(TypeError, match="frozen must be a bool or a FrozenBBDM"):
        _model().refine(torch.rand(2, 3, 32, 32), steps=2, frozen="yes")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, train_tiny_run):
    return train_tiny_run(tmp_path_factory.mktemp("fast_path"), TINY_CONFIG) / "latest.pt"


@pytest.mark.parametrize("layer_by_layer", [False, True])
def test_cli_segment_and_evaluate_run_the_frozen_refiner_by_default(checkpoint, tmp_path, monkeypatch, layer_by_layer):
    image = tmp_path / "frame.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(image)
    flag = ["--layer-by-layer"] if layer_by_layer else []
    calls = CallCounter(monkeypatch)
    out = tmp_path / "masks"
    assert cli.main(["segment", "--checkpoint", str(checkpoint), "--output-dir", str(out), *flag, str(image)]) == 0
    # The checkpoint's sampler settings: 2 steps for each of 2 samples.
    assert (calls.frozen_steps, calls.layer_by_layer) == ((0, 4) if layer_by_layer else (4, 0))
    calls.frozen_steps = calls.layer_by_layer = 0
    assert cli.main(["evaluate", "--checkpoint", str(checkpoint), "--split", "test", *flag]) == 0
    if layer_by_layer:
        assert calls.layer_by_layer > 0 and calls.frozen_steps == 0
    else:
        assert calls.frozen_steps > 0 and calls.layer_by_layer == 0


def test_condition_outputs_are_computed_once_per_step_for_an_ensemble(monkeypatch):
    from hidiff.models.frozen.layers import FrozenCondition

    model = _model()
    x = torch.rand(2, 3, 32, 32)
    expected = model.refine(x, steps=2, samples=3, frozen=False)
    calls = []
    forward = FrozenCondition.forward
    monkeypatch.setattr(FrozenCondition, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    refined = model.refine(x, steps=2, samples=3)
    assert len(calls) == 4 * 2  # 4 condition layers, 2 steps: not again for members 2 and 3
    assert (refined - expected).abs().mean() < 0.05


def test_diagnostics_run_the_frozen_refiner(monkeypatch):
    from hidiff.diagnostics import diagnose

    model = _model()
    dataset = [{"image": torch.rand(3, 32, 32), "mask": (torch.rand(1, 32, 32) > 0.5).float()} for _ in range(2)]
    calls = CallCounter(monkeypatch)
    result = diagnose(model, dataset, steps=2, batch_size=2, progress=False)
    assert calls.frozen_steps == 4 + 2 and calls.layer_by_layer == 0  # every t of T = 4, then a 2-step chain
    assert len(result.timesteps) == 4 and len(result.chain) == 2
