"""The per-call overhead tool runs."""

from __future__ import annotations

import pytest

import hidiff_kernels


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
