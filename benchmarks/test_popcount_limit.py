"""The popcount limit of this machine, and how close the binary convolution gets to it.

``_C.popcount_peak`` runs the micro-kernel's XOR + popcount + add step with every operand in
registers (one thread, the active instruction set): its rate is the per-core ceiling of any
binary convolution on this path. ``_C.popcount_peak_all_threads`` runs the same loop on every
thread at once: the ceiling of the threads together, below threads x the per-core one when the
threads share a core's execution ports (or the host is busy). The convolution rows report binary
MACs per second of ``binary_conv2d`` (packed input, scale and bias) on every row of the layer
table with all threads, and the fraction of the all-threads limit, measured right after each row.
"""

from __future__ import annotations

import time

import pytest
import torch
from test_binary_conv import LAYERS, layer_id

import hidiff_kernels as hk

pytestmark = pytest.mark.skipif(not hk.COMPILED, reason="needs the compiled extension")

TABLE = ("limit", "Binary MAC rate vs the machine's popcount limit (all threads together)", "")
RATE, FRACTION = "G bit-MAC/s", "fraction of the limit"
PEAK_ITERATIONS = 2_000_000


def _all_threads_rate() -> float:
    """Binary MACs per second of the register-only loop on all threads at once (best of 3)."""
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        bits = hk._C.popcount_peak_all_threads(PEAK_ITERATIONS // 4)
        rates.append(bits / (time.perf_counter() - start))
    return max(rates)


@pytest.mark.benchmark(group="limit")
def test_popcount_peak(benchmark, record_metric):
    bits, _ = hk._C.popcount_peak(1000)
    benchmark(hk._C.popcount_peak, PEAK_ITERATIONS)
    if benchmark.stats is not None:
        per_core = bits / 1000 * PEAK_ITERATIONS / benchmark.stats.stats.median / 1e9
        record_metric(*TABLE, "register-only loop, 1 thread (the per-core limit)", RATE, per_core)


@pytest.mark.benchmark(group="limit")
def test_popcount_peak_all_threads(benchmark, record_metric):
    bits = hk._C.popcount_peak_all_threads(1000)
    benchmark(hk._C.popcount_peak_all_threads, PEAK_ITERATIONS)
    if benchmark.stats is not None:
        rate = bits / 1000 * PEAK_ITERATIONS / benchmark.stats.stats.median / 1e9
        record_metric(*TABLE, f"register-only loop, {torch.get_num_threads()} threads at once (the limit)", RATE, rate)


@pytest.mark.benchmark(group="limit")
@pytest.mark.parametrize("layer", LAYERS, ids=layer_id)
def test_conv_rate(benchmark, record_metric, layer):
    cin, cout, size, stride = layer
    g = torch.Generator().manual_seed(0)
    x_packed = hk.binarize_pack(torch.randn(1, cin, size, size, generator=g))
    w = torch.randn(cout, cin, 3, 3, generator=g)
    w_packed, scale, bias = hk.pack_weight(w), w.abs().mean((1, 2, 3)), torch.randn(cout, generator=g)
    with torch.inference_mode():
        out = benchmark(hk.binary_conv2d, x_packed, w_packed, cin, stride, 1, 1, scale, bias)
    if benchmark.stats is not None:
        macs = cout * out.shape[2] * out.shape[3] * 9 * cin
        rate = macs / benchmark.stats.stats.median / 1e9
        row = f"binary_conv2d {layer_id(layer)}, {torch.get_num_threads()} threads"
        record_metric(*TABLE, row, RATE, rate)
        record_metric(*TABLE, row, FRACTION, rate / (_all_threads_rate() / 1e9))
