"""The HiDiff trainer: segmentor pre-training and alternate-collaborative training (spec section 5, Alg. 1).

Per alternate iteration, on the same micro-batches:

1. Refiner step. The segmentor is frozen: eval mode, parameters with ``requires_grad=False``, its prior and features
   computed under ``torch.no_grad()``. Timesteps ``t ~ U{0..T-1}``; the refiner is updated with L_Diff (one refiner
   forward per micro-batch); then the refiner's EMA is updated.
2. Segmentor step. The refiner is frozen the same way (eval mode, ``requires_grad=False``, so its parameters get no
   gradient and are not updated), and the segmentor is updated with ``L_Hybrid = L_Disc + lambda_diff * L_Diff``,
   where L_Diff back-propagates into the segmentor through the prior and the features.

Frozen networks run in eval mode: a frozen network is then a fixed function of its weights (running BatchNorm
statistics, no dropout), its BatchNorm statistics are updated only by its own training step (once per sample, not
twice), and the prior the refiner learns from is the one it will see at inference. The trained network is in train
mode (batch statistics), as in ordinary training.

Randomness. Every iteration reseeds torch's global generator and the trainer's two generators (one for timesteps,
one for the forward-process noise) from ``(seed, rank, phase, step)``; the data order is a pure function of the number
of micro-batches consumed (:mod:`hidiff.training.sampler`). A run interrupted and resumed from a checkpoint therefore
reproduces the uninterrupted run exactly (on CPU; on CUDA with ``train.deterministic``). Two generators rather than
one make the random streams independent of how an iteration is split into micro-batches, so gradient accumulation
over n micro-batches of size b sees the same timesteps and noise as one batch of size n * b.

Data parallelism. With a process group of more than one process the segmentor and the refiner are wrapped separately
in DistributedDataParallel. Each DDP forward runs only while its module is the one being trained (the frozen network
is called unwrapped, under no_grad or with ``requires_grad=False``), so each backward reduces exactly the gradients of
the network being updated, and micro-batches before the last run under ``no_sync()``. Each rank sees its own shard of
every batch and its own random streams (the rank is part of the seed); logged losses are averaged over ranks;
rank 0 writes files and runs validation while the others wait.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoint import remove_stale_temporaries, save_checkpoint
from ..config import TrainingConfig
from ..factory import checkpoint_header, read_checkpoint, weights_entry
from ..losses import discriminative_loss_terms
from ..models import HiDiff, RefineSettings, prior_from_logits
from . import distributed
from .ema import EMA
from .logs import PHASES, LossLog
from .sampler import EpochSeededDataset, ResumableBatchSampler
from .schedule import poly_scheduler
from .seeding import derive_seed, get_rng_state, set_rng_state

__all__ = ["RESUME_KEYS", "Trainer", "ValidateFn"]

logger = logging.getLogger(__name__)

#: The entries of a checkpoint that resuming a run reads, besides its ``format`` and ``format_version``.
RESUME_KEYS = (
    "config",
    "segmentor",
    "refiner",
    "ema",
    "optimizers",
    "schedulers",
    "scalers",
    "steps",
    "batches_consumed",
    "world_size",
    "best",
    "rng",
)

ValidateFn = Callable[[HiDiff, str], Mapping[str, float]]
"""``validate_fn(model, phase) -> metrics``: called on rank 0 with the model in eval mode under ``torch.no_grad()``
(with the refiner's EMA weights in the alternate phase when ``train.eval_ema``); ``phase`` is "pretrain" or
"alternate". Returns a flat mapping of metric names to numbers."""

Batch = tuple[torch.Tensor, torch.Tensor]


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    module.train(trainable)
    for param in module.parameters():
        param.requires_grad_(trainable)


class Trainer:
    """Trains a :class:`~hidiff.models.HiDiff` (segmentor + refiner + Bernoulli diffusion).

    Args:
        config: the training configuration (optimiser, schedule, intervals, output directory; the data and model
            sections are used by :func:`~hidiff.training.run_training`, not here).
        model: the HiDiff to train; moved to `device`.
        train_set: map-style dataset of contract dicts ``{"image": (C, H, W), "mask": (K, H, W), "id": str}``.
        val_set: optional validation dataset, evaluated by the default validation (the segmentor alone in the
            pre-training phase, the refined masks in the alternate phase) unless `validate_fn` is given.
        device: where to train; None for ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
        validate_fn: optional :data:`ValidateFn` replacing the default validation.

    Attributes:
        steps: completed iterations per phase, ``{"pretrain": int, "alternate": int}``.
        optimizers: AdamW optimisers ``"pretrain"`` (the segmentor in pre-training), ``"segmentor"`` and
            ``"refiner"`` (alternate phase); each has its own poly schedule over its phase's iterations, so the
            segmentor's learning rate and Adam moments start afresh in the alternate phase.
        batches_consumed: micro-batches taken from the training stream so far (the data position).
        log: the :class:`~hidiff.training.logs.LossLog` (``log.losses(phase, column)`` gives a loss sequence).
        ema: the refiner's :class:`~hidiff.training.ema.EMA`.
        output_dir: where checkpoints, logs and the figure go.
    """

    def __init__(
        self,
        config: TrainingConfig,
        model: HiDiff,
        train_set: Dataset,
        val_set: Dataset | None = None,
        device: str | torch.device | None = None,
        validate_fn: ValidateFn | None = None,
    ) -> None:
        if not isinstance(config, TrainingConfig):
            raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}")
        if not isinstance(model, HiDiff):
            raise TypeError(f"model must be a hidiff.models.HiDiff, got {type(model).__name__}")
        self.config = config
        self.rank = distributed.get_rank()
        self.world_size = distributed.get_world_size()
        self.is_main = self.rank == 0
        if device is None:
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if config.optim.amp and config.optim.amp_dtype == "float16" and self.device.type != "cuda":
            raise ValueError(f"optim.amp_dtype 'float16' needs a CUDA device (got {self.device}); use 'bfloat16'")
        if config.train.deterministic:
            # cuBLAS reads this when its first handle is created; deterministic GEMMs need it set by then.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

        self.model = model.to(self.device)
        self.segmentor: nn.Module = model.segmentor
        self.refiner: nn.Module = model.refiner
        self.diffusion = model.diffusion
        self.train_set = train_set
        self.val_set = val_set
        self.validate_fn = validate_fn if validate_fn is not None else self._default_validate_fn()

        # DDP registers the parameters that require gradients at construction: all of them here.
        _set_trainable(self.segmentor, True)
        _set_trainable(self.refiner, True)
        self._segmentor_ddp = self._wrap(self.segmentor)
        self._refiner_ddp = self._wrap(self.refiner)

        optim = config.optim
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "pretrain": self._adamw(self.segmentor),
            "segmentor": self._adamw(self.segmentor),
            "refiner": self._adamw(self.refiner),
        }
        self.schedulers = {
            name: poly_scheduler(opt, self._horizon(name), optim.poly_power) for name, opt in self.optimizers.items()
        }
        self.amp_dtype = torch.bfloat16 if optim.amp_dtype == "bfloat16" else torch.float16
        use_scaler = optim.amp and self.amp_dtype == torch.float16
        self.scalers = {name: torch.amp.GradScaler(self.device.type, enabled=use_scaler) for name in self.optimizers}
        self.ema = EMA(self.refiner, optim.ema_decay, warmup=optim.ema_warmup)

        self.steps = dict.fromkeys(PHASES, 0)
        self.batches_consumed = 0
        self.best: dict[str, Any] = {"value": None, "step": None}
        self._improved = False  # set by validate() when best_metric improved, consumed by the next save
        self._timestep_generator = torch.Generator(device=self.device)
        self._noise_generator = torch.Generator(device=self.device)

        self.output_dir = Path(config.output_dir)
        self.log = LossLog(self.output_dir, enabled=self.is_main)
        # config.yaml is written when training starts (or at the first save), not here: a trainer built to resume a
        # run must leave that run's files untouched until the checkpoint has loaded.
        self._config_written = False
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.output_dir)

    # ------------------------------------------------------------------ set-up helpers

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=self.config.train.find_unused_parameters
        )

    def _horizon(self, optimizer: str) -> int:
        """Optimiser steps over which the poly schedule of ``optimizer`` decays (its phase's iterations)."""
        train = self.config.train
        iterations = train.pretrain_iterations if optimizer == "pretrain" else train.alternate_iterations
        return max(1, iterations)

    def _adamw(self, module: nn.Module) -> torch.optim.AdamW:
        optim = self.config.optim
        return torch.optim.AdamW(
            module.parameters(), lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
        )

    def _default_validate_fn(self) -> ValidateFn | None:
        if self.val_set is None:
            return None
        val_set, diffusion_config = self.val_set, self.config.diffusion
        batch_size, device = self.config.data.batch_size, self.device

        def validate(model: HiDiff, phase: str) -> dict[str, float]:
            from ..evaluation import evaluate

            # Validation during training scores the configured sampler, the same at every interval (the
            # settings chosen at the end must not decide which checkpoint is best).
            settings = RefineSettings.from_config(diffusion_config).override(seed=self.config.train.seed)
            result = evaluate(
                model,
                val_set,
                settings=settings,
                refine=phase == "alternate",
                batch_size=batch_size,
                device=device,
                progress=False,
            )
            # The refined masks are what HiDiff outputs; the segmentor's own scores are kept under a prefix.
            main = result.refined if result.refined is not None else result.segmentor
            metrics = {key: float(value) for key, value in main.items() if isinstance(value, int | float)}
            if result.refined is not None:
                metrics |= {
                    f"segmentor_{key}": float(value)
                    for key, value in result.segmentor.items()
                    if isinstance(value, int | float)
                }
            if phase == "alternate" and self.config.train.diagnostics_images > 0:
                metrics |= self._calibration_report(model, val_set, settings)
            return metrics

        return validate

    def _calibration_report(self, model: HiDiff, val_set: Dataset, settings) -> dict[str, float]:
        """Refiner diagnostics on the first validation images: figures and tables under
        ``output_dir/diagnostics/alternate_<step>_*``, and summary metrics for the validation log."""
        from ..diagnostics import diagnose, write_diagnostics

        result = diagnose(
            model,
            val_set,
            steps=settings.steps,
            sampler=settings.sampler,
            max_images=self.config.train.diagnostics_images,
            batch_size=self.config.data.batch_size,
            seed=self.config.train.seed,
            device=self.device,
            progress=False,
        )
        step = self.steps["alternate"]
        write_diagnostics(result, self.output_dir / "diagnostics", prefix=f"alternate_{step:06d}_")
        rows = result.timesteps
        report = {
            "eps_bce": sum(r.bce for r in rows) / len(rows),
            "eps_bce_prior_only": sum(r.bce_prior_only for r in rows) / len(rows),
            "eps_bce_gain_min": min(r.bce_prior_only - r.bce for r in rows),
            "chain_dice": result.dice_chain,
        }
        # The prior the refiner learns from (training images, augmented) against the one it will meet.
        from ..prior_errors import compare_splits

        splits = {"train": self.train_set, "val": val_set}
        limits = {"max_images": self.config.train.diagnostics_images, "batch_size": self.config.data.batch_size}
        for errors in compare_splits(model, splits, device=self.device, **limits):
            for key in ("dice", "bce", "false_positive_blobs", "missed_components", "boundary_error_share"):
                report[f"prior_{key}_{errors.split}"] = getattr(errors, key)
        return report

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.config.optim.amp)

    def _loader(self) -> Iterator[Batch]:
        """Micro-batches from the one consumed next, moved to the device (the DataLoader is rebuilt per call)."""
        sampler = ResumableBatchSampler(
            len(self.train_set),  # type: ignore[arg-type]
            self.config.data.batch_size,
            seed=self.config.train.seed,
            rank=self.rank,
            world_size=self.world_size,
            start=self.batches_consumed,
        )
        workers = self.config.data.num_workers
        loader = DataLoader(
            EpochSeededDataset(self.train_set, self.config.train.seed),
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            # Worker base seeds come from this generator, not from (and not advancing) the global one.
            generator=torch.Generator().manual_seed(derive_seed(self.config.train.seed, self.batches_consumed)),
            persistent_workers=False,
        )
        for batch in loader:
            image = batch["image"].to(self.device, non_blocking=True)
            mask = batch["mask"].to(self.device, non_blocking=True)
            yield image, mask

    def _take(self, batches: Iterator[Batch]) -> list[Batch]:
        micro = [next(batches) for _ in range(self.config.optim.grad_accum_steps)]
        self.batches_consumed += len(micro)
        return micro

    def _seed_iteration(self, phase: str) -> None:
        seed = derive_seed(self.config.train.seed, self.rank, PHASES.index(phase), self.steps[phase])
        torch.manual_seed(derive_seed(seed, 0))
        self._timestep_generator.manual_seed(derive_seed(seed, 1))
        self._noise_generator.manual_seed(derive_seed(seed, 2))

    @staticmethod
    def _sync_context(module: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        if isinstance(module, DistributedDataParallel) and not last:
            return module.no_sync()
        return contextlib.nullcontext()

    def _backward(self, name: str, loss: torch.Tensor) -> None:
        self.scalers[name].scale(loss).backward()

    def _optimizer_step(self, name: str, module: nn.Module) -> None:
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        clip = self.config.optim.grad_clip_norm
        if clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(module.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        self.schedulers[name].step()
        optimizer.zero_grad(set_to_none=True)  # frees the gradients until the next step
        if self.world_size > 1:
            # Each rank updated its BatchNorm statistics with its own shard; rank 0's make every replica identical
            # again (the frozen forward of the next step and the EMA then agree across ranks).
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def _lr(self, name: str) -> float:
        return float(self.optimizers[name].param_groups[0]["lr"])

    def _diffusion_loss(self, refiner: nn.Module, image, y0, prior, features):
        t = self.diffusion.sample_timesteps(y0.shape[0], self.device, self._timestep_generator)
        return self.diffusion.training_loss(
            lambda y_t, t_: refiner(image, y_t, prior, t_, features), y0, prior, t=t, generator=self._noise_generator
        )

    # ------------------------------------------------------------------ iterations

    def pretrain_step(self, batches: list[Batch], update: bool = True) -> dict[str, float]:
        """One pre-training step of the segmentor with L_Disc, accumulated over micro-batches.

        Args:
            batches: micro-batches ``(image float32 (B, C, H, W), mask float32 (B, K, H, W))`` on the device.
            update: False leaves the accumulated gradients in ``.grad`` without an optimiser step (for inspection).

        Returns:
            Mean (over micro-batches and ranks) ``loss_disc``, ``loss_ce``, ``loss_dice``.
        """
        _set_trainable(self.segmentor, True)
        self.optimizers["pretrain"].zero_grad(set_to_none=True)
        n, dice_weight = len(batches), self.config.optim.dice_weight
        sums = torch.zeros(3, device=self.device)
        for i, (image, y0) in enumerate(batches):
            with self._sync_context(self._segmentor_ddp, i == n - 1), self._autocast():
                logits, _ = self._segmentor_ddp(image)
                terms = discriminative_loss_terms(logits, y0, dice_weight=dice_weight)
            self._backward("pretrain", terms.total / n)
            sums += torch.stack([t.detach() for t in terms]) / n
        if update:
            self._optimizer_step("pretrain", self.segmentor)
        return dict(zip(("loss_disc", "loss_ce", "loss_dice"), self._mean_over_ranks(sums), strict=True))

    def refiner_step(self, batches: list[Batch], update: bool = True) -> dict[str, float]:
        """Alg. 1 step (1): the refiner learns L_Diff on the frozen segmentor's prior and features; EMA update.

        The segmentor runs in eval mode with ``requires_grad=False`` under ``torch.no_grad()``; one refiner forward
        per micro-batch.

        Args:
            batches: micro-batches ``(image, mask)`` on the device.
            update: False leaves the gradients in ``.grad`` (no optimiser step, no EMA update).

        Returns:
            Mean ``loss_diff_refiner`` (L_Diff), ``loss_kl_refiner`` and ``loss_focal_refiner``.
        """
        _set_trainable(self.segmentor, False)
        _set_trainable(self.refiner, True)
        self.optimizers["refiner"].zero_grad(set_to_none=True)
        n = len(batches)
        sums = torch.zeros(3, device=self.device)
        for i, (image, y0) in enumerate(batches):
            with torch.no_grad(), self._autocast():
                logits, features = self.segmentor(image)
            prior = prior_from_logits(logits.float())
            with self._sync_context(self._refiner_ddp, i == n - 1), self._autocast():
                loss = self._diffusion_loss(self._refiner_ddp, image, y0, prior, features)
            self._backward("refiner", loss.total / n)
            sums += torch.stack([loss.total, loss.kl, loss.focal]).detach() / n
        if update:
            self._optimizer_step("refiner", self.refiner)
            self.ema.update(self.refiner)
        _set_trainable(self.segmentor, True)
        names = ("loss_diff_refiner", "loss_kl_refiner", "loss_focal_refiner")
        return dict(zip(names, self._mean_over_ranks(sums), strict=True))

    def segmentor_step(self, batches: list[Batch], update: bool = True) -> dict[str, float]:
        """Alg. 1 step (2): the segmentor learns ``L_Hybrid = L_Disc + lambda_diff * L_Diff`` with the refiner frozen.

        The refiner runs in eval mode with ``requires_grad=False`` (its parameters get no gradient), but autograd
        goes through it: L_Diff reaches the segmentor through the prior (refiner input and diffusion posteriors) and
        through the features. With ``lambda_diff = 0`` L_Diff is only measured, without gradients.

        Args:
            batches: micro-batches ``(image, mask)`` on the device.
            update: False leaves the gradients in ``.grad`` without an optimiser step.

        Returns:
            Mean ``loss_disc``, ``loss_ce``, ``loss_dice``, ``loss_diff_segmentor`` (L_Diff) and ``loss_hybrid``.
        """
        optim = self.config.optim
        _set_trainable(self.refiner, False)
        _set_trainable(self.segmentor, True)
        self.optimizers["segmentor"].zero_grad(set_to_none=True)
        n = len(batches)
        sums = torch.zeros(5, device=self.device)
        for i, (image, y0) in enumerate(batches):
            with self._sync_context(self._segmentor_ddp, i == n - 1), self._autocast():
                logits, features = self._segmentor_ddp(image)
                disc = discriminative_loss_terms(logits, y0, dice_weight=optim.dice_weight)
                prior = prior_from_logits(logits.float())
                if optim.lambda_diff > 0:
                    diff = self._diffusion_loss(self.refiner, image, y0, prior, features).total
                else:
                    with torch.no_grad():
                        diff = self._diffusion_loss(self.refiner, image, y0, prior, features).total
                hybrid = disc.total + optim.lambda_diff * diff
            self._backward("segmentor", hybrid / n)
            sums += torch.stack([disc.total, disc.ce, disc.dice, diff, hybrid]).detach() / n
        if update:
            self._optimizer_step("segmentor", self.segmentor)
        _set_trainable(self.refiner, True)
        names = ("loss_disc", "loss_ce", "loss_dice", "loss_diff_segmentor", "loss_hybrid")
        return dict(zip(names, self._mean_over_ranks(sums), strict=True))

    def _pretrain_iteration(self, batches: list[Batch]) -> dict[str, float]:
        lr = self._lr("pretrain")
        return self.pretrain_step(batches) | {"lr_segmentor": lr}

    def _alternate_iteration(self, batches: list[Batch]) -> dict[str, float]:
        lrs = {"lr_refiner": self._lr("refiner"), "lr_segmentor": self._lr("segmentor")}
        return self.refiner_step(batches) | self.segmentor_step(batches) | lrs

    def _mean_over_ranks(self, values: torch.Tensor) -> list[float]:
        if self.world_size > 1:
            values = values.clone()
            torch.distributed.all_reduce(values)
            values /= self.world_size
        return [float(v) for v in values.tolist()]

    # ------------------------------------------------------------------ phases

    def pretrain_segmentor(self, iterations: int | None = None) -> list[dict[str, float]]:
        """Pre-trains the segmentor with L_Disc (AdamW, poly decay over ``train.pretrain_iterations``).

        Args:
            iterations: how many iterations to run now (None: all remaining). The phase ends at
                ``train.pretrain_iterations`` completed iterations; a call after that does nothing.

        Returns:
            The logged rows of the iterations run by this call.
        """
        return self._run_phase("pretrain", self.config.train.pretrain_iterations, iterations)

    def train_alternate(self, iterations: int | None = None) -> list[dict[str, float]]:
        """Alternate-collaborative training (Alg. 1; see the module docstring), ``train.alternate_iterations`` in all.

        Args:
            iterations: how many iterations to run now (None: all remaining).

        Returns:
            The logged rows of the iterations run by this call.
        """
        return self._run_phase("alternate", self.config.train.alternate_iterations, iterations)

    def _run_phase(self, phase: str, total: int, iterations: int | None) -> list[dict[str, float]]:
        if iterations is not None and (isinstance(iterations, bool) or iterations < 0):
            raise ValueError(f"iterations must be None or >= 0, got {iterations!r}")
        start = self.steps[phase]
        end = total if iterations is None else min(total, start + iterations)
        if end <= start:
            return []
        self._write_config()
        train = self.config.train
        step_fn = self._pretrain_iteration if phase == "pretrain" else self._alternate_iteration
        rows: list[dict[str, float]] = []
        batches = self._loader()
        progress = tqdm(range(start, end), desc=phase, unit="it", disable=not self.is_main, dynamic_ncols=True)
        began = time.perf_counter()
        for _ in progress:
            self._seed_iteration(phase)
            values = step_fn(self._take(batches))
            self.steps[phase] += 1
            step = self.steps[phase]
            row = {"phase": phase, "step": step, **values}
            rows.append(row)
            self.log.append(row)
            if not all(math.isfinite(v) for k, v in values.items() if k.startswith("loss")):
                raise FloatingPointError(f"non-finite loss at {phase} iteration {step}: {values}")
            progress.set_postfix({k[5:]: f"{v:.4f}" for k, v in values.items() if k.startswith("loss_")}, refresh=False)
            if step % train.log_interval == 0 or step == end:
                logger.info(
                    "%s %d/%d (%.2f s/it) %s",
                    phase,
                    step,
                    total,
                    (time.perf_counter() - began) / (step - start),
                    " ".join(f"{k}={v:.4g}" for k, v in values.items()),
                )
            improved = False
            if (train.eval_interval and step % train.eval_interval == 0) or step == total:
                self.validate(phase)
                improved = self._improved
            if improved or (train.checkpoint_interval and step % train.checkpoint_interval == 0) or step == end:
                self.save(best=improved)
        progress.close()
        return rows

    # ------------------------------------------------------------------ validation and checkpoints

    def validate(self, phase: str = "alternate") -> dict[str, float] | None:
        """Runs the validation hook on rank 0 (the others wait) and logs its metrics.

        In the alternate phase it tracks ``train.best_metric``; an improvement marks the next checkpoint as best.

        Returns:
            The metrics on rank 0, None elsewhere or without a hook.
        """
        self._improved = False
        if self.validate_fn is None:
            return None
        metrics: dict[str, float] | None = None
        if self.is_main:
            use_ema = phase == "alternate" and self.config.train.eval_ema
            self.model.eval()
            with self.ema.apply_to(self.refiner) if use_ema else contextlib.nullcontext(), torch.no_grad():
                metrics = {key: float(value) for key, value in self.validate_fn(self.model, phase).items()}
            self.log.append_validation({"phase": phase, "step": self.steps[phase], **metrics})
            logger.info(
                "validation %s %d: %s", phase, self.steps[phase], " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            )
            self._track_best(phase, metrics)
        distributed.barrier()
        return metrics

    def _track_best(self, phase: str, metrics: Mapping[str, float]) -> None:
        # Only the alternate phase competes for best.pt: before it, the refiner that the full model uses is untrained.
        name, mode = self.config.train.best_metric, self.config.train.best_mode
        if phase != "alternate":
            return
        if name not in metrics:
            logger.warning("validation returned no %r metric (got %s): best.pt is not tracked", name, sorted(metrics))
            return
        value = metrics[name]
        best = self.best["value"]
        if math.isfinite(value) and (best is None or (value > best if mode == "max" else value < best)):
            self.best = {"value": value, "step": self.steps[phase]}
            self._improved = True

    def select_sampling(self) -> RefineSettings | None:
        """Chooses the model's refinement settings on the validation split once training is complete.

        On rank 0, with the weights the checkpoints' users get (the refiner's EMA when ``train.eval_ema``), it runs
        :func:`hidiff.selection.select_settings` over ``train.selection_steps x train.selection_ensembles`` and
        stores the result as ``model.settings`` and in ``latest.pt``. ``best.pt``, when it holds an earlier model,
        gets its own choice, made with its own weights. Does nothing without a validation split, with
        ``train.select_sampling`` off, before the alternate phase is complete, or when the settings were already
        chosen (a resumed, finished run).

        Returns:
            The settings chosen for the final model on rank 0, None elsewhere or when nothing was done.
        """
        train = self.config.train
        done = self.steps["alternate"] >= train.alternate_iterations
        if self.val_set is None or not train.select_sampling or not done or self.model.settings.source == "validation":
            return None
        chosen = None
        if self.is_main:
            from ..factory import load_model
            from ..selection import format_selection, select_settings, store_settings

            def choose(model: HiDiff) -> RefineSettings:
                model.eval()
                return select_settings(
                    model,
                    self.val_set,
                    steps=train.selection_steps,
                    ensembles=train.selection_ensembles,
                    sampler=self.config.diffusion.sampler,
                    seed=train.seed,
                    split=self.config.data.val_split,
                    batch_size=self.config.data.batch_size,
                    device=self.device,
                    progress=False,
                )

            with self.ema.apply_to(self.refiner) if train.eval_ema else contextlib.nullcontext():
                chosen = choose(self.model)
            self.model.settings = chosen
            logger.info("\n%s", format_selection(chosen, self.diffusion.num_steps))
        path = self.save()
        best_path = self.output_dir / "best.pt"
        if self.is_main and best_path.is_file():
            if self.best.get("step") == self.steps["alternate"]:
                best_settings = chosen
            else:
                best_model, _ = load_model(best_path, use_ema=train.eval_ema, device=self.device)
                best_settings = choose(best_model)
                logger.info("best.pt (alternate step %s): %s", self.best.get("step"), best_settings.describe())
            store_settings(best_path, best_settings)
        if path is not None:
            logger.info("refinement settings stored in %s", path)
        return chosen

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (tensors and primitive containers only)."""
        return {
            **checkpoint_header(self.config),
            "segmentor": self.segmentor.state_dict(),
            "refiner": self.refiner.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
            "scalers": {name: scaler.state_dict() for name, scaler in self.scalers.items()},
            "steps": dict(self.steps),
            "batches_consumed": self.batches_consumed,
            "world_size": self.world_size,
            "best": dict(self.best),
            "rng": get_rng_state(),
            "sampling": self.model.settings.to_dict(),
        }

    def _write_config(self) -> None:
        """Writes ``config.yaml`` on rank 0, once per trainer."""
        if self.is_main and not self._config_written:
            self.config.save_yaml(self.output_dir / "config.yaml")
        self._config_written = True

    def save(self, best: bool = False) -> Path | None:
        """Writes ``latest.pt`` (and ``best.pt`` when `best`) atomically on rank 0, and refreshes the loss figure.

        Returns:
            The path of latest.pt on rank 0, None elsewhere.
        """
        path = None
        self._write_config()
        if self.is_main:
            state = self.state_dict()
            path = save_checkpoint(self.output_dir / "latest.pt", state)
            if best:
                save_checkpoint(self.output_dir / "best.pt", state)
                logger.info("new best %s = %.4g", self.config.train.best_metric, self.best["value"])
            self.log.plot()
        distributed.barrier()
        return path

    def resume(self, path: str | Path) -> None:
        """Restores a checkpoint written by :meth:`save`: models, optimisers, LR schedulers, gradient scalers, EMA,
        step counters, data position, best score and RNG states; the logs are cut back to the checkpoint's steps.

        Raises:
            FileNotFoundError: when the checkpoint does not exist.
            ValueError: when the file is not a trainer checkpoint of a known format version
                (:func:`hidiff.factory.read_checkpoint`).
        """
        state = read_checkpoint(path, map_location=self.device, required=RESUME_KEYS)
        try:
            self._restore(state, path)
        except (KeyError, TypeError, AttributeError, IndexError) as error:
            # A damaged entry (wrong type, a missing inner key): name the file, not only the key.
            raise ValueError(
                f"cannot resume from {path}: a corrupted entry ({type(error).__name__}: {error})"
            ) from error
        logger.info("resumed %s at %s", path, ", ".join(f"{p} {s}" for p, s in self.steps.items()))

    def _restore(self, state: dict[str, Any], path: str | Path) -> None:
        """Loads every entry of a checkpoint state (see :meth:`resume`)."""
        for entry, weights in (("segmentor", state["segmentor"]), ("refiner", state["refiner"])):
            weights_entry(weights, entry, path)
        if not isinstance(state["ema"], dict) or "shadow" not in state["ema"]:
            raise ValueError(f"cannot resume from {path}: its 'ema' entry is corrupted (no 'shadow')")
        weights_entry(state["ema"]["shadow"], "ema.shadow", path)
        changed = _changed_keys(state["config"], self.config.to_dict())
        if changed:
            logger.warning("resuming %s with a different configuration: %s", path, ", ".join(changed))
        if state["world_size"] != self.world_size:
            logger.warning(
                "checkpoint was written by %d process(es), resuming with %d: the data order differs from the "
                "uninterrupted run",
                state["world_size"],
                self.world_size,
            )
        self.segmentor.load_state_dict(state["segmentor"])
        self.refiner.load_state_dict(state["refiner"])
        self.ema.load_state_dict(state["ema"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
            # The saved PolyLambda carries the old run's horizon; a resumed run decays over the
            # iterations configured now (a longer run must not sit at lr 0 after the old end).
            for poly in sched.lr_lambdas:
                poly.iterations = self._horizon(name)
            for group, base_lr, poly in zip(
                self.optimizers[name].param_groups, sched.base_lrs, sched.lr_lambdas, strict=True
            ):
                group["lr"] = base_lr * poly(sched.last_epoch)
        for name, scaler in self.scalers.items():
            scaler.load_state_dict(state["scalers"][name])
        self.steps = {phase: int(state["steps"][phase]) for phase in PHASES}
        self.batches_consumed = int(state["batches_consumed"])
        self.best = dict(state["best"])
        self.model.settings = RefineSettings.from_dict(state["sampling"], f"the sampling entry of {path}")
        set_rng_state(state["rng"])
        self.log.restore(self.steps)


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b and key != "output_dir":
            changed.append(f"{prefix}{key}")
    return changed
