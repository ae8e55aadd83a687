"""Diagnostics of a trained refiner: per-timestep calibration and the behaviour of the reverse chain.

Two measurements separate the ways refinement can fail:

- Calibration (:func:`timestep_calibration`). For every timestep ``t`` the forward process draws
  ``y_t`` from the ground truth and the segmentor's prior, and the refiner predicts the flips. Per
  ``t``: the true flip rate against the mean ``eps_hat``; the binary cross-entropy of ``eps_hat``
  against that of the best constant (the flip rate itself) and of the prior-only Bayes denoiser
  ``(1 - abar_t) |y_t - p|`` (what a refiner knows from the prior alone); the Dice of ``y_t`` and
  of the one-step estimate ``y0_hat > 0.5``. A refiner whose BCE is not below the prior-only
  denoiser's has learned nothing the segmentor did not know. A reliability table pools every
  prediction into bins of ``eps_hat``.
- The chain (:func:`chain_statistics`). One reverse run of the sampler per image: at every visited
  timestep the Dice of the state, of its one-step estimate, and the fraction of pixels the step
  flipped. A calibrated refiner whose chain drifts is a sampler problem; one that starts wrong is a
  training problem.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .diffusion import Sampler, prior_flip_rate, q_sample, sample_chain
from .diffusion.losses import bernoulli_nll
from .models import HiDiff

__all__ = [
    "RELIABILITY_EDGES",
    "ChainStep",
    "Diagnostics",
    "TimestepCalibration",
    "chain_statistics",
    "diagnose",
    "format_diagnostics",
    "plot_chain",
    "plot_reliability",
    "timestep_calibration",
    "write_diagnostics",
]

logger = logging.getLogger(__name__)

#: Bin edges of ``eps_hat`` for the reliability table: most predictions are small flip rates, so
#: the bins are roughly logarithmic below 0.1.
RELIABILITY_EDGES = (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)


@dataclass
class TimestepCalibration:
    """Calibration of the refiner at one timestep (means over every pixel of the set).

    Attributes:
        t: the timestep.
        flip_rate: fraction of pixels with ``y_t != y0``.
        mean_eps_hat: the refiner's mean predicted flip probability.
        bce: BCE (nats per pixel) of ``eps_hat`` on the true flips.
        bce_constant: BCE of the best constant predictor (the flip rate): its entropy.
        bce_prior_only: BCE of the prior-only Bayes denoiser ``(1 - abar_t) |y_t - p|``.
        dice_y_t: mean per-image Dice of the noisy state ``y_t``.
        dice_y0_hat: mean per-image Dice of ``|y_t - eps_hat| > 0.5``.
    """

    t: int
    flip_rate: float
    mean_eps_hat: float
    bce: float
    bce_constant: float
    bce_prior_only: float
    dice_y_t: float
    dice_y0_hat: float


@dataclass
class ChainStep:
    """One visited timestep of the reverse chain (means over the images).

    Attributes:
        t: the timestep.
        dice_state: Dice of the chain state ``y_t`` when the refiner is called.
        dice_y0_hat: Dice of the one-step estimate ``|y_t - eps_hat| > 0.5``.
        flipped: fraction of pixels that differ from the previous state (from ``y ~ Bernoulli(p)``
            for the first visit: 0).
        mean_eps_hat: mean predicted flip probability.
    """

    t: int
    dice_state: float
    dice_y0_hat: float
    flipped: float
    mean_eps_hat: float


@dataclass
class Diagnostics:
    """Everything :func:`diagnose` measured.

    Attributes:
        timesteps: per-timestep calibration, t ascending.
        chain: per visited step of one reverse run, in the order visited.
        reliability: rows ``{"low", "high", "count", "mean_eps_hat", "flip_rate"}`` per bin of eps_hat.
        dice_segmentor: mean per-image Dice of the prior thresholded at 0.5.
        dice_chain: mean per-image Dice of the chain's final ``y0_hat > 0.5`` (one sample).
        num_images: images measured.
        settings: sampler and seed used.
    """

    timesteps: list[TimestepCalibration]
    chain: list[ChainStep]
    reliability: list[dict[str, float]]
    dice_segmentor: float
    dice_chain: float
    num_images: int
    settings: dict = field(default_factory=dict)

    @property
    def learned_beyond_prior(self) -> bool:
        """True when the refiner's BCE is below the prior-only denoiser's at every timestep."""
        return all(row.bce < row.bce_prior_only for row in self.timesteps)

    def to_dict(self) -> dict:
        """Plain nested dict (JSON-serialisable)."""
        return asdict(self) | {"learned_beyond_prior": self.learned_beyond_prior}


def _foreground(mask: Tensor) -> Tensor:
    """The channels scored by Dice: the only one for K = 1, all but the background for K > 1."""
    return mask if mask.shape[1] == 1 else mask[:, 1:]


def _dice_per_image(pred: Tensor, target: Tensor) -> Tensor:
    """float64 ``(B,)`` Dice of binary ``(B, K, H, W)`` maps over the foreground channels (1 when both are empty)."""
    pred, target = _foreground(pred).flatten(1).double(), _foreground(target).flatten(1).double()
    overlap = (pred * target).sum(1)
    total = pred.sum(1) + target.sum(1)
    return torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))


def _binary_entropy(q: float) -> float:
    if q <= 0.0 or q >= 1.0:
        return 0.0
    return -(q * math.log(q) + (1 - q) * math.log1p(-q))


def _loader(dataset: Dataset, max_images: int | None, batch_size: int) -> DataLoader:
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def timestep_calibration(
    model: HiDiff,
    dataset: Dataset,
    *,
    max_images: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[list[TimestepCalibration], list[dict[str, float]], float]:
    """Per-timestep calibration of the refiner on a dataset (see the module docstring).

    Args:
        model: a trained HiDiff (put in eval mode here).
        dataset: contract dicts ``{"image" (C, H, W), "mask" (K, H, W)}`` at the model's resolution.
        max_images: measure only the first images (None: all).
        batch_size: images per batch.
        seed: seed of the forward-process draws.
        device: where to run.
        progress: show a tqdm bar.

    Returns:
        ``(per-timestep rows, reliability rows, segmentor Dice)``.
    """
    model.eval().to(device)
    diffusion = model.diffusion
    steps = diffusion.num_steps
    generator = torch.Generator(device=device).manual_seed(seed)
    sums = torch.zeros(steps, 7, dtype=torch.float64)  # flips, eps_hat, bce, bce_prior, dice_t, dice_hat, pixels
    images = 0
    edges = torch.tensor(RELIABILITY_EDGES, dtype=torch.float64)
    bins = torch.zeros(len(edges) - 1, 3, dtype=torch.float64)  # count, sum eps_hat, sum flips
    dice_segmentor = 0.0
    for batch in tqdm(_loader(dataset, max_images, batch_size), desc="calibration", disable=not progress):
        image, y0 = batch["image"].to(device), batch["mask"].to(device)
        prior, features = model.prior(image)
        dice_segmentor += float(_dice_per_image(diffusion.to_mask(prior), y0).sum())
        images += image.shape[0]
        denoise = model.denoiser(image, prior, features)  # valid at every t
        for t in range(steps):
            t_batch = torch.full((image.shape[0],), t, dtype=torch.int64, device=device)
            abar = diffusion.alphas_cumprod.to(device)[t_batch]
            y_t, eps = q_sample(y0, prior, abar, generator)
            eps_hat = denoise(y_t, t_batch).double()
            eps, y_t64, y0_64 = eps.double(), y_t.double(), y0.double()
            prior_only = prior_flip_rate(y_t64, prior.double(), 1 - abar.double())
            y0_hat = (y_t64 - eps_hat).abs()
            sums[t] += torch.stack(
                [
                    eps.sum(),
                    eps_hat.sum(),
                    bernoulli_nll(eps, eps_hat).sum(),
                    bernoulli_nll(eps, prior_only).sum(),
                    _dice_per_image(y_t64, y0_64).sum() * eps[0].numel(),
                    _dice_per_image((y0_hat > 0.5).double(), y0_64).sum() * eps[0].numel(),
                    torch.tensor(float(eps.numel()), dtype=torch.float64),
                ]
            ).cpu()
            index = torch.bucketize(eps_hat.flatten().cpu(), edges[1:-1], right=True)
            bins[:, 0] += torch.bincount(index, minlength=len(bins)).double()
            bins[:, 1] += torch.bincount(index, eps_hat.flatten().cpu(), minlength=len(bins))
            bins[:, 2] += torch.bincount(index, eps.flatten().cpu(), minlength=len(bins))
    rows = []
    for t in range(steps):
        flips, eps_hat_sum, bce, bce_prior, dice_t, dice_hat, pixels = sums[t].tolist()
        per_image = pixels / images  # Dice sums were weighted by the pixels per image
        rate = flips / pixels
        rows.append(
            TimestepCalibration(
                t=t,
                flip_rate=rate,
                mean_eps_hat=eps_hat_sum / pixels,
                bce=bce / pixels,
                bce_constant=_binary_entropy(rate),
                bce_prior_only=bce_prior / pixels,
                dice_y_t=dice_t / per_image / images,
                dice_y0_hat=dice_hat / per_image / images,
            )
        )
    reliability = [
        {
            "low": float(edges[i]),
            "high": float(edges[i + 1]),
            "count": float(count),
            "mean_eps_hat": float(total / count) if count else float("nan"),
            "flip_rate": float(flips / count) if count else float("nan"),
        }
        for i, (count, total, flips) in enumerate(bins.tolist())
    ]
    return rows, reliability, dice_segmentor / max(images, 1)


@torch.no_grad()
def chain_statistics(
    model: HiDiff,
    dataset: Dataset,
    *,
    steps: int | None = None,
    sampler: Sampler | str = Sampler.DDIM,
    max_images: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[list[ChainStep], float]:
    """Per-step statistics of one reverse run per image (see the module docstring).

    Returns:
        ``(rows in the order visited, Dice of the final y0_hat > 0.5)``.
    """
    model.eval().to(device)
    diffusion = model.diffusion
    timesteps = diffusion.timesteps(steps)
    sums = torch.zeros(len(timesteps), 4, dtype=torch.float64)  # dice state, dice y0_hat, flipped, eps_hat
    images, dice_final, offset = 0, 0.0, 0
    for batch in tqdm(_loader(dataset, max_images, batch_size), desc="chain", disable=not progress):
        image, y0 = batch["image"].to(device), batch["mask"].to(device)
        prior, features = model.prior(image)
        previous: list[Tensor] = []

        def trace(t: int, y_t: Tensor, eps_hat: Tensor, y0=y0, previous=previous) -> None:
            i = len(previous)
            flipped = (y_t != previous[-1]).double().flatten(1).mean(1).sum() if previous else torch.tensor(0.0)
            y0_hat = ((y_t - eps_hat).abs() > 0.5).double()
            sums[i] += torch.stack(
                [
                    _dice_per_image(y_t, y0).sum(),
                    _dice_per_image(y0_hat, y0).sum(),
                    flipped.double(),
                    eps_hat.double().flatten(1).mean(1).sum(),
                ]
            ).cpu()
            previous.append(y_t.clone())

        denoise = model.denoiser(image, prior, features, steps)
        y0_hat, offset = sample_chain(denoise, prior, diffusion.schedule, timesteps, sampler, seed, offset, trace)
        dice_final += float(_dice_per_image(diffusion.to_mask(y0_hat), y0).sum())
        images += image.shape[0]
    rows = [
        ChainStep(
            t=t, dice_state=s[0] / images, dice_y0_hat=s[1] / images, flipped=s[2] / images, mean_eps_hat=s[3] / images
        )
        for t, s in zip(timesteps, sums.tolist(), strict=True)
    ]
    return rows, dice_final / max(images, 1)


def diagnose(
    model: HiDiff,
    dataset: Dataset,
    *,
    steps: int | None = None,
    sampler: Sampler | str = Sampler.DDIM,
    max_images: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Diagnostics:
    """Calibration per timestep and one reverse chain per image (see the module docstring).

    The refiner runs as :meth:`HiDiff.denoiser` gives it: its frozen form (eval mode), the form
    ``hidiff segment`` and ``evaluate`` run.

    Args:
        model: the trained HiDiff.
        dataset: contract dicts at the model's resolution (e.g. the validation split).
        steps, sampler: the sampler whose chain is traced.
        max_images: measure only the first images (None: all).
        batch_size: images per batch.
        seed: seed of the forward-process draws and of the chain.
        device: where to run.
        progress: show tqdm bars.
    """
    common = {"max_images": max_images, "batch_size": batch_size, "seed": seed, "device": device, "progress": progress}
    timesteps, reliability, dice_segmentor = timestep_calibration(model, dataset, **common)
    chain, dice_chain = chain_statistics(model, dataset, steps=steps, sampler=sampler, **common)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))  # type: ignore[arg-type]
    return Diagnostics(
        timesteps=timesteps,
        chain=chain,
        reliability=reliability,
        dice_segmentor=dice_segmentor,
        dice_chain=dice_chain,
        num_images=count,
        settings={"steps": steps, "sampler": str(sampler), "seed": seed},
    )


def format_diagnostics(diagnostics: Diagnostics) -> str:
    """Markdown tables of the calibration per timestep and of the chain."""
    lines = [
        f"{diagnostics.num_images} images; segmentor Dice {diagnostics.dice_segmentor:.4f}, "
        f"one {diagnostics.settings.get('sampler', 'ddim')} chain {diagnostics.dice_chain:.4f}; "
        f"eps BCE below the prior-only denoiser's at every t: {diagnostics.learned_beyond_prior}",
        "",
        "| t | flip rate | mean eps_hat | BCE | BCE constant | BCE prior-only | Dice y_t | Dice y0_hat |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in diagnostics.timesteps:
        lines.append(
            f"| {row.t} | {row.flip_rate:.4f} | {row.mean_eps_hat:.4f} | {row.bce:.4f} | {row.bce_constant:.4f} | "
            f"{row.bce_prior_only:.4f} | {row.dice_y_t:.4f} | {row.dice_y0_hat:.4f} |"
        )
    lines += ["", "| chain t | Dice state | Dice y0_hat | flipped | mean eps_hat |", "|---:|---:|---:|---:|---:|"]
    for step in diagnostics.chain:
        lines.append(
            f"| {step.t} | {step.dice_state:.4f} | {step.dice_y0_hat:.4f} | {step.flipped:.4f} | "
            f"{step.mean_eps_hat:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(diagnostics: Diagnostics, path: str | Path) -> Path:
    """Reliability diagram (observed flip frequency vs mean eps_hat per bin, log axes) and the
    per-timestep flip rate vs mean eps_hat and BCEs; written as PNG."""
    plt = _pyplot()
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4))
    rows = [r for r in diagnostics.reliability if r["count"] > 0]
    floor = 1e-5
    predicted = [max(r["mean_eps_hat"], floor) for r in rows]
    observed = [max(r["flip_rate"], floor) for r in rows]
    left.plot([floor, 1], [floor, 1], color="grey", linestyle="--", label="calibrated")
    left.scatter(predicted, observed, s=[10 + 40 * math.log10(1 + r["count"]) for r in rows], zorder=3)
    left.set(xscale="log", yscale="log", xlabel="mean eps_hat in bin", ylabel="observed flip rate")
    left.set_title("reliability (all t)")
    left.legend()
    t = [row.t for row in diagnostics.timesteps]
    middle.plot(t, [row.flip_rate for row in diagnostics.timesteps], marker="o", label="true flip rate")
    middle.plot(t, [row.mean_eps_hat for row in diagnostics.timesteps], marker="s", label="mean eps_hat")
    middle.set(xlabel="t", ylabel="probability", title="flip rate per timestep")
    middle.legend()
    right.plot(t, [row.bce for row in diagnostics.timesteps], marker="o", label="refiner")
    right.plot(t, [row.bce_prior_only for row in diagnostics.timesteps], marker="s", label="prior-only Bayes")
    right.plot(t, [row.bce_constant for row in diagnostics.timesteps], marker="^", label="constant")
    right.set(xlabel="t", ylabel="BCE (nats / pixel)", title="eps BCE per timestep")
    right.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_chain(diagnostics: Diagnostics, path: str | Path) -> Path:
    """Dice of the chain state and of its one-step estimate, and the fraction flipped, per visited step (PNG)."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    order = range(len(diagnostics.chain))
    labels = [str(step.t) for step in diagnostics.chain]
    left.plot(order, [s.dice_state for s in diagnostics.chain], marker="o", label="state y_t")
    left.plot(order, [s.dice_y0_hat for s in diagnostics.chain], marker="s", label="y0_hat > 0.5")
    left.axhline(diagnostics.dice_segmentor, color="grey", linestyle="--", label="segmentor")
    left.set(xlabel="visited timestep", ylabel="Dice", title="reverse chain")
    left.legend()
    right.bar(order, [s.flipped for s in diagnostics.chain])
    right.set(xlabel="visited timestep", ylabel="fraction of pixels flipped", title="flips per step")
    for axis in (left, right):
        axis.set_xticks(list(order), labels)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_diagnostics(diagnostics: Diagnostics, output_dir: str | Path, prefix: str = "") -> dict[str, Path]:
    """Writes ``{prefix}diagnostics.json``, ``.md``, ``{prefix}reliability.png`` and ``{prefix}chain.png``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": output_dir / f"{prefix}diagnostics.json",
        "markdown": output_dir / f"{prefix}diagnostics.md",
    }
    paths["json"].write_text(json.dumps(diagnostics.to_dict(), indent=2), encoding="utf-8")
    paths["markdown"].write_text(format_diagnostics(diagnostics), encoding="utf-8")
    paths["reliability"] = plot_reliability(diagnostics, output_dir / f"{prefix}reliability.png")
    paths["chain"] = plot_chain(diagnostics, output_dir / f"{prefix}chain.png")
    return paths
