"""One home for building HiDiff from a configuration and for its checkpoint format.

- :func:`build_model`: segmentor (by name, :func:`hidiff.models.build_segmentor`) + BBDM refiner + Bernoulli
  diffusion from a :class:`~hidiff.config.TrainingConfig`; training and inference both build through it.
- The trainer checkpoint format: :data:`CHECKPOINT_FORMAT` marks the file kind and :data:`CHECKPOINT_FORMAT_VERSION`
  its layout; :func:`checkpoint_header` starts every checkpoint, :func:`read_checkpoint` loads one (with
  ``torch.load(weights_only=True)``), checks its version and keys and brings an older layout up to date.
- :func:`load_model` rebuilds the model of a checkpoint for inference; :func:`save_model` writes a model-only
  checkpoint in the same format.

Inference imports this module, never :mod:`hidiff.training`.

Format versions:

- 1: the layout before versioning (no ``format_version`` key). Checkpoints written before the residual output existed
  hold no ``diffusion.parameterization``: they are the paper's ``"direct"`` form.
- 2: ``format_version`` is stored; the configuration is complete.
- 3: ``sampling`` holds the model's refinement settings (:class:`~hidiff.models.RefineSettings`, chosen on the
  validation split at the end of training). Older files get the settings their configuration describes
  (``diffusion.sampler``, ``sample_steps``, ``ensemble``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainingConfig
from .diffusion import BernoulliDiffusion, Parameterization
from .models import BBDM, HiDiff, RefineSettings, build_segmentor, segmentor_spec

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "MODEL_KEYS",
    "build_model",
    "checkpoint_header",
    "load_model",
    "read_checkpoint",
    "save_model",
    "weights_entry",
]

#: The ``format`` entry of every HiDiff checkpoint: which kind of file it is (a fixed tag; the layout's version is
#: ``format_version``).
CHECKPOINT_FORMAT = "hidiff-trainer-1"
#: The checkpoint layout written now (see the module docstring); files of versions 1 to this one are read.
CHECKPOINT_FORMAT_VERSION = 3
#: The entries a checkpoint needs to rebuild its model.
MODEL_KEYS = ("config", "segmentor", "refiner")


def build_model(config: TrainingConfig, in_channels: int, num_classes: int) -> HiDiff:
    """HiDiff from ``config.model`` and ``config.diffusion`` for images of `in_channels` and `num_classes` classes.

    The segmentor is ``build_segmentor(model.segmentor, in_channels, num_classes, **model.segmentor_kwargs)``; one
    built for a single input size (``merit``) gets ``image_size = data.image_size`` unless its kwargs set it. The
    refiner's condition channels are the segmentor's ``feature_channels``; with ``diffusion.parameterization:
    residual`` it gets the schedule's ``1 - abar_t`` as its ``prior_flip_rates``.

    Args:
        config: the run's configuration.
        in_channels: Cimg, image channels.
        num_classes: K, mask channels.

    Returns:
        The model in training mode, on the CPU, with the refinement settings of ``config.diffusion``
        (:meth:`RefineSettings.from_config`).

    Raises:
        ValueError: on an unknown segmentor name, or a fixed-size segmentor without an image size.
    """
    model, diffusion_config = config.model, config.diffusion
    diffusion = BernoulliDiffusion(
        num_steps=diffusion_config.num_steps,
        schedule=diffusion_config.schedule,
        focal_gamma=diffusion_config.focal_gamma,
        focal_weight=diffusion_config.focal_weight,
        first_step_term=diffusion_config.first_step_term,
        model_posterior=diffusion_config.model_posterior,
        dice_weight=diffusion_config.dice_weight,
        last_step_fraction=diffusion_config.last_step_fraction,
    )
    residual = diffusion_config.parameterization == Parameterization.RESIDUAL
    segmentor_kwargs = dict(model.segmentor_kwargs)
    if segmentor_spec(model.segmentor).fixed_size and "image_size" not in segmentor_kwargs:
        if config.data.image_size is None:
            raise ValueError(
                f"model.segmentor {model.segmentor!r} is built for one input size: set data.image_size or "
                "model.segmentor_kwargs.image_size"
            )
        segmentor_kwargs["image_size"] = config.data.image_size
    segmentor = build_segmentor(model.segmentor, in_channels=in_channels, num_classes=num_classes, **segmentor_kwargs)
    refiner = BBDM(
        image_channels=in_channels,
        num_classes=num_classes,
        model_channels=model.refiner_channels,
        cond_channels=segmentor.feature_channels,
        binary=model.binary,
        xformer=model.xformer,
        prior_flip_rates=diffusion.flip_scales if residual else None,
        **model.refiner_kwargs,
    )
    hidiff = HiDiff(segmentor, refiner, diffusion)
    hidiff.settings = RefineSettings.from_config(diffusion_config)
    return hidiff


def checkpoint_header(config: TrainingConfig) -> dict[str, Any]:
    """The entries every checkpoint starts with: ``format``, ``format_version`` and the configuration as a dict."""
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "config": config.to_dict()}


def read_checkpoint(
    path: str | Path, map_location: str | torch.device | None = "cpu", required: Sequence[str] = MODEL_KEYS
) -> dict[str, Any]:
    """Loads a HiDiff checkpoint, checks its format and brings it to :data:`CHECKPOINT_FORMAT_VERSION`.

    Args:
        path: the checkpoint file.
        map_location: where tensors are placed.
        required: the entries the caller needs (default: those of the model, :data:`MODEL_KEYS`).

    Returns:
        The state dict in the current layout (``format_version`` set to :data:`CHECKPOINT_FORMAT_VERSION`).

    Raises:
        FileNotFoundError: when `path` does not exist.
        ValueError: when the file is not a HiDiff checkpoint (its ``format`` is not :data:`CHECKPOINT_FORMAT`), was
            written in an unknown (newer) format version, or lacks one of the `required` entries; the message names
            the file and what was expected.
    """
    state = load_checkpoint(path, map_location=map_location)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path} is not a HiDiff checkpoint: its format is {state.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r}"
        )
    version = state.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format_version {version!r}; this version of hidiff reads format versions 1 to "
            f"{CHECKPOINT_FORMAT_VERSION} (a file of a newer version needs a newer hidiff)"
        )
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(
            f"checkpoint {path} lacks {', '.join(map(repr, missing))}: expected the entries "
            f"{', '.join(map(repr, required))} (found {', '.join(map(repr, sorted(state)))})"
        )
    if version == 1 and isinstance(state.get("config"), dict):
        # Checkpoints written before the residual output existed hold the paper's direct form.
        state["config"].setdefault("diffusion", {}).setdefault("parameterization", "direct")
    if version < 3 and isinstance(state.get("config"), dict):
        # Before version 3 the sampler settings lived in the configuration only.
        state["sampling"] = RefineSettings.from_config(TrainingConfig.from_dict(state["config"]).diffusion).to_dict()
    state["format_version"] = CHECKPOINT_FORMAT_VERSION
    return state


def load_model(
    checkpoint: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[HiDiff, TrainingConfig]:
    """Rebuilds the HiDiff of a checkpoint (the trainer's ``latest.pt`` / ``best.pt``, or :func:`save_model`'s).

    Args:
        checkpoint: path of the checkpoint; its configuration is stored inside it.
        use_ema: load the refiner's EMA weights (what the trainer validates with), where the file has them, instead
            of the raw ones.
        device: where to put the model.

    Returns:
        The model in eval mode on `device`, with its stored refinement settings (``model.settings``), and its
        configuration.

    Raises:
        FileNotFoundError: when the checkpoint does not exist.
        ValueError: when it is not a HiDiff checkpoint (see :func:`read_checkpoint`), or its weights do not fit the
            model of its configuration.
    """
    state = read_checkpoint(checkpoint, map_location=device)
    config = _entry_config(state, checkpoint)
    if use_ema and "ema" in state:
        ema = state["ema"]
        if not isinstance(ema, dict) or "shadow" not in ema:
            raise ValueError(
                f"checkpoint {checkpoint} has a corrupted 'ema' entry (expected a dict with 'shadow', got "
                f"{sorted(ema) if isinstance(ema, dict) else type(ema).__name__}); load it with use_ema=False "
                "(--no-ema) to use the raw refiner weights"
            )
        refiner_state = weights_entry(ema["shadow"], "ema.shadow", checkpoint)
    else:
        refiner_state = weights_entry(state["refiner"], "refiner", checkpoint)
    for entry in ("segmentor", "refiner"):  # checked even where unused: a damaged file is reported, not half-read
        weights_entry(state[entry], entry, checkpoint)
    in_channels, num_classes = _image_and_class_channels(refiner_state, checkpoint)
    model = build_model(config, in_channels, num_classes)
    _load_weights(model.segmentor, state["segmentor"], "segmentor", checkpoint)
    _load_weights(model.refiner, refiner_state, "refiner", checkpoint)
    if "sampling" in state:
        model.settings = RefineSettings.from_dict(state["sampling"], f"the sampling entry of checkpoint {checkpoint}")
    return model.to(device).eval(), config


def save_model(path: str | Path, model: HiDiff, config: TrainingConfig) -> Path:
    """Writes a model-only checkpoint (header, segmentor and refiner weights, refinement settings) that
    :func:`load_model` reads.

    The file is written atomically (:func:`hidiff.checkpoint.save_checkpoint`); `config` must be the configuration
    `model` was built from (:func:`build_model`): the model it builds is compared with `model` first.

    Returns:
        The path written.

    Raises:
        ValueError: `config` builds another model than `model` (its refiner's constructor arguments, or the names
            and shapes of either network's weights, differ), which the file would then reload as; nothing is
            written.
    """
    _check_config_builds(model, config)
    state = {
        **checkpoint_header(config),
        "segmentor": model.segmentor.state_dict(),
        "refiner": model.refiner.state_dict(),
        "sampling": model.settings.to_dict(),
    }
    return save_checkpoint(path, state)


def weights_entry(value: Any, entry: str, checkpoint: str | Path) -> dict[str, Tensor]:
    """`value` when it is a state dict (names -> tensors), else a ValueError naming the checkpoint and the entry."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()):
        found = type(value).__name__
        if isinstance(value, dict):
            bad = next(k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, Tensor))
            found = f"a dict whose {bad!r} is a {type(value[bad]).__name__}"
        raise ValueError(f"checkpoint {checkpoint}: its {entry!r} entry is corrupted (expected weights, got {found})")
    return value


