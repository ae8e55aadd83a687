"""Run configuration: plain dataclasses with a strict YAML round trip.

Training reads every section; a checkpoint stores the whole configuration, and inference rebuilds the model from its
``data``, ``model`` and ``diffusion`` sections (:mod:`hidiff.factory`), so this module belongs to neither side.

A configuration file has five sections and one top-level key; every key is optional (the defaults below apply)::

    data:        # which dataset and how it is batched
      name: kvasir            # a name known to hidiff.data.build_dataset ("synthetic" needs no root)
      root: /data/Kvasir-SEG  # dataset folder (null for "synthetic")
      image_size: 256         # side of the (square) images; null: the reader's own default (DRIVE and
                              # CHASE_DB1: native resolution with 256 training crops; Synapse: 256 train, 512 test)
      batch_size: 32          # per process and per micro-batch: the effective batch is
                              # batch_size * grad_accum_steps * world size
      num_workers: 4          # DataLoader worker processes
      train_split: train
      val_split: val          # null: no validation set
      kwargs: {}              # further keyword arguments for build_dataset
    model:
      segmentor: unet         # "unet", "merit" or "timm:<backbone>" (hidiff.models.build_segmentor)
      segmentor_kwargs: {}    # further keyword arguments of the segmentor (merit: image_size defaults
                              # to data.image_size)
      refiner_channels: 128   # base width C of the BBDM refiner
      binary: true            # binarised refiner (BBDM_binary) or the real-valued one
      xformer: true           # the X-Former between the refiner bottleneck and the deepest segmentor feature
      refiner_kwargs: {}      # further keyword arguments of hidiff.models.BBDM
    diffusion:
      num_steps: 10           # T
      schedule: cosine        # "cosine" (paper, squared) or "cosine-unsquared" (public code)
      sampler: ddim           # sampler used by validation: "ddim" or "ancestral"
      sample_steps: null      # respaced number of sampling steps at validation (null: all T)
      ensemble: 16            # samples averaged per image (validation, and evaluate/segment by default)
      parameterization: residual  # refiner output: "residual" (logit correction of the prior-only Bayes
                                  # denoiser (1 - abar_t)|y_t - p|) or "direct" (the paper's sigmoid(head))
      focal_gamma: 0.0        # eps loss: 0 is BCE (a proper scoring rule, calibrated eps_hat); the paper's focal: 2
      focal_weight: 1.0       # lambda_focal, the weight of the eps loss
      first_step_term: y0_hat # t = 0 term: NLL of y0 under "y0_hat" (public code) or the "posterior" (Eq. 7)
      model_posterior: mixture  # p(y_{t-1} | y_t) from y0_hat in the KL and the ancestral sampler: "mixture" of
                                # the exact posteriors (Bayes) or the paper's "plugin" into Eq. 7
      dice_weight: 0.0        # weight of a soft Dice loss on y0_hat in L_Diff (0: the paper's loss)
      last_step_fraction: 0.0 # fraction of training timesteps drawn at t = T-1, the step a one-step sampler uses
                              # (the rest uniform; 0: uniform, the paper's; 1: a one-pass refiner)
    optim:
      lr: 1.0e-4              # AdamW learning rate (YAML needs the "1.0e-4" form; "1e-4" strings are accepted too)
      weight_decay: 0.01
      betas: [0.9, 0.999]
      poly_power: 0.9         # lr * (1 - step / iterations) ** poly_power, per phase
      ema_decay: 0.9999       # EMA of the refiner
      ema_warmup: false       # use min(ema_decay, (1 + n) / (10 + n)) for the n-th update
      grad_accum_steps: 1     # micro-batches per optimiser step
      grad_clip_norm: null    # clip the global gradient norm of each optimiser step (null: no clipping)
      amp: false              # torch.autocast for forward passes
      amp_dtype: bfloat16     # "bfloat16" or "float16" (float16 only on CUDA, with a gradient scaler)
      lambda_diff: 1.0        # weight of L_Diff in L_Hybrid (the paper's 1; 0 disables the collaboration)
      dice_weight: 1.0        # lambda_Dice in L_Disc
    train:
      pretrain_iterations: 40000   # segmentor pre-training with L_Disc
      alternate_iterations: 40000  # alternate-collaborative iterations (Alg. 1)
      log_interval: 50             # iterations between log lines (the CSV/JSON logs get every iteration)
      eval_interval: 1000          # iterations between validations (0: only at the end of each phase)
      checkpoint_interval: 1000    # iterations between checkpoints (0: only at the end of each call)
      best_metric: dice            # validation metric that selects best.pt ...
      best_mode: max               # ... "max" or "min"
      eval_ema: true               # validate with the EMA weights of the refiner
      diagnostics_images: 32       # validation images for the refiner's calibration figures (0: none)
      seed: 0
      deterministic: false         # torch.use_deterministic_algorithms (exact resumption on CUDA)
      find_unused_parameters: false  # DistributedDataParallel's option, for models with unused branches
      select_sampling: true        # at the end, choose the model's refinement settings on the validation split
                                   # (stored in the checkpoints; refinement off if no setting beats the segmentor)
      selection_steps: [1, 2, 5, null]  # reverse-step counts tried (null: all T) ...
      selection_ensembles: [1, 4, 16]   # ... times these ensemble sizes, with diffusion.sampler
    output_dir: runs/hidiff

Unknown keys raise ValueError naming them (e.g. ``optim.lrr``), so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .diffusion.modes import FirstStepTerm, ModelPosterior, Parameterization, Sampler

#: Image sides the models accept are multiples of this (features at H/4..H/32).
SIZE_MULTIPLE = 32

__all__ = [
    "SIZE_MULTIPLE",
    "DataConfig",
    "DiffusionConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainingConfig",
]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class DataConfig:
    """Dataset and batching (see the module docstring for every key)."""

    name: str = "synthetic"
    root: str | None = None
    image_size: int | None = 256
    batch_size: int = 32
    num_workers: int = 4
    train_split: str = "train"
    val_split: str | None = "val"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(
            self.image_size is None or (self.image_size > 0 and self.image_size % SIZE_MULTIPLE == 0),
            f"data.image_size must be null or a positive multiple of {SIZE_MULTIPLE} (the models' deepest features "
            f"are at 1/{SIZE_MULTIPLE} of the input), got {self.image_size}",
        )
        _require(self.batch_size > 0, f"data.batch_size must be > 0, got {self.batch_size}")
        _require(
            not (self.batch_size == 1 and self.image_size == SIZE_MULTIPLE),
            f"data.batch_size 1 at data.image_size {SIZE_MULTIPLE}: the deepest features are 1x1, and BatchNorm in "
            "training needs more than one value per channel; use batch_size >= 2 or image_size >= 64",
        )
        _require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")

    def dataset_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``hidiff.data.build_dataset``: ``image_size`` only when it is set, then ``kwargs``."""
        size = {} if self.image_size is None else {"image_size": self.image_size}
        return {**size, **self.kwargs}


