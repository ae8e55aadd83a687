"""Table XI reports: Markdown (the table and the claimed ratios) and CSV, and ``hidiff flops``'s driver."""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from hidiff_kernels.counting import Counts

from .table import (
    BYTES_PER_MB,
    GIGA10,
    METHODS,
    SEGMENTOR_NAMES,
    MethodCost,
    ProfileSettings,
    claimed_ratios,
    profile_methods,
)

__all__ = ["CSV_COLUMNS", "csv_rows", "format_markdown", "run_table_xi", "write_csv"]

logger = logging.getLogger(__name__)


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