def _entry_config(state: dict[str, Any], checkpoint: str | Path) -> TrainingConfig:
    """The checkpoint's configuration, or a ValueError naming the file."""
    if not isinstance(state["config"], dict):
        kind = type(state["config"]).__name__
        raise ValueError(f"checkpoint {checkpoint}: its 'config' entry is a {kind}, not a dict")
    try:
        return TrainingConfig.from_dict(state["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint {checkpoint}: its configuration is invalid: {error}") from error


def _check_config_builds(model: HiDiff, config: TrainingConfig) -> None:
    """Raises ValueError naming the differences when `config` does not build `model`'s architecture."""
    expected = build_model(config, model.refiner.image_channels, model.num_classes)
    problems = []
    if hasattr(model.refiner, "config") and expected.refiner.config != model.refiner.config:
        ours, theirs = model.refiner.config, expected.refiner.config
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                problems.append(f"refiner {key}: model {ours.get(key)!r}, config {theirs.get(key)!r}")
    for name in ("segmentor", "refiner"):
        ours = {k: tuple(v.shape) for k, v in getattr(model, name).state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in getattr(expected, name).state_dict().items()}
        if ours != theirs:
            differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            problems.append(f"{name} weights {', '.join(differing[:3])}{' ...' if len(differing) > 3 else ''}")
    if problems:
        raise ValueError(
            "save_model: the configuration does not build this model, so the file would reload as another one ("
            + "; ".join(problems)
            + "): pass the configuration the model was built from"
        )


def _load_weights(module: nn.Module, state: dict[str, Tensor], what: str, checkpoint: str | Path) -> None:
    """``module.load_state_dict(state)``, a mismatch reported as a ValueError naming the checkpoint and the network."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(line.strip() for line in str(error).strip().splitlines()[1:3])
        raise ValueError(
            f"the {what} weights of {checkpoint} do not match the model its configuration builds: {detail}"
        ) from error


def _image_and_class_channels(refiner_state: dict[str, Tensor], checkpoint: str | Path) -> tuple[int, int]:
    """(Cimg, K) from the weights: the refiner's head outputs K maps, its input conv reads Cimg + 2K channels."""
    try:
        num_classes = int(refiner_state["head.conv.weight"].shape[0])
        in_channels = int(refiner_state["input_conv.weight"].shape[1]) - 2 * num_classes
    except KeyError as error:
        raise ValueError(
            f"the refiner weights of {checkpoint} have no {error.args[0]!r}: not a BBDM refiner"
        ) from error
    return in_channels, num_classes
