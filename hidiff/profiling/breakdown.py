"""Where a refinement spends its time: the operators of one run grouped by what they do in the refiner.

The groups separate the binary arithmetic (the fused XNOR-popcount blocks and the packing of their
inputs) from what is left in float (the condition ResBlocks' and head's convolutions, GroupNorm,
the elementwise work of shortcuts, pooling and upsampling, the sampler's Bernoulli steps), so a
profile says which part to fuse or cut next.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from torch.profiler import ProfilerActivity, profile

__all__ = ["OPERATOR_GROUPS", "TimeBreakdown", "time_breakdown"]

#: (group, operator names) in the order a report lists them; operators in no group count as "other".
OPERATOR_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "binary blocks (fused XNOR-popcount conv, affine, residual, TA, packing)",
        (
            "hidiff::binary_conv2d_fused",
            "hidiff::binary_conv2d",
        ),
    ),
    ("packing of block inputs (TB + bit packing)", ("hidiff::binarize_pack",)),
    (
        "float convolutions and matmuls (condition ResBlocks, input conv, head, X-Former attention)",
        (
            "aten::mkldnn_convolution",
            "aten::_slow_conv2d_forward",
            "aten::convolution",
            "aten::bmm",
            "aten::baddbmm",
            "aten::mm",
            "aten::addmm",
            "aten::im2col",
        ),
    ),
    ("GroupNorm (condition ResBlocks, head)", ("aten::native_group_norm",)),
    (
        "elementwise (shortcuts, pooling, upsampling, FiLM, activations, copies)",
        (
            "aten::add",
            "aten::add_",
            "aten::mul",
            "aten::mul_",
            "aten::sub",
            "aten::copy_",
            "aten::silu",
            "aten::silu_",
            "aten::avg_pool2d",
            "aten::cat",
            "aten::where",
            "aten::lerp",
            "aten::abs",
            "aten::clamp",
            "aten::logit",
            "aten::sigmoid",
            "aten::constant_pad_nd",
            "aten::fill_",
            "aten::sum",
            "aten::div",
            "aten::gt",
            "aten::amax",
        ),
    ),
    ("time activation (TA outside the fused blocks)", ("hidiff::time_activation",)),
    ("sampler (Bernoulli steps)", ("hidiff::bernoulli_step",)),
)


@dataclass(frozen=True)
class TimeBreakdown:
    """Seconds of self (exclusive) operator time per group of :data:`OPERATOR_GROUPS`, plus ``other``.

    Attributes:
        seconds: group -> seconds, in report order (``"other"`` last).
        wall_seconds: wall-clock seconds of the profiled run (profiler overhead included).
    """

    seconds: dict[str, float]
    wall_seconds: float

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def shares(self) -> dict[str, float]:
        """group -> fraction of :attr:`total_seconds`."""
        total = self.total_seconds or 1.0
        return {group: value / total for group, value in self.seconds.items()}


def time_breakdown(fn: Callable[[], object]) -> TimeBreakdown:
    """Runs ``fn`` once under the torch profiler (CPU) and groups the operators' self times.

    Call ``fn`` once before, so that one-off costs (freezing, packing, allocator warm-up) are not in
    the profile.
    """
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - start
    group_of = {name: group for group, names in OPERATOR_GROUPS for name in names}
    seconds = {group: 0.0 for group, _ in OPERATOR_GROUPS}
    seconds["other"] = 0.0
    for event in prof.key_averages():
        seconds[group_of.get(event.key, "other")] += event.self_cpu_time_total / 1e6
    return TimeBreakdown(seconds, wall)
