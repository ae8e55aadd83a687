"""Per-iteration loss logs (CSV and JSON Lines), the validation log and the loss-curve figure.

Files in the output directory:

- ``losses.csv`` and ``losses.jsonl``: one row per iteration with ``phase`` ("pretrain" or "alternate"), ``step``
  (1-based within the phase) and the loss and learning-rate columns of :data:`LOSS_COLUMNS` (empty in the CSV, absent
  in the JSON, where a phase does not have them).
- ``validation.jsonl``: one row per validation: phase, step and the metrics the validation hook returned.
- ``loss_curves.png``: the curves of both phases.

When a run is resumed from a checkpoint, rows after the checkpoint's steps (written by the interrupted run after its
last checkpoint) are dropped, so the files read exactly as those of an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LOSS_COLUMNS", "PHASES", "LossLog", "plot_losses"]

logger = logging.getLogger(__name__)

PHASES = ("pretrain", "alternate")

LOSS_COLUMNS = (
    "loss_disc",
    "loss_ce",
    "loss_dice",
    "loss_diff_refiner",
    "loss_kl_refiner",
    "loss_focal_refiner",
    "loss_diff_segmentor",
    "loss_hybrid",
    "lr_segmentor",
    "lr_refiner",
)
CSV_COLUMNS = ("phase", "step", *LOSS_COLUMNS)


def _is_before(row: Mapping[str, Any], steps: Mapping[str, int]) -> bool:
    return row.get("phase") in steps and int(row.get("step", 0)) <= steps[row["phase"]]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    # A run killed mid-write can leave a partial last line; everything before it is intact.
                    logger.warning("skipping an unreadable line of %s", path)
    return rows


class LossLog:
    """Appends loss rows to ``losses.csv`` / ``losses.jsonl`` and validation rows to ``validation.jsonl``.

    Nothing is written until the first row (so constructing a log and then resuming never clobbers the files of the
    run being resumed); the first write rewrites the files from the rows held in memory, which are empty for a new run
    and the restored history for a resumed one.

    Args:
        directory: the output directory.
        enabled: False on non-main processes: rows are kept in memory only.
    """

    def __init__(self, directory: str | Path, enabled: bool = True) -> None:
        self.directory = Path(directory)
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self.validation: list[dict[str, Any]] = []
        self._synced = False

    @property
    def csv_path(self) -> Path:
        return self.directory / "losses.csv"

    @property
    def jsonl_path(self) -> Path:
        return self.directory / "losses.jsonl"

    @property
    def validation_path(self) -> Path:
        return self.directory / "validation.jsonl"

    @property
    def figure_path(self) -> Path:
        return self.directory / "loss_curves.png"

    def restore(self, steps: Mapping[str, int]) -> None:
        """Reloads the history written in the directory up to `steps` (phase -> last completed step)."""
        self.rows = [row for row in _read_jsonl(self.jsonl_path) if _is_before(row, steps)]
        self.validation = [row for row in _read_jsonl(self.validation_path) if _is_before(row, steps)]
        self._synced = False

    def _sync(self) -> None:
        if self._synced or not self.enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.csv_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        self.jsonl_path.write_text("".join(json.dumps(row) + "\n" for row in self.rows), encoding="utf-8")
        self.validation_path.write_text("".join(json.dumps(row) + "\n" for row in self.validation), encoding="utf-8")
        self._synced = True

    def append(self, row: Mapping[str, Any]) -> None:
        """Adds one iteration's row (phase, step and any of :data:`LOSS_COLUMNS`)."""
        row = dict(row)
        self.rows.append(row)
        if not self.enabled:
            return
        if not self._synced:
            self._sync()
            return
        with self.csv_path.open("a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore").writerow(row)
        with self.jsonl_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def append_validation(self, row: Mapping[str, Any]) -> None:
        """Adds one validation's row (phase, step and metrics)."""
        row = dict(row)
        self.validation.append(row)
        if not self.enabled:
            return
        if not self._synced:
            self._sync()
            return
        with self.validation_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def losses(self, phase: str, column: str) -> list[float]:
        """The values of one column for one phase, in step order (NaN where a row lacks it)."""
        return [float(row.get(column, math.nan)) for row in self.rows if row.get("phase") == phase]

    def plot(self) -> Path | None:
        """Writes ``loss_curves.png`` (main process only); returns its path, or None when disabled or empty."""
        if not self.enabled or not self.rows:
            return None
        return plot_losses(self.rows, self.figure_path)


def plot_losses(rows: list[Mapping[str, Any]], path: str | Path) -> Path:
    """Plots the pre-training and alternate-phase loss curves into a PNG file (written atomically).

    Uses matplotlib's Agg canvas directly, so no display and no global backend switch is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    panels = (
        ("pretrain", "Segmentor pre-training", ("loss_disc", "loss_ce", "loss_dice")),
        ("alternate", "Alternate-collaborative training", ("loss_diff_refiner", "loss_disc", "loss_hybrid")),
    )
    figure = Figure(figsize=(11, 4))
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.92, wspace=0.22)
    FigureCanvasAgg(figure)
    for i, (phase, title, columns) in enumerate(panels):
        axes = figure.add_subplot(1, 2, i + 1)
        phase_rows = [row for row in rows if row.get("phase") == phase]
        steps = [int(row["step"]) for row in phase_rows]
        for column in columns:
            values = [float(row.get(column, math.nan)) for row in phase_rows]
            if any(math.isfinite(v) for v in values):
                axes.plot(steps, values, label=column, linewidth=1.0)
        axes.set_title(title)
        axes.set_xlabel("iteration")
        axes.set_ylabel("loss")
        if axes.lines:
            axes.legend(fontsize="small")
        else:
            axes.text(0.5, 0.5, "no iterations yet", ha="center", va="center", transform=axes.transAxes)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)
    return path
