"""``hidiff flops``: the paper's Table XI (inference cost of HiDiff and its baselines), counted and timed.

- :mod:`.table`: the rows (which networks each method runs, how often) and their counting: FLOPs, BOPs, OPs and
  storage (:func:`profile_methods`, :class:`MethodCost`, :func:`claimed_ratios`).
- :mod:`.timing`: CPU wall-clock times at batch 1 (:func:`median_seconds`, :class:`Timing`).
- :mod:`.breakdown`: where a run's time goes, by operator group (:func:`time_breakdown`).
- :mod:`.report`: the Markdown and CSV reports, and :func:`run_table_xi`, what ``hidiff flops`` runs.
"""

from .breakdown import OPERATOR_GROUPS, TimeBreakdown, time_breakdown
from .report import CSV_COLUMNS, csv_rows, format_markdown, run_table_xi, write_csv
from .table import (
    METHOD_NAMES,
    METHODS,
    SEGMENTOR_NAMES,
    SEGMENTORS,
    MethodCost,
    ProfileSettings,
    Ratio,
    claimed_ratios,
    profile_methods,
)
from .timing import Timing, median_seconds

__all__ = [
    "CSV_COLUMNS",
    "METHODS",
    "OPERATOR_GROUPS",
    "METHOD_NAMES",
    "SEGMENTORS",
    "SEGMENTOR_NAMES",
    "MethodCost",
    "ProfileSettings",
    "Ratio",
    "TimeBreakdown",
    "Timing",
    "claimed_ratios",
    "csv_rows",
    "format_markdown",
    "median_seconds",
    "profile_methods",
    "run_table_xi",
    "time_breakdown",
    "write_csv",
]
