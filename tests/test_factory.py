"""hidiff.factory: building HiDiff from a configuration (every segmentor of the registry) and the versioned checkpoint
format that inference loads without importing hidiff.training."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from hidiff.checkpoint import load_checkpoint, save_checkpoint
from hidiff.config import TrainingConfig
from hidiff.data import build_dataset
from hidiff.diffusion import BernoulliDiffusion
from hidiff.factory import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    build_model,
    load_model,
    read_checkpoint,
    save_model,
)
from hidiff.losses import discriminative_loss_terms
from hidiff.models import MeritSegmentor, UNet, prior_from_logits

SIZE = 32
TINY = {
    "data": {"name": "synthetic", "image_size": SIZE, "batch_size": 2, "num_workers": 0, "kwargs": {"length": 4}},
    "model": {"segmentor_kwargs": {"base_channels": 4}, "refiner_channels": 32},
    "diffusion": {"num_steps": 4},
    "train": {"pretrain_iterations": 1, "alternate_iterations": 1, "eval_interval": 0, "checkpoint_interval": 0},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path=None, **sections) -> TrainingConfig:
    data = {key: dict(value) for key, value in TINY.items()}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    if tmp_path is not None:
        data["output_dir"] = str(tmp_path / "run")
    return TrainingConfig.from_dict(data)


def _outputs(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The priors and one refined map of two fixed images: equal for equal weights (batch 2: at 32x32 the deepest
    level is 1x1, where GroupNorm needs more than one value per group)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, SIZE, SIZE, generator=generator)
    with torch.no_grad():
        prior, _ = model.prior(image)
        refined = model.refine(image, steps=2, samples=1, seed=seed)
    return prior, refined


# ------------------------------------------------------------------------------------------------- build_model


def test_build_model_wires_every_config_field():
    diffusion = {
        "num_steps": 6,
        "schedule": "cosine-unsquared",
        "focal_gamma": 2.0,
        "focal_weight": 0.5,
        "first_step_term": "posterior",
        "model_posterior": "plugin",
        "dice_weight": 0.25,
    }
    config = _config(diffusion=diffusion, model={"binary": False, "xformer": False})
    model = build_model(config, 1, 2)
    expected = BernoulliDiffusion(**diffusion)
    assert repr(model.diffusion) == repr(expected)
    assert isinstance(model.segmentor, UNet) and model.segmentor.feature_channels == (16, 32, 32, 32)
    assert (model.segmentor.in_channels, model.segmentor.num_classes) == (1, 2)
    refiner = model.refiner
    assert (refiner.image_channels, refiner.num_classes, refiner.model_channels) == (1, 2, 32)
    assert not refiner.binary and not refiner.use_xformer
    # The residual output (the default) gets the schedule's 1 - abar_t; the paper's direct form none.
    assert refiner.prior_flip_rates == expected.flip_scales
    direct = build_model(_config(diffusion={"parameterization": "direct"}), 3, 1)
    assert direct.refiner.prior_flip_rates is None and direct.refiner.binary and direct.refiner.use_xformer


def test_build_model_rejects_an_unknown_segmentor_by_name():
    with pytest.raises(ValueError, match=r"unknown segmentor 'segformer'.*'unet', 'merit', 'timm:<backbone>'"):
        build_model(_config(model={"segmentor": "segformer"}), 3, 1)


def test_merit_needs_an_image_size():
    config = _config(data={"image_size": None}, model={"segmentor": "merit", "segmentor_kwargs": {}})
    with pytest.raises(ValueError, match="data.image_size or model.segmentor_kwargs.image_size"):
        build_model(config, 3, 1)


def test_merit_segmentor_trains_in_hidiff():
    """``segmentor: merit`` in a training configuration: one hybrid-loss forward/backward reaches every part."""
    config = _config(data={"image_size": 64}, model={"segmentor": "merit", "segmentor_kwargs": {}})
    torch.manual_seed(0)
    model = build_model(config, 3, 1).train()
    segmentor = model.segmentor
    assert isinstance(segmentor, MeritSegmentor) and segmentor.merit.image_size == 64
    assert model.refiner.cond_channels == segmentor.feature_channels == (96, 192, 384, 768)
    image = torch.rand(2, 3, 64, 64)
    mask = (torch.rand(2, 1, 64, 64) > 0.5).float()
    logits, features = segmentor(image)
    assert logits.shape == (2, 1, 64, 64)
    assert [tuple(f.shape) for f in features] == [
        (2, c, 64 // s, 64 // s) for c, s in zip((96, 192, 384, 768), (4, 8, 16, 32), strict=True)
    ]
    disc = discriminative_loss_terms(logits, mask)
    diff = model.diffusion_loss(image, mask, prior_from_logits(logits), features).total
    (disc.total + diff).backward()
    assert torch.isfinite(disc.total) and torch.isfinite(diff)
    for name, module in (
        ("first backbone", segmentor.merit.backbone1),
        ("second backbone", segmentor.merit.backbone2),
        ("decoder", segmentor.merit.decoder),
        ("refiner", model.refiner),
    ):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


# ------------------------------------------------------------------------------------------------- checkpoints


def test_save_and_load_model_round_trip(tmp_path):
    config = _config()
    torch.manual_seed(1)
    model = build_model(config, 3, 1).eval()
    path = save_model(tmp_path / "model.pt", model, config)
    state = load_checkpoint(path)
    assert state["format"] == CHECKPOINT_FORMAT and state["format_version"] == CHECKPOINT_FORMAT_VERSION == 3
    loaded, loaded_config = load_model(path)
    assert loaded_config == config and not loaded.training
    for expected, actual in zip(_outputs(model), _outputs(loaded), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_load_model_prefers_the_ema_weights(tmp_path):
    config = _config()
    model = build_model(config, 3, 1)
    shadow = {k: torch.zeros_like(v) if k == "head.conv.bias" else v for k, v in model.refiner.state_dict().items()}
    shadow["head.conv.bias"] = torch.full_like(shadow["head.conv.bias"], 3.0)
    state = {**load_checkpoint(save_model(tmp_path / "m.pt", model, config)), "ema": {"shadow": shadow}}
    save_checkpoint(tmp_path / "ema.pt", state)
    assert torch.equal(load_model(tmp_path / "ema.pt")[0].refiner.head.conv.bias, shadow["head.conv.bias"])
    raw = load_model(tmp_path / "ema.pt", use_ema=False)[0].refiner.head.conv.bias
    assert torch.equal(raw, model.refiner.head.conv.bias)


def _version_1(tmp_path, drop_parameterization: bool):
    """A checkpoint in the layout before versioning: no format_version (and, oldest, no parameterization)."""
    config = _config(diffusion={"parameterization": "direct"})
    model = build_model(config, 3, 1).eval()
    state = load_checkpoint(save_model(tmp_path / "v2.pt", model, config))
    del state["format_version"]
    if drop_parameterization:
        del state["config"]["diffusion"]["parameterization"]
    return model, save_checkpoint(tmp_path / "v1.pt", state)


@pytest.mark.parametrize("drop_parameterization", [True, False])
def test_version_1_checkpoints_still_load(tmp_path, drop_parameterization):
    model, path = _version_1(tmp_path, drop_parameterization)
    state = read_checkpoint(path)
    assert state["format_version"] == CHECKPOINT_FORMAT_VERSION
    assert state["config"]["diffusion"]["parameterization"] == "direct"
    loaded, config = load_model(path)
    assert config.diffusion.parameterization == "direct" and loaded.refiner.prior_flip_rates is None
    for expected, actual in zip(_outputs(model), _outputs(loaded), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_a_newer_format_version_is_refused_naming_the_file(tmp_path):
    config = _config()
    state = load_checkpoint(save_model(tmp_path / "m.pt", build_model(config, 3, 1), config))
    for version in (CHECKPOINT_FORMAT_VERSION + 1, "2", 0):
        path = save_checkpoint(tmp_path / "future.pt", {**state, "format_version": version})
        with pytest.raises(ValueError, match=rf"future\.pt has format_version {version!r}.* versions 1 to 3"):
            load_model(path)


def test_missing_entries_and_foreign_files_are_refused_naming_the_file(tmp_path):
    config = _config()
    state = load_checkpoint(save_model(tmp_path / "m.pt", build_model(config, 3, 1), config))
    del state["refiner"]
    path = save_checkpoint(tmp_path / "partial.pt", state)
    with pytest.raises(ValueError, match=r"partial\.pt lacks 'refiner': expected the entries 'config', 'segmentor', "):
        load_model(path)
    foreign = save_checkpoint(tmp_path / "foreign.pt", {"state_dict": {"w": torch.zeros(1)}})
    with pytest.raises(ValueError, match=r"foreign\.pt is not a HiDiff checkpoint: its format is None"):
        load_model(foreign)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_trainer_writes_the_version_and_resumes_version_1(tmp_path):
    from hidiff.training import Trainer

    config = _config(tmp_path)
    dataset = build_dataset("synthetic", None, "train", image_size=SIZE, length=4)
    trainer = Trainer(config, build_model(config, 3, 1), dataset, device="cpu")
    state = trainer.state_dict()
    assert state["format"] == CHECKPOINT_FORMAT and state["format_version"] == CHECKPOINT_FORMAT_VERSION
    del state["format_version"]
    trainer.resume(save_checkpoint(tmp_path / "v1.pt", state))
    state["format_version"] = CHECKPOINT_FORMAT_VERSION + 1
    with pytest.raises(ValueError, match=r"newer\.pt has format_version 4"):
        trainer.resume(save_checkpoint(tmp_path / "newer.pt", state))
    del state["rng"]
    state["format_version"] = CHECKPOINT_FORMAT_VERSION
    with pytest.raises(ValueError, match=r"partial\.pt lacks 'rng'"):
        trainer.resume(save_checkpoint(tmp_path / "partial.pt", state))


# ------------------------------------------------------------------------------------------------- import layering


def test_inference_never_imports_training(tmp_path):
    """A fresh interpreter: importing inference, evaluation and the factory, then the CLI's evaluate and segment
    commands on a saved model, load no module of hidiff.training."""
    config = _config(tmp_path)
    checkpoint = save_model(tmp_path / "model.pt", build_model(config, 3, 1), config)
    image = tmp_path / "frame.png"
    Image.new("RGB", (40, 30), (120, 60, 30)).save(image)
    script = textwrap.dedent(
        f"""
        import sys

        import hidiff.evaluation, hidiff.factory, hidiff.inference

        def training():
            return sorted(name for name in sys.modules if name.startswith("hidiff.training"))

        assert training() == [], training()
        from hidiff import cli

        sampling = ["--steps", "1", "--samples", "1", "--threads", "1"]
        # Segmented one at a time at 64x64: at 32x32 the refiner's deepest level is 1x1, too small for GroupNorm.
        assert cli.main(["evaluate", "--checkpoint", {str(checkpoint)!r}, "--split", "test", *sampling]) == 0
        assert cli.main(["segment", {str(image)!r}, "--checkpoint", {str(checkpoint)!r},
                         "--output-dir", {str(tmp_path / "masks")!r}, "--image-size", "64", *sampling]) == 0
        assert training() == [], training()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "masks" / "frame_mask.png").is_file()
