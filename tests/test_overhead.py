"""The per-call overhead tool runs, and the wrappers' fast argument paths agree with the general ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hidiff_kernels
from hidiff_kernels import ops


@pytest.mark.skipif(not hidiff_kernels.COMPILED, reason="extension not built")
def test_overhead_tool_reports_every_column():
    from hidiff_kernels import overhead

    result = overhead.measure((32, 32, 1), reps=2)
    assert set(result.stages) == {"plan_build", "plan_cached", "weights", "input", "tiles"}
    assert all(value > 0 for value in result.stages.values())
    assert result.conv_op > 0 and result.pack_wrapper > 0 and result.fused_op > 0
    text = overhead.report([result])
    assert "| 32->32 1x1 |" in text and "dispatcher + glue" in text


@pytest.mark.skipif(not hidiff_kernels.COMPILED, reason="extension not built")
def test_conv_stage_times_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        hidiff_kernels._C.conv_stage_times(0, 32, 4, 4, 3, 1, 1, 1)
    with pytest.raises(ValueError, match="empty"):
        hidiff_kernels._C.conv_stage_times(32, 32, 1, 1, 3, 1, 0, 1)


@pytest.mark.parametrize(
    "value, expected",
    [(3, (3, 3)), ((1, 2), (1, 2)), ([1, 2], (1, 2)), (np.int64(2), (2, 2)), (torch.tensor(4), (4, 4))],
)
def test_as_pair_accepts_every_spelling(value, expected):
    assert ops.as_pair(value, "stride", 1, 10) == expected


@pytest.mark.parametrize("value", [0, 11, (1, 11), (0, 1), -(2**70)])
def test_as_pair_range_errors_name_the_argument(value):
    with pytest.raises(ValueError, match=r"stride must be an int or a pair of ints in \[1, 10\]"):
        ops.as_pair(value, "stride", 1, 10)


@pytest.mark.parametrize("value", [True, (1, True), 1.0, (1.0, 2)])
def test_as_pair_type_errors_name_the_argument(value):
    with pytest.raises(TypeError, match="stride must be an int or a pair of ints"):
        ops.as_pair(value, "stride", 1, 10)


def test_as_int_fast_path_keeps_the_range_check():
    assert ops.as_int(5, "in_channels", 1, 5) == 5
    with pytest.raises(ValueError, match="in_channels must be an int in"):
        ops.as_int(6, "in_channels", 1, 5)
    with pytest.raises(TypeError):
        ops.as_int(True, "in_channels", 0, 5)
