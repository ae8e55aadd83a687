"""The tiny training configuration the end-to-end tests share (synthetic 32x32 images, a few iterations)."""

from __future__ import annotations

from typing import Any


def tiny_config(**sections: dict[str, Any]) -> dict[str, Any]:
    """A TrainingConfig dict of a run that trains in seconds; each keyword updates that section's keys."""
    config: dict[str, dict[str, Any]] = {
        "data": {"name": "synthetic", "image_size": 32, "batch_size": 2, "num_workers": 0, "kwargs": {"length": 4}},
        "model": {"segmentor_kwargs": {"base_channels": 4}, "refiner_channels": 32},
        "diffusion": {"num_steps": 4},
        "train": {"pretrain_iterations": 1, "alternate_iterations": 1, "eval_interval": 0, "checkpoint_interval": 0},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config
