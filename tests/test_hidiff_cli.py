"""The ``hidiff`` command end to end on tiny runs: train, evaluate, segment, demo; evaluation and inference helpers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hidiff import cli
from hidiff.data import build_dataset
from hidiff.demo import run_demo
from hidiff.diffusion import BernoulliDiffusion
from hidiff.evaluation import evaluate
from hidiff.models import RefineSettings
from hidiff.factory import load_model
from hidiff.inference import read_image
from hidiff.models import BBDM, HiDiff, UNet

TINY_CONFIG = {
    "data": {"name": "synthetic", "image_size": 32, "batch_size": 2, "num_workers": 0, "kwargs": {"length": 4}},
    "model": {"segmentor_kwargs": {"base_channels": 4}, "refiner_channels": 32},
    "diffusion": {"num_steps": 4},
    "train": {"pretrain_iterations": 2, "alternate_iterations": 2, "eval_interval": 0, "checkpoint_interval": 0},
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, train_tiny_run):
    """A tiny run trained through the CLI; returns its output directory."""
    return train_tiny_run(tmp_path_factory.mktemp("run"), TINY_CONFIG, "--set", "optim.lr=1e-3")


def _tiny_model(num_classes: int = 1) -> HiDiff:
    torch.manual_seed(0)
    segmentor = UNet(3, num_classes, base_channels=4)
    refiner = BBDM(3, num_classes, model_channels=32, cond_channels=segmentor.feature_channels)
    return HiDiff(segmentor, refiner, BernoulliDiffusion(num_steps=3)).eval()


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "hidiff.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "evaluate", "segment", "demo"):
        assert command in out.stdout


def test_overrides_set_nested_keys_and_unknown_keys_are_rejected(tmp_path):
    config = cli._load_config(None, [cli._parse_override("optim.lr=3e-4"), cli._parse_override("data.batch_size=4")])
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.data.batch_size == 4
    with pytest.raises(ValueError, match="optim.lrr"):
        cli._load_config(None, [cli._parse_override("optim.lrr=1")])
    with pytest.raises(Exception, match="KEY=VALUE"):
        cli._parse_override("optim.lr")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        cli._load_config(str(tmp_path / "missing.yaml"), [])


def test_every_dataset_config_loads():
    from pathlib import Path

    from hidiff.config import TrainingConfig

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        TrainingConfig.load_yaml(path)


def test_train_writes_checkpoints_config_logs_and_figure(trained_run):
    for name in ("latest.pt", "config.yaml", "losses.csv", "loss_curves.png"):
        assert (trained_run / name).is_file(), name
    model, config = load_model(trained_run / "latest.pt")
    assert config.data.image_size == 32
    assert not model.training and model.refiner.binary


def test_evaluate_command_writes_metrics_of_both_predictions(trained_run, capsys):
    output = trained_run / "eval.json"
    code = cli.main(
        ["evaluate", "--checkpoint", str(trained_run / "latest.pt"), "--split", "test", "--output", str(output)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Segmentor alone" in printed and "### HiDiff: " in printed
    result = json.loads(output.read_text())
    assert result["num_images"] == 4
    assert 0.0 <= result["segmentor"]["dice"] <= 1.0 and 0.0 <= result["refined"]["dice"] <= 1.0


def test_segment_command_writes_masks_at_the_image_size_and_overlays(trained_run, tmp_path):
    image_path = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)).save(image_path)
    out_dir = tmp_path / "masks"
    code = cli.main(
        ["segment", str(image_path), "--checkpoint", str(trained_run / "latest.pt"), "--output-dir", str(out_dir)]
        + ["--image-size", "64"]
    )
    assert code == 0
    mask = np.asarray(Image.open(out_dir / "frame_mask.png"))
    assert mask.shape == (45, 70) and set(np.unique(mask)) <= {0, 255}
    assert (out_dir / "frame_prior.png").is_file() and (out_dir / "frame_overlay.png").is_file()


def test_cli_reports_missing_files_as_errors(tmp_path, caplog):
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in caplog.text
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        read_image(tmp_path / "nothing.png")


def test_evaluate_refined_and_prior_come_from_one_segmentor_pass():
    model = _tiny_model()
    dataset = build_dataset("synthetic", None, "test", image_size=32, length=3)
    calls = []
    model.segmentor.register_forward_hook(lambda *args: calls.append(1))
    result = evaluate(model, dataset, settings=RefineSettings(seed=1), batch_size=3, progress=False)
    assert len(calls) == 1
    assert result.num_images == 3 and result.refined is not None
    again = evaluate(model, dataset, settings=RefineSettings(seed=1), batch_size=3, progress=False)
    assert again.refined == result.refined  # a seed fixes the refined masks


def test_sliding_window_evaluation_matches_whole_image_for_a_window_of_the_image_size():
    model = _tiny_model()
    dataset = build_dataset("synthetic", None, "test", image_size=64, length=2)
    whole = evaluate(model, dataset, refine=False, batch_size=1, progress=False)
    windowed = evaluate(model, dataset, refine=False, window=64, progress=False)
    assert windowed.segmentor == whole.segmentor


def test_field_of_view_restricts_scoring():
    from hidiff.evaluation import _within

    mask = torch.ones(1, 1, 4, 4)
    fov = torch.zeros(1, 1, 4, 4)
    fov[..., :2, :] = 1
    assert _within(mask, fov).sum() == 8
    assert torch.equal(_within(mask, None), mask)


def test_demo_runs_and_reports_both_timings(tmp_path, capsys):
    result = run_demo(
        output_dir=tmp_path / "demo", image_size=32, pretrain_iterations=1, alternate_iterations=1, samples=2
    )
    printed = capsys.readouterr().out
    assert "Segmentor alone" in printed and "frozen binary refiner" in printed
    assert "real refiner of the same topology, torch fp32" in printed
    assert "prior-only Bayes denoiser" in printed and "chosen on val" in printed
    # The only ensemble size tried on validation is the one asked for; the defaults are it or the segmentor's mask.
    assert "mean of 2 samples" in printed or "refinement off" in printed
    assert (tmp_path / "demo" / "diagnostics_val" / "reliability.png").is_file()
    timing = result["timing"]
    assert timing["frozen"] > 0 and timing["layer_by_layer"] > 0 and timing["real"] > 0
    assert timing["speedup"] == pytest.approx(timing["real"] / timing["frozen"])
    assert result["figure"].is_file()