@dataclass
class ModelConfig:
    """Segmentor and refiner architecture."""

    segmentor: str = "unet"
    segmentor_kwargs: dict[str, Any] = field(default_factory=dict)
    refiner_channels: int = 128
    binary: bool = True
    xformer: bool = True
    refiner_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.refiner_channels > 0, f"model.refiner_channels must be > 0, got {self.refiner_channels}")


@dataclass
class DiffusionConfig:
    """Bernoulli diffusion process and the sampler used for validation."""

    num_steps: int = 10
    schedule: str = "cosine"
    sampler: str = "ddim"
    sample_steps: int | None = None
    ensemble: int = 16
    parameterization: str = "residual"
    focal_gamma: float = 0.0
    focal_weight: float = 1.0
    first_step_term: str = "y0_hat"
    model_posterior: str = "mixture"
    dice_weight: float = 0.0
    last_step_fraction: float = 0.0

    def __post_init__(self) -> None:
        _require(self.num_steps > 0, f"diffusion.num_steps must be > 0, got {self.num_steps}")
        # Plain strings in the configuration (YAML); each is checked by its mode's one parser.
        self.sampler = Sampler.parse(self.sampler, "diffusion.sampler").value
        self.parameterization = Parameterization.parse(self.parameterization, "diffusion.parameterization").value
        self.first_step_term = FirstStepTerm.parse(self.first_step_term, "diffusion.first_step_term").value
        self.model_posterior = ModelPosterior.parse(self.model_posterior, "diffusion.model_posterior").value
        _require(
            self.sample_steps is None or 0 < self.sample_steps <= self.num_steps,
            f"diffusion.sample_steps must be null or in 1..num_steps={self.num_steps}, got {self.sample_steps}",
        )
        _require(self.ensemble > 0, f"diffusion.ensemble must be > 0, got {self.ensemble}")
        _require(self.focal_gamma >= 0, f"diffusion.focal_gamma must be >= 0, got {self.focal_gamma}")
        _require(self.dice_weight >= 0, f"diffusion.dice_weight must be >= 0, got {self.dice_weight}")
        _require(
            0 <= self.last_step_fraction <= 1,
            f"diffusion.last_step_fraction must be in [0, 1], got {self.last_step_fraction}",
        )
        _require(self.focal_weight >= 0, f"diffusion.focal_weight must be >= 0, got {self.focal_weight}")


