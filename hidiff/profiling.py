"""``hidiff flops``: the paper's Table XI (inference cost of HiDiff and its baselines), counted and timed.

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

Optionally (``time=True``) every method is also timed on this CPU at batch 1 (median of ``repeats``
runs after one warm-up): the segmentor's forward plus, for the diffusion baselines, one denoiser
forward multiplied by the steps, and for HiDiff the whole sampling loop (real refiner in fp32;
binary refiner on the packed kernels through the frozen refiner, and the same binary refiner
simulated in float, as the public code runs it).
"""

from __future__ import annotations

import csv
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hidiff_kernels.counting import Counts, count
from hidiff_kernels.nn import packed_kernels

from .diffusion import BernoulliDiffusion
from .models import BBDM, FrozenBBDM, HiDiff, build_segmentor, prior_from_logits, segmentor_spec
from .models.baselines import BASELINES, TABLE_XI_IMAGE_SIZE, TABLE_XI_STEPS
from .models.baselines.registry import segmentor_inputs

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
                with torch.no_grad():
                    entry.seconds = median_seconds(lambda: module(image), self.repeats)
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
            with torch.no_grad():
                forward = median_seconds(lambda: model(*inputs), self.repeats)
            seg_seconds = seg.seconds if seg is not None else 0.0
            timing = Timing(seg_seconds, forward * s.steps, f"1 denoiser forward × {s.steps}")
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
        timing = self._time_hidiff(model, seg, binary) if self.timed else None
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

    def _time_hidiff(self, model: HiDiff, seg: _Segmentor, binary: bool) -> Timing:
        steps = self.settings.steps

        def refine(frozen: FrozenBBDM | None = None) -> Tensor:
            return model.refine_from_prior(seg.image, seg.prior, seg.features, steps=steps, frozen=frozen)

        if not binary:
            return Timing(seg.seconds, median_seconds(refine, self.repeats), f"sampling loop, {steps} steps, fp32")
        # Freezing is a one-off deployment step (fold, pack, per-step tables), not part of an inference.
        frozen = model.freeze(steps)
        packed = median_seconds(lambda: refine(frozen), self.repeats)
        with packed_kernels(False):
            simulated = median_seconds(refine, self.repeats)
        how = f"sampling loop, {steps} steps, packed kernels (frozen refiner)"
        return Timing(seg.seconds, packed, how, refinement_float_s=simulated)


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


def _num(value: float) -> str:
    """Two decimals, or three significant digits below 1 (the binary refiner's FLOPs are small)."""
    return f"{value:.2f}" if value == 0 or abs(value) >= 1 else f"{value:.3g}"


def _expression(cost: MethodCost, value: Callable[[Counts], float], scale: float) -> str:
    """``"segmentor + refiner × steps = total"`` of ``value`` divided by ``scale`` (absent parts left out)."""
    if cost.refiner is None:
        return _num(value(cost.segmentor) / scale)
    terms = [_num(value(cost.segmentor) / scale)] if cost.segmentor is not None else []
    terms.append(f"{_num(value(cost.refiner) / scale)} × {cost.steps}")
    return f"{' + '.join(terms)} = {_num(cost.total(value) / scale)}"


def _time_expression(cost: MethodCost) -> str:
    """``"segmentor + refinement = total"`` seconds (absent parts left out), and the float simulation."""

    def expression(refinement_s: float) -> str:
        if cost.refiner is None:
            return f"{timing.segmentor_s:.2f}"
        if cost.segmentor is None:
            return f"{refinement_s:.2f}"
        return f"{timing.segmentor_s:.2f} + {refinement_s:.2f} = {timing.segmentor_s + refinement_s:.2f}"

    timing = cost.timing
    text = expression(timing.refinement_s)
    if timing.refinement_float_s is not None:
        text += f" (float simulation: {expression(timing.refinement_float_s)})"
    return text


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}x"


