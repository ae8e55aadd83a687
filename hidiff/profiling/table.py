"""Table XI's rows and their counting: which networks each method runs, and their FLOPs, BOPs and storage.

Every network is counted once, with one forward under :func:`hidiff_kernels.counting.count`, and its
cost multiplied by the number of times an inference runs it (HIDIFF_SPEC section 8):

- MERIT (a segmentor): one forward;
- BerDiff, MedSegDiff-V2 (denoisers without a segmentor): ``denoiser x steps``; MedSegDiff-V2's
  condition network runs inside every denoiser forward and is counted there;
- PD-DDPM (starts from a segmentor's mask): ``MERIT + denoiser x steps``;
- HiDiff, real or binary refiner: ``segmentor + refiner x steps`` (the segmentor is MERIT by
  default, or the project's light U-Net; both from :func:`hidiff.models.build_segmentor`).

FLOPs are real multiply-accumulates, BOPs binary ones, ``OPs = FLOPs + BOPs / 64``; storage is 1 bit
per binary weight and 32 bits per real parameter, shown as ``segmentor + refiner`` in MB (10^6 bytes).
With ``timed=True`` each method is also timed (:mod:`.timing`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hidiff_kernels.counting import Counts, count

from ..diffusion import BernoulliDiffusion
from ..models import BBDM, HiDiff, build_segmentor, prior_from_logits, segmentor_spec
from ..models.baselines import BASELINES, TABLE_XI_IMAGE_SIZE, TABLE_XI_STEPS
from ..models.baselines.registry import segmentor_inputs
from .timing import Timing, time_denoiser, time_forward, time_hidiff

__all__ = [
    "BYTES_PER_MB",
    "GIGA10",
    "METHODS",
    "METHOD_NAMES",
    "SEGMENTORS",
    "SEGMENTOR_NAMES",
    "MethodCost",
    "ProfileSettings",
    "Ratio",
    "claimed_ratios",
    "profile_methods",
]

logger = logging.getLogger(__name__)

#: The rows of Table XI, in order.
METHODS = ("merit", "berdiff", "pd_ddpm", "medsegdiff_v2", "hidiff_real", "hidiff_binary")
#: Display names of the rows.
METHOD_NAMES = {
    "merit": "MERIT",
    "berdiff": "BerDiff",
    "pd_ddpm": "PD-DDPM",
    "medsegdiff_v2": "MedSegDiff-V2",
    "hidiff_real": "HiDiff (real refiner)",
    "hidiff_binary": "HiDiff (binary refiner)",
}
#: Segmentors HiDiff can be profiled with (names of :func:`hidiff.models.build_segmentor`).
SEGMENTORS = ("merit", "unet")
#: Their display names.
SEGMENTOR_NAMES = {"merit": "MERIT", "unet": "U-Net"}
#: Table XI's unit of FLOPs, BOPs and OPs.
GIGA10 = 1e10
#: Bytes per MB (SI).
BYTES_PER_MB = 1e6


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class ProfileSettings:
    """What Table XI is computed for.

    Attributes:
        image_size: S, square input resolution (a multiple of 32, at least 64; the diffusion
            baselines accept 64, 128, 256 or 512).
        num_classes: K, mask channels.
        image_channels: channels of the image.
        steps: sampling steps of every diffusion model (HiDiff's diffusion has T = steps, all visited).
        segmentor: HiDiff's segmentor, one of :data:`SEGMENTORS` (PD-DDPM always starts from MERIT).
        refiner_channels: base width C of HiDiff's refiner (128 in the paper).
    """

    image_size: int = TABLE_XI_IMAGE_SIZE
    num_classes: int = 1
    image_channels: int = 3
    steps: int = TABLE_XI_STEPS
    segmentor: str = "merit"
    refiner_channels: int = 128

    def __post_init__(self) -> None:
        for name in ("image_size", "num_classes", "image_channels", "steps", "refiner_channels"):
            _check_positive_int(name, getattr(self, name))
        if self.image_size % 32 or self.image_size < 64:
            raise ValueError(f"image_size must be a multiple of 32 and at least 64, got {self.image_size}")
        if self.segmentor not in SEGMENTORS:
            raise ValueError(f"segmentor must be one of {list(SEGMENTORS)}, got {self.segmentor!r}")


@dataclass(frozen=True)
class MethodCost:
    """One row of Table XI: ``segmentor + refiner x steps``.

    Attributes:
        key: the method's key in :data:`METHODS`.
        segmentor_name, refiner_name: display names of the parts (None where a part is absent).
        segmentor: counts of one segmentor forward (None: no segmentor).
        refiner: counts of one refiner / denoiser forward (None: a segmentor alone).
        steps: refiner forwards per inference (0 without a refiner).
        timing: measured times, when timed.
    """

    key: str
    segmentor_name: str | None
    refiner_name: str | None
    segmentor: Counts | None
    refiner: Counts | None
    steps: int
    timing: Timing | None = None

    @property
    def name(self) -> str:
        return METHOD_NAMES[self.key]

    def total(self, value: Callable[[Counts], float]) -> float:
        """``value(segmentor) + value(refiner) * steps`` (absent parts count 0)."""
        seg = value(self.segmentor) if self.segmentor is not None else 0
        ref = value(self.refiner) * self.steps if self.refiner is not None else 0
        return seg + ref

    @property
    def total_flops(self) -> int:
        """Real MACs of one inference."""
        return int(self.total(lambda c: c.flops))

    @property
    def total_bops(self) -> int:
        """Binary MACs of one inference."""
        return int(self.total(lambda c: c.bops))

    @property
    def total_ops(self) -> float:
        """``total_flops + total_bops / 64``."""
        return self.total(lambda c: c.ops)

    @property
    def refinement_ops(self) -> float:
        """OPs of the sampling steps alone (``refiner x steps``; 0 without a refiner)."""
        return self.refiner.ops * self.steps if self.refiner is not None else 0.0

    @property
    def total_storage_mb(self) -> float:
        """Storage of all parameters, segmentor + refiner, in MB."""
        return sum(c.storage_bytes for c in (self.segmentor, self.refiner) if c is not None) / BYTES_PER_MB


@dataclass(frozen=True)
class Ratio:
    """A ratio the paper claims, with what the counts (and the timings) give.

    Attributes:
        name: what is compared (numerator / denominator).
        paper: the paper's claim as written there ("-" where the paper gives none).
        counted: the ratio of the counted OPs (None if a needed row was not profiled).
        measured: the ratio of the measured times (None when not timed).
    """

    name: str
    paper: str
    counted: float | None
    measured: float | None = None


@dataclass
class _Segmentor:
    """A built segmentor with its count, its prior/features for the image and its time (cached)."""

    module: nn.Module
    counts: Counts
    image: Tensor
    prior: Tensor
    features: list[Tensor]
    seconds: float | None = None


class _Profiler:
    """Builds, counts and (optionally) times each method, sharing segmentors between rows."""

    def __init__(self, settings: ProfileSettings, timed: bool, repeats: int) -> None:
        self.settings = settings
        self.timed = timed
        self.repeats = repeats
        self.segmentors: dict[str, _Segmentor] = {}

    def segmentor(self, name: str) -> _Segmentor:
        """The segmentor ``name``, counted (and timed) on first use."""
        if name not in self.segmentors:
            s = self.settings
            size = {"image_size": s.image_size} if segmentor_spec(name).fixed_size else {}
            module = build_segmentor(name, s.image_channels, s.num_classes, **size).eval()
            (image,) = segmentor_inputs(s.image_channels, s.num_classes, s.image_size)
            counts = count(module, image, train=False)
            logger.debug("%s: %s", name, counts)
            with torch.no_grad():
                logits, features = module(image)
            entry = _Segmentor(module, counts, image, prior_from_logits(logits), list(features))
            if self.timed:
                entry.seconds = time_forward(module, (image,), self.repeats)
            self.segmentors[name] = entry
        return self.segmentors[name]

    def profile(self, key: str) -> MethodCost:
        if key == "merit":
            return self._segmentor_only()
        if key in ("berdiff", "pd_ddpm", "medsegdiff_v2"):
            return self._denoiser(key)
        if key in ("hidiff_real", "hidiff_binary"):
            return self._hidiff(binary=key == "hidiff_binary")
        raise ValueError(f"methods must be among {list(METHODS)}, got {key!r}")

    def _segmentor_only(self) -> MethodCost:
        merit = self.segmentor("merit")
        timing = Timing(merit.seconds, 0.0, "1 forward") if self.timed else None
        return MethodCost("merit", "MERIT", None, merit.counts, None, 0, timing)

    def _denoiser(self, key: str) -> MethodCost:
        s = self.settings
        spec = BASELINES[key]
        seg = self.segmentor("merit") if spec.integrated_with_segmentor else None
        torch.manual_seed(0)
        model = spec.build(s.image_channels, s.num_classes, s.image_size).eval()
        inputs = spec.example_inputs(s.image_channels, s.num_classes, s.image_size)
        counts = count(model, inputs, train=False)
        logger.debug("%s denoiser: %s", key, counts)
        timing = None
        if self.timed:
            seg_seconds = seg.seconds if seg is not None else 0.0
            timing = time_denoiser(model, inputs, s.steps, seg_seconds, self.repeats)
        return MethodCost(
            key, "MERIT" if seg is not None else None, "denoiser", seg.counts if seg else None, counts, s.steps, timing
        )

    def _hidiff(self, binary: bool) -> MethodCost:
        s = self.settings
        seg = self.segmentor(s.segmentor)
        torch.manual_seed(0)
        refiner = BBDM(
            s.image_channels,
            s.num_classes,
            model_channels=s.refiner_channels,
            cond_channels=seg.module.feature_channels,
            binary=binary,
        )
        model = HiDiff(seg.module, refiner, BernoulliDiffusion(num_steps=s.steps)).eval()
        first_t = model.diffusion.timesteps(s.steps)[0]
        generator = torch.Generator().manual_seed(0)
        y_t = torch.bernoulli(seg.prior, generator=generator)
        t = torch.full((1,), first_t, dtype=torch.int64)
        counts = count(refiner, (seg.image, y_t, seg.prior, t, seg.features), train=False)
        logger.debug("BBDM (binary=%s): %s", binary, counts)
        timing = None
        if self.timed:
            timing = time_hidiff(
                model,
                seg.image,
                seg.prior,
                seg.features,
                steps=s.steps,
                binary=binary,
                segmentor_s=seg.seconds,
                repeats=self.repeats,
            )
        refiner_name = "BBDM (binary)" if binary else "BBDM (real)"
        return MethodCost(
            "hidiff_binary" if binary else "hidiff_real",
            SEGMENTOR_NAMES[s.segmentor],
            refiner_name,
            seg.counts,
            counts,
            s.steps,
            timing,
        )


def profile_methods(
    settings: ProfileSettings | None = None,
    methods: Sequence[str] = METHODS,
    *,
    timed: bool = False,
    threads: int = 2,
    repeats: int = 3,
    progress: bool = True,
) -> list[MethodCost]:
    """Counts (and optionally times) the rows of Table XI.

    Args:
        settings: resolution, classes, channels, steps, HiDiff's segmentor (default: the paper's).
        methods: keys of :data:`METHODS` (table order is kept; duplicates are dropped).
        timed: also measure CPU wall-clock times at batch 1 (slow at 256x256: the diffusion baselines
            take seconds per forward).
        threads: intra-op CPU threads while timing (restored afterwards).
        repeats: timed runs per measurement (the median is kept), after one warm-up run.
        progress: show a tqdm bar over the methods.

    Returns:
        One :class:`MethodCost` per method, in the order of :data:`METHODS`.
    """
    settings = settings or ProfileSettings()
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty selection of {list(METHODS)}, got {list(methods)}")
    _check_positive_int("threads", threads)
    _check_positive_int("repeats", repeats)
    selected = [m for m in METHODS if m in methods]
    profiler = _Profiler(settings, timed, repeats)
    previous_threads = torch.get_num_threads()
    if timed:
        torch.set_num_threads(threads)
    costs = []
    try:
        for key in tqdm(selected, desc="Table XI", unit="method", disable=not progress):
            costs.append(profiler.profile(key))
            logger.info("%s: %.3g x10^10 OPs", METHOD_NAMES[key], costs[-1].total_ops / GIGA10)
    finally:
        torch.set_num_threads(previous_threads)
    return costs


def _seconds(cost: MethodCost, name: str) -> float | None:
    """The timing attribute ``name`` of ``cost`` (None when untimed or not measured)."""
    return None if cost.timing is None else getattr(cost.timing, name)


def _divide(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


def claimed_ratios(costs: Sequence[MethodCost]) -> list[Ratio]:
    """The paper's speed-up claims beside the counted (OPs) and measured (time) ratios.

    Ratios whose methods were not profiled are left out.

    Returns:
        Refinement, real vs binary refiner (paper: 22x); the binary refiner's float simulation vs its
        packed kernels (no claim; a float simulation runs every BOP as a FLOP); whole inference, real vs
        binary HiDiff (paper: 10x); PD-DDPM and MedSegDiff-V2 vs the real HiDiff (paper: about 3x).
    """
    rows = {c.key: c for c in costs}
    real, binary = rows.get("hidiff_real"), rows.get("hidiff_binary")
    ratios = []
    if real and binary:
        ratios.append(
            Ratio(
                "refinement (refiner × steps): real refiner FLOPs / binary refiner OPs",
                "22x",
                real.refinement_ops / binary.refinement_ops,
                _divide(_seconds(real, "refinement_s"), _seconds(binary, "refinement_s")),
            )
        )
    if binary:
        simulated_ops = (binary.refiner.flops + binary.refiner.bops) * binary.steps
        ratios.append(
            Ratio(
                "refinement, binary refiner: float simulation (BOPs run as FLOPs) / packed kernels",
                "–",
                simulated_ops / binary.refinement_ops,
                _divide(_seconds(binary, "refinement_float_s"), _seconds(binary, "refinement_s")),
            )
        )
    if real and binary:
        ratios.append(
            Ratio(
                "whole inference: HiDiff (real refiner) / HiDiff (binary refiner)",
                "10x",
                real.total_ops / binary.total_ops,
                _divide(_seconds(real, "total_s"), _seconds(binary, "total_s")),
            )
        )
    for key in ("pd_ddpm", "medsegdiff_v2"):
        other = rows.get(key)
        if other and real:
            ratios.append(
                Ratio(
                    f"whole inference: {other.name} / HiDiff (real refiner)",
                    "about 3x",
                    other.total_ops / real.total_ops,
                    _divide(_seconds(other, "total_s"), _seconds(real, "total_s")),
                )
            )
    return ratios
