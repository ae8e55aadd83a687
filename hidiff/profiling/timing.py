"""Timing of Table XI's methods on this CPU at batch 1: medians of repeated runs after one warm-up.

The segmentor's forward, one denoiser forward multiplied by the steps for the diffusion baselines, and for HiDiff the
whole sampling loop (real refiner in fp32; binary refiner on the packed kernels through the frozen refiner, and the
same binary refiner simulated in float, as the public code runs it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hidiff_kernels.nn import packed_kernels

from ..models import FrozenBBDM, HiDiff

__all__ = ["Timing", "median_seconds", "time_denoiser", "time_forward", "time_hidiff"]


@dataclass(frozen=True)
class Timing:
    """Measured CPU seconds of one inference at batch 1 (medians).

    Attributes:
        segmentor_s: the segmentor's forward (0 without a segmentor).
        refinement_s: all sampling steps (``steps x`` one denoiser forward, or the sampling loop).
        how: how ``refinement_s`` was obtained.
        refinement_float_s: binary refiner only: the same refinement with the binary layers
            simulated in float (``packed_kernels(False)``); None otherwise.
    """

    segmentor_s: float
    refinement_s: float
    how: str
    refinement_float_s: float | None = None

    @property
    def total_s(self) -> float:
        return self.segmentor_s + self.refinement_s

    @property
    def total_float_s(self) -> float | None:
        return None if self.refinement_float_s is None else self.segmentor_s + self.refinement_float_s


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after one untimed warm-up call
    (it packs binary weights and warms the allocator, one-off costs of a deployment)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_forward(module: nn.Module, inputs: Sequence[Tensor], repeats: int) -> float:
    """Median seconds of ``module(*inputs)`` without autograd (see :func:`median_seconds`)."""
    with torch.no_grad():
        return median_seconds(lambda: module(*inputs), repeats)


def time_denoiser(model: nn.Module, inputs: Sequence[Tensor], steps: int, segmentor_s: float, repeats: int) -> Timing:
    """A diffusion baseline: one denoiser forward on ``inputs`` timed and multiplied by ``steps``.

    Args:
        model: the denoiser in eval mode.
        inputs: its example inputs (batch 1).
        steps: sampling steps of one inference.
        segmentor_s: seconds of the segmentor it starts from (0 without one).
        repeats: timed runs (the median is kept).
    """
    forward = time_forward(model, inputs, repeats)
    return Timing(segmentor_s, forward * steps, f"1 denoiser forward × {steps}")


def time_hidiff(
    model: HiDiff,
    image: Tensor,
    prior: Tensor,
    features: Sequence[Tensor],
    *,
    steps: int,
    binary: bool,
    segmentor_s: float,
    repeats: int,
) -> Timing:
    """HiDiff's whole sampling loop from the segmentor's outputs.

    Args:
        model: HiDiff in eval mode.
        image: float ``(1, Cimg, S, S)``.
        prior: float ``(1, K, S, S)``, the segmentor's prior for ``image``.
        features: the segmentor's 4 features for ``image`` (H/4..H/32).
        steps: sampling steps.
        binary: the refiner is binary: timed on the packed kernels through the frozen refiner (freezing is a
            one-off deployment step, not timed), and again simulated in float (``packed_kernels(False)``).
        segmentor_s: seconds of the segmentor's forward.
        repeats: timed runs per measurement (the median is kept).
    """
    features = list(features)

    def refine(frozen: FrozenBBDM | bool = False) -> Tensor:
        return model.refine_from_prior(image, prior, features, steps=steps, frozen=frozen)

    if not binary:
        return Timing(segmentor_s, median_seconds(refine, repeats), f"sampling loop, {steps} steps, fp32")
    frozen = model.freeze(steps)
    packed = median_seconds(lambda: refine(frozen), repeats)
    with packed_kernels(False):
        simulated = median_seconds(refine, repeats)
    how = f"sampling loop, {steps} steps, packed kernels (frozen refiner)"
    return Timing(segmentor_s, packed, how, refinement_float_s=simulated)