@dataclass
class OptimConfig:
    """Optimisers, schedules, EMA, precision and loss weights."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    poly_power: float = 0.9
    ema_decay: float = 0.9999
    ema_warmup: bool = False
    grad_accum_steps: int = 1
    grad_clip_norm: float | None = None
    amp: bool = False
    amp_dtype: str = "bfloat16"
    lambda_diff: float = 1.0
    dice_weight: float = 1.0

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optim.betas must be two numbers in [0, 1), got {self.betas}",
        )
        _require(self.poly_power >= 0, f"optim.poly_power must be >= 0, got {self.poly_power}")
        _require(0 <= self.ema_decay < 1, f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")
        _require(self.grad_accum_steps > 0, f"optim.grad_accum_steps must be > 0, got {self.grad_accum_steps}")
        _require(
            self.grad_clip_norm is None or self.grad_clip_norm > 0,
            f"optim.grad_clip_norm must be null or > 0, got {self.grad_clip_norm}",
        )
        _require(
            self.amp_dtype in ("bfloat16", "float16"),
            f"optim.amp_dtype must be 'bfloat16' or 'float16', got {self.amp_dtype}",
        )
        _require(self.lambda_diff >= 0, f"optim.lambda_diff must be >= 0, got {self.lambda_diff}")
        _require(self.dice_weight >= 0, f"optim.dice_weight must be >= 0, got {self.dice_weight}")


@dataclass
class TrainConfig:
    """Iteration counts, intervals, checkpoint selection and seeding."""

    pretrain_iterations: int = 40000
    alternate_iterations: int = 40000
    log_interval: int = 50
    eval_interval: int = 1000
    checkpoint_interval: int = 1000
    best_metric: str = "dice"
    best_mode: str = "max"
    eval_ema: bool = True
    diagnostics_images: int = 32
    seed: int = 0
    deterministic: bool = False
    find_unused_parameters: bool = False
    select_sampling: bool = True
    selection_steps: list[int | None] = field(default_factory=lambda: [1, 2, 5, None])
    selection_ensembles: list[int] = field(default_factory=lambda: [1, 4, 16])

    def __post_init__(self) -> None:
        for name in (
            "pretrain_iterations",
            "alternate_iterations",
            "eval_interval",
            "checkpoint_interval",
            "diagnostics_images",
        ):
            _require(getattr(self, name) >= 0, f"train.{name} must be >= 0, got {getattr(self, name)}")
        _require(self.log_interval > 0, f"train.log_interval must be > 0, got {self.log_interval}")
        _require(self.best_mode in ("max", "min"), f"train.best_mode must be 'max' or 'min', got {self.best_mode}")
        _require(
            len(self.selection_steps) > 0 and all(s is None or s > 0 for s in self.selection_steps),
            f"train.selection_steps must be a non-empty list of step counts > 0 or null, got {self.selection_steps}",
        )
        _require(
            len(self.selection_ensembles) > 0 and all(k > 0 for k in self.selection_ensembles),
            f"train.selection_ensembles must be a non-empty list of ensemble sizes > 0, got {self.selection_ensembles}",
        )


@dataclass
class TrainingConfig:
    """The whole configuration of a training run.

    Attributes:
        data, model, diffusion, optim, train: the sections (see the module docstring).
        output_dir: folder receiving checkpoints (latest.pt, best.pt), config.yaml, the loss logs and figure.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/hidiff"

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (str, int, float, bool, None, list, dict only): YAML- and torch.load-safe."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Builds a configuration from a (possibly partial) nested dict; missing keys take their defaults.

        Raises:
            ValueError: on an unknown key (named with its section, e.g. ``optim.lrr``), a value of the wrong type,
                or an out-of-range value.
        """
        return _from_dict(cls, data, "")

    def save_yaml(self, path: str | Path) -> Path:
        """Writes the full configuration (every key, defaults included) as YAML and returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path

    @classmethod
    def load_yaml(cls, path: str | Path) -> TrainingConfig:
        """Reads a YAML configuration (see :meth:`from_dict`); an empty file gives the defaults.

        Raises:
            FileNotFoundError: when the file does not exist.
            ValueError: on invalid content.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"configuration file {path} does not exist")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return cls.from_dict({} if data is None else data)


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the configuration"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in names]
    if unknown:
        raise ValueError(
            f"unknown configuration key {prefix}{unknown[0]!s}; valid keys of {where}: {', '.join(sorted(names))}"
        )
    kwargs = {key: _coerce(value, hints[key], f"{prefix}{key}") for key, value in data.items()}
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Checks `value` against the annotation `hint` and converts int -> float and numeric strings -> float."""
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, f"{name}.")
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _coerce(value, inner, name)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise ValueError(f"{name} must be a mapping with string keys, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_coerce(item, inner, f"{name}[{i}]") for i, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        # PyYAML reads "1e-4" (no dot) as a string; accept numeric strings rather than surprise the user.
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        else:
            number = float(value)
        # YAML reads ".inf" and ".nan" as numbers; no setting means them, and they fail late (in training).
        if not math.isfinite(number):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported configuration annotation {hint!r} for {name}")
