"""``hidiff demo``: train a small HiDiff on the CPU and show what the refiner and the binary kernels give.

On the embedded synthetic data (default) or on Kvasir-SEG (``--data``) it pre-trains a light U-Net,
trains a binary refiner alternately with it, then reports on the held-out split the Dice/HD95 of the
segmentor alone and after refinement, the time of one refinement with the packed binary kernels vs
the same refiner computed in float, and writes a figure (image, prior, refined, ground truth).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .config import TrainingConfig
from .data import build_dataset
from .diagnostics import diagnose, write_diagnostics
from .evaluation import evaluate, predict
from .factory import load_model
from .metrics import format_report
from .models import BBDM, HiDiff, RefineSettings
from .profiling.timing import median_seconds
from .selection import format_selection
from .training import run_training

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPreset:
    """Sizes that keep the demo within a few minutes on 2 CPU cores."""

    dataset: str
    image_size: int
    batch_size: int
    segmentor_channels: int
    refiner_channels: int
    pretrain_iterations: int
    alternate_iterations: int
    ensemble: int
    sample_steps: int | None


#: Iterations and sampler settings chosen on the validation split (see the README's demo section).
PRESETS = {
    "synthetic": DemoPreset("synthetic", 64, 8, 16, 32, 300, 400, 16, 1),
    "kvasir": DemoPreset("kvasir", 128, 8, 16, 32, 300, 400, 16, 1),
}


def demo_config(
    data: str | None,
    output_dir: str | Path,
    image_size: int | None,
    pretrain: int | None,
    alternate: int | None,
    seed: int,
    samples: int | None = None,
) -> TrainingConfig:
    """The demo's training configuration (saved beside its checkpoints like any other run)."""
    preset = PRESETS["kvasir" if data else "synthetic"]
    size = image_size or preset.image_size
    data_kwargs = {"cache": True} if data else {}
    return TrainingConfig.from_dict(
        {
            "data": {
                "name": preset.dataset,
                "root": str(data) if data else None,
                "image_size": size,
                "batch_size": preset.batch_size,
                "num_workers": 0,
                "val_split": "val",
                "kwargs": data_kwargs,
            },
            "model": {
                "segmentor": "unet",
                "segmentor_kwargs": {"base_channels": preset.segmentor_channels},
                "refiner_channels": preset.refiner_channels,
                "binary": True,
            },
            "diffusion": {
                "ensemble": preset.ensemble if samples is None else samples,
                "sample_steps": preset.sample_steps,
            },
            "optim": {"lr": 1e-3, "ema_decay": 0.99, "ema_warmup": True},
            "train": {
                "pretrain_iterations": preset.pretrain_iterations if pretrain is None else pretrain,
                "alternate_iterations": preset.alternate_iterations if alternate is None else alternate,
                "log_interval": 25,
                "eval_interval": 0,
                "checkpoint_interval": 0,
                "diagnostics_images": 32,
                "seed": seed,
                # An explicit ensemble size is the only one tried when the settings are chosen on validation.
                **({} if samples is None else {"selection_ensembles": [samples]}),
            },
            "output_dir": str(output_dir),
        }
    )


@torch.no_grad()
def time_refinement(model: HiDiff, image: Tensor, steps: int | None, repeats: int = 3) -> dict[str, float]:
    """Median seconds of one DDIM refinement (one sample) of ``image`` ``(1, C, H, W)`` by three refiners.

    ``frozen``: the trained binary refiner's frozen form (what ``hidiff segment`` / ``evaluate`` run);
    ``layer_by_layer``: the same refiner layer by layer on the packed kernels; ``real``: a real-valued
    refiner of the same topology (``binary=False``) in torch fp32, what the binary refiner replaces.
    The real refiner's weights are untrained: its time does not depend on them.
    """
    model.eval()
    prior, features = model.prior(image)
    real = HiDiff(model.segmentor, BBDM(**{**model.refiner.config, "binary": False}), model.diffusion).eval()
    runs = {
        "frozen": lambda: model.refine_from_prior(image, prior, features, steps=steps, samples=1, sampler="ddim"),
        "layer_by_layer": lambda: model.refine_from_prior(
            image, prior, features, steps=steps, samples=1, sampler="ddim", frozen=False
        ),
        "real": lambda: real.refine_from_prior(image, prior, features, steps=steps, frozen=False),
    }
    # The warm-up call of median_seconds freezes the refiner and packs the weights, once.
    seconds = {name: median_seconds(refine, repeats) for name, refine in runs.items()}
    seconds["speedup"] = seconds["real"] / seconds["frozen"]
    return seconds