def format_markdown(
    costs: Sequence[MethodCost], settings: ProfileSettings, threads: int | None = None, repeats: int | None = None
) -> str:
    """Table XI and the claimed ratios as Markdown.

    Args:
        costs: the result of :func:`profile_methods`.
        settings: the settings it ran with.
        threads, repeats: the timing settings (shown when some row was timed).
    """
    s = settings
    timed = any(c.timing is not None for c in costs)
    lines = [
        f"### Table XI: inference cost at {s.image_size}x{s.image_size}, {s.steps} sampling steps",
        "",
        f"Batch 1, {s.image_channels} image channels, K = {s.num_classes}; HiDiff's segmentor: "
        f"{SEGMENTOR_NAMES[s.segmentor]}, refiner width {s.refiner_channels}. FLOPs: real multiply-accumulates; "
        "BOPs: binary ones; OPs = FLOPs + BOPs/64; all ×10^10, written `segmentor + refiner × steps = total`. "
        "Storage: 1 bit per binary weight, 32 bits per real parameter, `segmentor + refiner`, MB = 10^6 bytes.",
        "",
    ]
    header = ["method", "parts", "FLOPs (×10^10)", "BOPs (×10^10)", "OPs (×10^10)", "storage (MB)"]
    align = ["---", "---", "---:", "---:", "---:", "---:"]
    if timed:
        header += ["CPU time (s)", "timed as"]
        align += ["---:", "---"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for c in costs:
        parts = [c.segmentor_name] if c.segmentor_name else []
        if c.refiner_name:
            parts.append(f"{c.refiner_name} × {c.steps}")
        has_bops = c.total_bops > 0
        storage = [f"{x.storage_bytes / BYTES_PER_MB:.1f}" for x in (c.segmentor, c.refiner) if x is not None]
        storage_text = storage[0] if len(storage) == 1 else f"{' + '.join(storage)} = {c.total_storage_mb:.1f}"
        cells = [
            c.name,
            " + ".join(parts),
            _expression(c, lambda x: x.flops, GIGA10),
            _expression(c, lambda x: x.bops, GIGA10) if has_bops else "–",
            _expression(c, lambda x: x.ops, GIGA10) if has_bops else "= FLOPs",
            storage_text,
        ]
        if timed:
            cells += [_time_expression(c), c.timing.how] if c.timing else ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = claimed_ratios(costs)
    if ratios and timed:
        lines += ["", "| ratio | paper | counted (OPs) | measured (CPU time) |", "|---|---:|---:|---:|"]
        lines += [f"| {r.name} | {r.paper} | {_ratio(r.counted)} | {_ratio(r.measured)} |" for r in ratios]
    elif ratios:
        lines += ["", "| ratio | paper | counted (OPs) |", "|---|---:|---:|"]
        lines += [f"| {r.name} | {r.paper} | {_ratio(r.counted)} |" for r in ratios]
    if timed:
        lines += [
            "",
            f"CPU times: medians of {repeats} run(s) after one warm-up, {threads} thread(s), torch "
            f"{torch.__version__}; `segmentor + refinement = total`.",
        ]
    return "\n".join(lines) + "\n"


#: Columns of the CSV written by :func:`write_csv` (FLOPs, BOPs, OPs as raw counts; per step for refiners).
CSV_COLUMNS = (
    "method",
    "segmentor",
    "refiner",
    "steps",
    "segmentor_flops",
    "refiner_flops_per_step",
    "total_flops",
    "segmentor_bops",
    "refiner_bops_per_step",
    "total_bops",
    "segmentor_ops",
    "refiner_ops_per_step",
    "total_ops",
    "segmentor_params",
    "refiner_params",
    "segmentor_storage_mb",
    "refiner_storage_mb",
    "total_storage_mb",
    "time_segmentor_s",
    "time_refinement_s",
    "time_total_s",
    "time_refinement_float_simulation_s",
    "timed_as",
)


def csv_rows(costs: Sequence[MethodCost]) -> list[dict[str, object]]:
    """One dict per method with the keys of :data:`CSV_COLUMNS` (absent parts and untimed values are empty)."""
    rows = []
    for c in costs:
        seg, ref, t = c.segmentor, c.refiner, c.timing
        row: dict[str, object] = {
            "method": c.name,
            "segmentor": c.segmentor_name or "",
            "refiner": c.refiner_name or "",
            "steps": c.steps,
            "segmentor_flops": seg.flops if seg else "",
            "refiner_flops_per_step": ref.flops if ref else "",
            "total_flops": c.total_flops,
            "segmentor_bops": seg.bops if seg else "",
            "refiner_bops_per_step": ref.bops if ref else "",
            "total_bops": c.total_bops,
            "segmentor_ops": seg.ops if seg else "",
            "refiner_ops_per_step": ref.ops if ref else "",
            "total_ops": c.total_ops,
            "segmentor_params": seg.params if seg else "",
            "refiner_params": ref.params if ref else "",
            "segmentor_storage_mb": seg.storage_bytes / BYTES_PER_MB if seg else "",
            "refiner_storage_mb": ref.storage_bytes / BYTES_PER_MB if ref else "",
            "total_storage_mb": c.total_storage_mb,
            "time_segmentor_s": t.segmentor_s if t else "",
            "time_refinement_s": t.refinement_s if t else "",
            "time_total_s": t.total_s if t else "",
            "time_refinement_float_simulation_s": t.refinement_float_s if t and t.refinement_float_s else "",
            "timed_as": t.how if t else "",
        }
        rows.append(row)
    return rows


def write_csv(costs: Sequence[MethodCost], path: str | Path) -> Path:
    """Writes :func:`csv_rows` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(costs))
    return path


def run_table_xi(
    settings: ProfileSettings | None = None,
    methods: Sequence[str] = METHODS,
    *,
    timed: bool = False,
    threads: int = 2,
    repeats: int = 3,
    markdown: str | Path | None = None,
    csv_path: str | Path | None = None,
) -> str:
    """Profiles the methods and writes the reports: what ``hidiff flops`` runs.

    Args:
        settings, methods, timed, threads, repeats: as :func:`profile_methods`.
        markdown: also write the Markdown to this file.
        csv_path: also write the CSV (:data:`CSV_COLUMNS`) to this file.

    Returns:
        The Markdown report (Table XI and the ratios).
    """
    settings = settings or ProfileSettings()
    start = time.perf_counter()
    costs = profile_methods(settings, methods, timed=timed, threads=threads, repeats=repeats)
    logger.info("profiled %d methods in %.0f s", len(costs), time.perf_counter() - start)
    report = format_markdown(costs, settings, threads if timed else None, repeats if timed else None)
    if markdown is not None:
        path = Path(markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report)
        logger.info("wrote %s", path)
    if csv_path is not None:
        logger.info("wrote %s", write_csv(costs, csv_path))
    return report
