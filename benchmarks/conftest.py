"""Side-by-side benchmark support: fixed thread count, median collection and ratio tables.

Every benchmark records its median under (table, row, column). At the end of the session the
tables are printed with the ratios of each implementation against the torch float baseline
and their geometric mean, and written as Markdown when ``--results-md PATH`` is given. A table
may also compare two non-baseline columns (ours against a peer library), see ``record``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
import torch

import hidiff_kernels


def pytest_addoption(parser):
    group = parser.getgroup("hidiff")
    group.addoption("--bench-threads", type=int, default=2, help="torch/ATen threads for every benchmark (default 2)")
    group.addoption("--results-md", default=None, help="write the ratio tables to this Markdown file")


def pytest_configure(config):
    torch.set_num_threads(config.getoption("--bench-threads"))


@pytest.fixture(autouse=True)
def _keep_cpu_affinity():
    """Restores the main thread's CPU affinity after each test: a peer runtime that pins its threads
    (OpenVINO's CPU plugin does by default) must not leave it pinned for the benchmarks that follow."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    yield
    if os.sched_getaffinity(0) != before:
        os.sched_setaffinity(0, before)


@dataclass(frozen=True)
class Target:
    """Speed-up goals of one column over the baseline: on the geometric mean and, optionally, on every row."""

    column: str
    geometric_mean: float
    every_row: float | None = None


@dataclass
class Table:
    """Medians in seconds: rows (shapes) x columns (implementations); ``baseline`` is the reference column."""

    title: str
    baseline: str
    target: Target | None = None
    columns: list[str] = field(default_factory=list)
    medians: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    #: Extra speed-up columns ``(column, other)``: median(other) / median(column).
    versus: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class MetricTable:
    """Measured values that are not times (memory, sizes, rates): rows x columns, in one unit."""

    title: str
    unit: str
    columns: list[str] = field(default_factory=list)
    values: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))


TABLES: dict[str, Table] = {}
METRICS: dict[str, MetricTable] = {}


@pytest.fixture
def record_metric():
    """``record_metric(table, title, unit, row, column, value)`` files a measured non-time value
    (e.g. peak memory in MiB) under a metric table cell."""

    def _record(table: str, title: str, unit: str, row: str, column: str, value: float) -> None:
        entry = METRICS.setdefault(table, MetricTable(title, unit))
        if column not in entry.columns:
            entry.columns.append(column)
        entry.values[row][column] = value

    return _record


@pytest.fixture
def record(benchmark):
    """``record(table, title, baseline, row, column, target=None, versus=())`` files this test's median
    under a table cell.

    Call it before ``benchmark(...)``; the median is read when the test has run. ``target`` is
    ``(column, geometric-mean speed-up)`` or ``(column, geometric-mean speed-up, minimum on every row)``.
    ``versus`` lists ``(column, other)`` pairs that get a speed-up column of their own,
    median(other) / median(column), e.g. ours against a peer library on the same rows.
    """
    cell: dict = {}

    def _record(
        table: str,
        title: str,
        baseline: str,
        row: str,
        column: str,
        target: tuple[str, float, float] | None = None,
        versus: tuple[tuple[str, str], ...] = (),
    ) -> None:
        benchmark.group = f"{table}: {row}"
        benchmark.extra_info.update({"table": table, "row": row, "column": column})
        cell.update(table=table, title=title, baseline=baseline, row=row, column=column, target=target, versus=versus)

    yield _record
    if not cell or benchmark.disabled or benchmark.stats is None:
        return
    entry = TABLES.setdefault(cell["table"], Table(cell["title"], cell["baseline"]))
    if cell["target"]:
        entry.target = Target(*cell["target"])
    if cell["column"] not in entry.columns:
        entry.columns.append(cell["column"])
    entry.versus += [pair for pair in cell["versus"] if pair not in entry.versus]
    entry.medians[cell["row"]][cell["column"]] = benchmark.stats.stats.median


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> str:
    isa = hidiff_kernels._C.active_isa() if hidiff_kernels.COMPILED else "reference"
    try:
        peers = f", OpenVINO {importlib.metadata.version('openvino')}"
    except importlib.metadata.PackageNotFoundError:
        peers = ""
    return (
        f"{_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}{peers}, "
        f"popcount path {isa}, {datetime.date.today().isoformat()}"
    )


def render(table: Table) -> list[str]:
    others = [c for c in table.columns if c != table.baseline]
    # Speed-up columns as (header, column, reference): median(reference) / median(column).
    speedups = [(f"{c} speed-up", c, table.baseline) for c in others]
    speedups += [(f"{c} speed-up over {other}", c, other) for c, other in table.versus]
    header = ["shape", f"{table.baseline} (ms)"] + [f"{c} (ms)" for c in others] + [h for h, _, _ in speedups]
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ratios: dict[str, list[float]] = defaultdict(list)
    for row, medians in table.medians.items():
        base = medians.get(table.baseline)
        cells = [row, f"{base * 1e3:.3f}" if base else "-"]
        cells += [f"{medians[c] * 1e3:.3f}" if c in medians else "-" for c in others]
        for name, c, reference in speedups:
            if medians.get(reference) and c in medians:
                ratios[name].append(medians[reference] / medians[c])
                cells.append(f"{ratios[name][-1]:.2f}x")
            else:
                cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    geo = ["**geometric mean**", "", *[""] * len(others)]
    means = {name: math.exp(sum(map(math.log, ratios[name])) / len(ratios[name])) for name in ratios}
    geo += [f"**{means[name]:.2f}x**" if name in means else "-" for name, _, _ in speedups]
    lines.append("| " + " | ".join(geo) + " |")
    target = table.target
    target_name = f"{target.column} speed-up" if target else None
    if target and target_name in means:
        verdict = "met" if means[target_name] >= target.geometric_mean else "NOT met"
        lines += [
            "",
            f"Target: {target.column} >= {target.geometric_mean:g}x over {table.baseline} on the geometric mean: "
            f"{verdict}.",
        ]
        if target.every_row is not None:
            slowest = min(ratios[target_name])
            verdict = "met" if slowest >= target.every_row else "NOT met"
            lines.append(f"Target: no row below {target.every_row:g}x (slowest {slowest:.2f}x): {verdict}.")
    return lines


def render_metrics(table: MetricTable) -> list[str]:
    """A metric table; with a common unit and two columns, their ratio is added."""
    header = ["row"] + [f"{c} ({table.unit})" if table.unit else c for c in table.columns]
    with_ratio = bool(table.unit) and len(table.columns) == 2
    if with_ratio:
        header.append(f"{table.columns[0]} / {table.columns[1]}")
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, values in table.values.items():
        cells = [row] + [f"{values[c]:.3f}" if c in values else "-" for c in table.columns]
        if with_ratio:
            first, second = (values.get(c) for c in table.columns)
            cells.append(f"{first / second:.2f}x" if first and second else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pytest_terminal_summary(terminalreporter, config):
    if not TABLES and not METRICS:
        return
    lines = [f"Machine: {machine_summary()}", ""]
    for table in TABLES.values():
        lines += render(table) + [""]
    for metric in METRICS.values():
        lines += render_metrics(metric) + [""]
    terminalreporter.write_sep("=", "hidiff side-by-side ratios")
    for line in lines:
        terminalreporter.write_line(line)
    path = config.getoption("--results-md")
    if path:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