def save_demo_figure(model: HiDiff, dataset, path: Path, settings: RefineSettings, count: int = 4) -> Path:
    """Rows of (image, segmentor prior, refined map, ground truth) for the first ``count`` samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(dataset))
    figure, axes = plt.subplots(count, 4, figsize=(10, 2.6 * count), squeeze=False)
    for row in range(count):
        sample = dataset[row]
        image = sample["image"][None]
        with torch.no_grad():
            maps = predict(model, image, settings)
        prior, refined = maps["prior"], maps["refined"]
        channel = 0 if prior.shape[1] == 1 else slice(1, None)
        panels = (
            ("image", sample["image"].permute(1, 2, 0).clamp(0, 1).numpy()),
            ("segmentor prior", prior[0, channel].reshape(-1, *prior.shape[-2:]).amax(0).numpy()),
            ("HiDiff refined", refined[0, channel].reshape(-1, *refined.shape[-2:]).amax(0).numpy()),
            ("ground truth", sample["mask"][channel].reshape(-1, *refined.shape[-2:]).amax(0).numpy()),
        )
        for axis, (title, picture) in zip(axes[row], panels, strict=True):
            axis.imshow(picture, cmap=None if picture.ndim == 3 else "gray", vmin=0, vmax=1)
            axis.set_title(title if row == 0 else "")
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run_demo(
    data: str | Path | None = None,
    output_dir: str | Path = "runs/demo",
    image_size: int | None = None,
    pretrain_iterations: int | None = None,
    alternate_iterations: int | None = None,
    seed: int = 0,
    samples: int | None = None,
) -> dict:
    """Trains, evaluates and times a small HiDiff; prints a report and returns its numbers.

    Args:
        data: a Kvasir-SEG folder, or None for the embedded synthetic shapes.
        output_dir: where the run (checkpoints, logs, figures) goes.
        image_size: training/evaluation resolution (default per dataset, divisible by 32).
        pretrain_iterations, alternate_iterations: override the preset's iteration counts.
        seed: training and sampling seed.
        samples: the ensemble size (samples averaged per image), instead of choosing it on validation among
            1, 4 and 16.

    Returns:
        ``{"segmentor": metrics, "refined": metrics, "timing": {...}, "figure": path, "diagnostics":
        the refiner's Diagnostics on the validation split}``.
    """
    config = demo_config(data, output_dir, image_size, pretrain_iterations, alternate_iterations, seed, samples)
    start = time.perf_counter()
    # The demo reruns into the same folder every time: replacing the previous demo run is intended.
    run_dir = run_training(config, device="cpu", overwrite=True)
    train_seconds = time.perf_counter() - start
    checkpoint = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "latest.pt"
    model, _ = load_model(checkpoint)

    kwargs = config.data.dataset_kwargs()
    val_set = build_dataset(config.data.name, config.data.root, "val", **kwargs)
    diagnostics = diagnose(model, val_set, max_images=32, seed=seed, progress=False)
    write_diagnostics(diagnostics, run_dir / "diagnostics_val")
    test_set = build_dataset(config.data.name, config.data.root, "test", **kwargs)
    # The model's own defaults: the refinement setting chosen on the validation split at the end of training.
    settings = model.settings.override(seed=seed)
    result = evaluate(model, test_set, settings=settings, batch_size=8)
    timing = time_refinement(model, test_set[0]["image"][None], settings.steps)
    figure = save_demo_figure(model, test_set, run_dir / "demo.png", settings)

    size = config.data.image_size
    steps = len(model.diffusion.timesteps(settings.steps))
    gains = " ".join(f"{row.bce_prior_only - row.bce:+.4f}" for row in diagnostics.timesteps)
    lines = [
        f"HiDiff demo on {config.data.name} ({size}x{size}), trained in {train_seconds:.0f} s on CPU",
        "",
        f"Refiner calibration on {diagnostics.num_images} validation images "
        f"(figures in {run_dir / 'diagnostics_val'}):",
        f"  eps BCE gain over the prior-only Bayes denoiser, t = 0..{model.diffusion.num_steps - 1}: {gains}",
        f"  learned beyond the segmentor's prior at every t: {'yes' if diagnostics.learned_beyond_prior else 'no'}",
        "",
        format_selection(model.settings, model.diffusion.num_steps),
        f"test split: {result.num_images} images; HiDiff's defaults: {settings.describe(model.diffusion.num_steps)}",
        "",
        "Segmentor alone:",
        format_report(result.segmentor),
        "",
        "HiDiff (binary refiner, model.segment(x) with its defaults):",
        format_report(result.refined),
        "",
        f"One refinement sample ({steps} steps, batch 1, {torch.get_num_threads()} threads):",
        f"  frozen binary refiner (packed kernels, the default): {timing['frozen'] * 1000:.0f} ms",
        f"  same binary refiner layer by layer:                  {timing['layer_by_layer'] * 1000:.0f} ms",
        f"  real refiner of the same topology, torch fp32:       {timing['real'] * 1000:.0f} ms"
        f"  ({timing['speedup']:.2f}x the frozen binary refiner's time)",
        "",
        f"figure: {figure}",
    ]
    print("\n".join(lines))
    return {
        "segmentor": result.segmentor,
        "refined": result.refined,
        "timing": timing,
        "figure": figure,
        "diagnostics": diagnostics,
    }
