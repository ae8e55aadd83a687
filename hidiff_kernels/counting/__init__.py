"""FLOPs / BOPs / storage counting (paper Table XI, HIDIFF_SPEC section 8).

FLOPs are real multiply-accumulates (conv, linear, matmul); BOPs are binary multiply-accumulates
(XNOR-popcount); ``OPs = FLOPs + BOPs / 64``. Element-wise work is counted apart and never enters
FLOPs. Storage: 1 bit per binary weight, 32 bits per other parameter (buffers not counted).

* :func:`count` — one forward under a dispatch mode: :class:`Counts` with a per-module breakdown.
* :mod:`.core` — the rules (pure functions of shapes); :mod:`.aten_rules` — aten ops.
* :mod:`.storage` — :func:`packed_state_dict`, :func:`state_dict_bytes`, :func:`parameter_storage`.
* :mod:`.markers` — :func:`binary_matmul` / :class:`Matmul`: matmuls of binary operands.
* adapters for fvcore (:mod:`.fvcore_adapter`), thop (:mod:`.thop_adapter`) and
  ``torch.utils.flop_counter.FlopCounterMode`` (:mod:`.flop_counter_adapter`); fvcore and thop are
  imported only when their adapter runs them.
"""

from __future__ import annotations

from .core import BOPS_PER_OP, OP_RULES, OpCost
from .counter import Counts, count, format_table
from .flop_counter_adapter import flop_counter_mode, flop_formulas, register_flop_formulas
from .fvcore_adapter import flop_count_analysis, fvcore_handles, split_counts
from .markers import Matmul, binary_matmul
from .storage import packed_state_dict, parameter_storage, state_dict_bytes
from .thop_adapter import op_units, thop_custom_ops, thop_profile

__all__ = [
    "BOPS_PER_OP",
    "OP_RULES",
    "Counts",
    "Matmul",
    "OpCost",
    "binary_matmul",
    "count",
    "flop_count_analysis",
    "flop_counter_mode",
    "flop_formulas",
    "format_table",
    "fvcore_handles",
    "op_units",
    "packed_state_dict",
    "parameter_storage",
    "register_flop_formulas",
    "split_counts",
    "state_dict_bytes",
    "thop_custom_ops",
    "thop_profile",
]
