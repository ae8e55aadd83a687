"""A model's refinement settings: stored with it, chosen on validation, the default of every entry point."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from test_data import write_cvc, write_synapse
from tiny_runs import tiny_config

from hidiff import cli, selection
from hidiff.checkpoint import load_checkpoint, save_checkpoint
from hidiff.config import TrainingConfig
from hidiff.data import build_dataset
from hidiff.diffusion import BernoulliDiffusion
from hidiff.factory import CHECKPOINT_FORMAT_VERSION, build_model, load_model, save_model
from hidiff.models import BBDM, STORED, HiDiff, RefineSettings, UNet
from hidiff.selection import format_selection, select_settings, store_settings

TINY = tiny_config(
    diffusion={"sample_steps": 2, "ensemble": 3},
    train={
        "pretrain_iterations": 2,
        "alternate_iterations": 2,
        "selection_steps": [1, None],
        "selection_ensembles": [1, 2],
    },
)


def _model() -> HiDiff:
    torch.manual_seed(0)
    segmentor = UNet(3, 1, base_channels=4)
    refiner = BBDM(3, 1, model_channels=32, cond_channels=segmentor.feature_channels)
    # A zero head (the initialisation) outputs 0.5 whatever the seed: give the samples something to differ in.
    torch.nn.init.normal_(refiner.head.conv.weight, std=0.5)
    return HiDiff(segmentor, refiner, BernoulliDiffusion(num_steps=4)).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_tiny_run):
    """A tiny run trained through the CLI (with a validation split, so the trainer chooses the settings)."""
    return train_tiny_run(tmp_path_factory.mktemp("settings"), TINY, "--set", "optim.lr=1e-3")


def test_settings_validate_round_trip_and_describe():
    settings = RefineSettings(steps=2, samples=4, sampler="ancestral", seed=3)
    assert RefineSettings.from_dict(settings.to_dict()) == settings
    assert "ANCESTRAL, 2 steps, mean of 4 samples, seed 3" in settings.describe()
    assert "refinement off" in RefineSettings(refine=False).describe()
    for bad in ({"steps": 0}, {"samples": 0}, {"sampler": "euler"}, {"seed": -1}, {"refine": 1}, {"source": "x"}):
        with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
            RefineSettings(**bad)
    with pytest.raises(ValueError, match="entry.*unknown keys"):
        RefineSettings.from_dict({"steps": 1, "temperature": 2}, "entry")
    assert settings.override(seed=5).source == settings.source
    assert settings.override(samples=1).source == "user"


def test_refine_and_segment_default_to_the_stored_settings():
    model = _model()
    x = torch.rand(2, 3, 32, 32)
    model.settings = RefineSettings(steps=1, samples=3, seed=7)
    assert torch.equal(model.refine(x), model.refine(x, steps=1, samples=3, seed=7))
    assert not torch.equal(model.refine(x), model.refine(x, steps=1, samples=3, seed=8))
    # Explicit arguments win; steps=None is an explicit "all T".
    assert torch.equal(model.refine(x, steps=None), model.refine(x, steps=None, samples=3, seed=7))
    assert torch.equal(model.segment(x), model.diffusion.to_mask(model.refine(x, steps=1, samples=3, seed=7)))
    model.settings = RefineSettings(refine=False, steps=1, samples=3)
    assert torch.equal(model.segment(x), model.segment(x, refine=False))
    # Sampling arguments ask for refinement even where the stored default is off.
    assert torch.equal(model.segment(x, steps=1), model.diffusion.to_mask(model.refine(x, steps=1, samples=3)))
    with pytest.raises(TypeError, match="RefineSettings"):
        model.settings = {"steps": 1}
    assert repr(STORED) == "STORED"


def test_a_model_built_from_a_config_carries_its_sampler_settings():
    config = TrainingConfig.from_dict(TINY)
    model = build_model(config, 3, 1)
    assert (model.settings.steps, model.settings.samples, model.settings.source) == (2, 3, "config")


def test_save_and_load_keep_the_settings_and_older_files_get_the_config(tmp_path):
    config = TrainingConfig.from_dict(TINY)
    model = build_model(config, 3, 1).eval()
    model.settings = RefineSettings(refine=False, steps=1, samples=2, source="user")
    path = save_model(tmp_path / "model.pt", model, config)
    loaded, _ = load_model(path)
    assert loaded.settings == model.settings
    state = load_checkpoint(path)
    del state["sampling"]
    state["format_version"] = 2
    save_checkpoint(path, state)
    older, _ = load_model(path)
    assert older.settings == RefineSettings(steps=2, samples=3, source="config")
    state["format_version"] = CHECKPOINT_FORMAT_VERSION
    state["sampling"] = {"steps": "two"}
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match="sampling entry of checkpoint .*model.pt"):
        load_model(path)


def _fake_evaluate(refined_dice: dict, segmentor_dice: float):
    def evaluate(model, dataset, *, settings, **kwargs):
        dice = refined_dice[(settings.steps, settings.samples)]
        return SimpleNamespace(segmentor={"dice": segmentor_dice}, refined={"dice": dice}, num_images=5)

    return evaluate


def test_selection_keeps_the_best_setting_cheapest_on_ties_and_the_prior_when_none_wins(monkeypatch):
    model = _model()
    dice = {(1, 1): 0.80, (1, 4): 0.83, (2, 1): 0.83, (2, 4): 0.82, (None, 1): 0.70, (None, 4): 0.71}
    monkeypatch.setattr(selection, "evaluate", _fake_evaluate(dice, 0.81))
    chosen = select_settings(model, [], steps=[1, 2, 4, None], ensembles=[4, 1], progress=False)
    # (1 step, 4 samples) and (2 steps, 1 sample) tie: the second costs 2 refiner passes, not 4.
    assert (chosen.refine, chosen.steps, chosen.samples, chosen.source) == (True, 2, 1, "validation")
    assert chosen.validation["segmentor_dice"] == 0.81 and chosen.validation["dice"] == 0.83
    assert len(chosen.validation["table"]) == 6  # steps 4 = T is the same setting as None
    assert "chosen" in format_selection(chosen, 4)

    monkeypatch.setattr(selection, "evaluate", _fake_evaluate(dice, 0.83))
    with_ties = select_settings(model, [], steps=[1, 2, None], ensembles=[1, 4], progress=False)
    assert not with_ties.refine and with_ties.validation["dice"] == 0.83
    assert "refinement off" in with_ties.describe()
    with pytest.raises(ValueError, match="steps"):
        select_settings(model, [], steps=[0], progress=False)


def test_selection_on_real_data_matches_evaluate():
    model = _model()
    dataset = build_dataset("synthetic", None, "val", image_size=32, length=4)
    chosen = select_settings(model, dataset, steps=[1], ensembles=[2], progress=False)
    from hidiff.evaluation import evaluate

    result = evaluate(model, dataset, settings=RefineSettings(steps=1, samples=2), progress=False)
    assert chosen.validation["best_refined_dice"] == pytest.approx(result.refined["dice"])
    assert chosen.validation["segmentor_dice"] == pytest.approx(result.segmentor["dice"])
    assert chosen.refine == (result.refined["dice"] > result.segmentor["dice"])


def test_training_chooses_stores_and_reloads_the_settings(trained):
    for name in ("latest.pt", "best.pt"):
        if not (trained / name).is_file():
            continue
        model, _ = load_model(trained / name)
        settings = model.settings
        assert settings.source == "validation" and settings.validation["split"] == "val"
        assert len(settings.validation["table"]) == 4
        x = build_dataset("synthetic", None, "test", image_size=32, length=4)[0]["image"][None]
        if settings.refine:
            expected = model.segment(x, steps=settings.steps, samples=settings.samples, seed=settings.seed)
            best = max(row["dice"] for row in settings.validation["table"])
            assert best > settings.validation["segmentor_dice"]
        else:
            expected = model.segment(x, refine=False)
            assert all(row["dice"] <= settings.validation["segmentor_dice"] for row in settings.validation["table"])
        assert torch.equal(model.segment(x), expected)


def test_select_command_stores_and_evaluate_reports_the_settings(trained, tmp_path, capsys):
    path = tmp_path / "model.pt"
    path.write_bytes((trained / "latest.pt").read_bytes())
    assert cli.main(["select", "--checkpoint", str(path), "--grid-steps", "1", "--grid-samples", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| 1 | 2 |" in printed
    model, _ = load_model(path)
    assert len(model.settings.validation["table"]) == 1
    output = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--checkpoint", str(path), "--split", "test", "--output", str(output)]) == 0
    assert "chosen on val" in capsys.readouterr().out
    assert json.loads(output.read_text())["settings"]["source"] == "validation"
    # store_settings keeps everything else of the file.
    store_settings(path, RefineSettings(steps=1, samples=5, source="user"))
    assert load_model(path)[0].settings.samples == 5
    assert set(load_checkpoint(path)) >= {"ema", "optimizers", "segmentor", "refiner"}


def test_cross_dataset_evaluation_on_another_reader(trained, tmp_path, capsys):
    write_cvc(tmp_path / "cvc")
    output = tmp_path / "cvc.json"
    code = cli.main(
        [
            "evaluate",
            "--checkpoint",
            str(trained / "latest.pt"),
            "--dataset",
            "cvc",
            "--data-root",
            str(tmp_path / "cvc"),
            "--split",
            "test",
            "--output",
            str(output),
        ]
    )
    assert code == 0
    assert "cvc / test (trained on synthetic)" in capsys.readouterr().out
    result = json.loads(output.read_text())
    assert (result["dataset"], result["trained_on"], result["num_images"]) == ("cvc", "synthetic", 2)
    # Synapse is greyscale with 9 classes: refused before any work, naming what differs.
    write_synapse(tmp_path / "synapse")
    args = ["--debug", "evaluate", "--checkpoint", str(trained / "latest.pt"), "--dataset", "synapse"]
    args += ["--data-root", str(tmp_path / "synapse"), "--split", "test"]
    with pytest.raises(ValueError, match="--dataset synapse has in_channels = 1.*expects 3"):
        cli.main(args)
