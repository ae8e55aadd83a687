"""Refiner diagnostics: calibration per timestep, chain statistics, figures, and ``hidiff diagnose``."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from hidiff import cli
from hidiff.data import build_dataset
from hidiff.diagnostics import diagnose, format_diagnostics, write_diagnostics
from hidiff.diffusion import BernoulliDiffusion
from hidiff.models import BBDM, HiDiff, UNet


def _model(residual: bool = True) -> HiDiff:
    torch.manual_seed(0)
    diffusion = BernoulliDiffusion(num_steps=4)
    segmentor = UNet(3, 1, base_channels=4)
    refiner = BBDM(
        3,
        1,
        model_channels=32,
        cond_channels=segmentor.feature_channels,
        prior_flip_rates=diffusion.flip_scales if residual else None,
    )
    return HiDiff(segmentor, refiner, diffusion).eval()


@pytest.fixture(scope="module")
def dataset():
    return build_dataset("synthetic", None, "val", image_size=32, length=6)


def test_untrained_residual_refiner_is_the_prior_only_denoiser(dataset):
    """A zero head is exactly the prior-only Bayes denoiser: same BCE (up to its clamp), so no gain."""
    result = diagnose(_model(), dataset, batch_size=4, progress=False)
    assert [row.t for row in result.timesteps] == [0, 1, 2, 3]
    for row in result.timesteps:
        assert row.bce == pytest.approx(row.bce_prior_only, rel=1e-3, abs=1e-5)
        assert 0.0 <= row.flip_rate <= 1.0 and 0.0 <= row.dice_y_t <= 1.0 and 0.0 <= row.dice_y0_hat <= 1.0
    assert not result.learned_beyond_prior
    # Flips grow with t (the forward process forgets y0).
    rates = [row.flip_rate for row in result.timesteps]
    assert rates[-1] > rates[0]
    assert [step.t for step in result.chain] == [3, 2, 1, 0]
    assert result.chain[0].flipped == 0.0
    assert sum(row["count"] for row in result.reliability) == 4 * len(dataset) * 32 * 32


class _Oracle(nn.Module):
    """A refiner that knows the masks: predicts the true flips of y_t."""

    def __init__(self, refiner: BBDM, masks: torch.Tensor) -> None:
        super().__init__()
        self.refiner, self.masks = refiner, masks
        for name in ("cond_channels", "num_classes", "image_channels"):
            setattr(self, name, getattr(refiner, name))

    def forward(self, image, y_t, prior, t, features):
        return (y_t - self.masks[: y_t.shape[0]]).abs().clamp(1e-6, 1 - 1e-6)


def test_oracle_refiner_is_perfectly_calibrated_and_its_chain_recovers_the_masks(dataset):
    model = _model()
    masks = torch.stack([dataset[i]["mask"] for i in range(len(dataset))])
    model.refiner = _Oracle(model.refiner, masks)
    result = diagnose(model, dataset, batch_size=len(dataset), progress=False)
    for row in result.timesteps:
        assert row.bce < 1e-4 and row.dice_y0_hat == pytest.approx(1.0)
        assert row.mean_eps_hat == pytest.approx(row.flip_rate, abs=1e-5)
    assert result.learned_beyond_prior
    assert result.dice_chain == pytest.approx(1.0)
    assert all(step.dice_y0_hat == pytest.approx(1.0) for step in result.chain)


def test_reports_and_figures_are_written(dataset, tmp_path):
    result = diagnose(_model(residual=False), dataset, max_images=4, batch_size=2, progress=False)
    assert result.num_images == 4
    paths = write_diagnostics(result, tmp_path, prefix="x_")
    for kind in ("json", "markdown", "reliability", "chain"):
        assert paths[kind].is_file() and paths[kind].stat().st_size > 0
    data = json.loads(paths["json"].read_text())
    assert len(data["timesteps"]) == 4 and "learned_beyond_prior" in data
    table = format_diagnostics(result)
    assert "BCE prior-only" in table and "Dice state" in table


def test_diagnose_command_and_training_figures(tmp_path):
    config = {
        "data": {"name": "synthetic", "image_size": 32, "batch_size": 2, "num_workers": 0, "kwargs": {"length": 4}},
        "model": {"segmentor_kwargs": {"base_channels": 4}, "refiner_channels": 32},
        "diffusion": {"num_steps": 3},
        "train": {
            "pretrain_iterations": 1,
            "alternate_iterations": 2,
            "eval_interval": 0,
            "checkpoint_interval": 0,
            "diagnostics_images": 2,
        },
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["train", "--config", str(path), "--device", "cpu"]) == 0
    # Training wrote the calibration figures of its validation.
    assert (tmp_path / "run" / "diagnostics" / "alternate_000002_reliability.png").is_file()
    validation = [json.loads(line) for line in (tmp_path / "run" / "validation.jsonl").read_text().splitlines()]
    assert "eps_bce_prior_only" in validation[-1] and "chain_dice" in validation[-1]
    out = tmp_path / "diag"
    code = cli.main(
        ["diagnose", "--checkpoint", str(tmp_path / "run" / "latest.pt"), "--max-images", "2", "--output-dir", str(out)]
    )
    assert code == 0
    for name in ("diagnostics.json", "diagnostics.md", "reliability.png", "chain.png"):
        assert (out / name).is_file(), name
