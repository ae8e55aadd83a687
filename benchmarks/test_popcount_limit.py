"""The popcount limit of this machine, and how close the binary convolution gets to it.

``_C.popcount_peak`` runs the micro-kernel's XOR + popcount + add step with every operand in
registers (one thread, the active instruction set): its rate is the per-core ceiling of any
binary convolution on this path. The convolution rows report binary MACs per second of
``binary_conv2d`` at the layer-table shapes with all threads, and the fraction of
(threads x per-core limit) they reach.
"""

from __future__ import annotations

import time

import pytest
import torch

import hidiff_kernels as hk

pytestmark = pytest.mark.skipif(not hk.COMPILED, reason="needs the compiled extension")

TABLE = ("limit", "Binary MAC rate vs the machine's popcount limit (per-core limit x threads)", "")
RATE, FRACTION = "G bit-MAC/s", "fraction of the limit"
PEAK_ITERATIONS = 2_000_000
# (in_channels, out_channels, size, stride), as in test_binary_conv.py
LAYERS = [(128, 128, 256, 1), (128, 128, 256, 2), (256, 256, 64, 1), (512, 512, 16, 1), (256, 128, 256, 1)]


def _peak_rate() -> float:
    start = time.perf_counter()
    bits, _ = hk._C.popcount_peak(PEAK_ITERATIONS)
    return bits / (time.perf_counter() - start)


@pytest.mark.benchmark(group="limit")
def test_popcount_peak(benchmark, record_metric):
    bits, _ = hk._C.popcount_peak(1000)
    benchmark(hk._C.popcount_peak, PEAK_ITERATIONS)
    if benchmark.stats is not None:
        per_core = bits / 1000 * PEAK_ITERATIONS / benchmark.stats.stats.median / 1e9
        record_metric(*TABLE, "register-only loop, 1 thread (the per-core limit)", RATE, per_core)


@pytest.mark.benchmark(group="limit")
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"{layer[0]}->{layer[1]} {layer[2]} s{layer[3]}")
def test_conv_rate(benchmark, record_metric, layer):
    cin, cout, size, stride = layer
    g = torch.Generator().manual_seed(0)
    x_packed = hk.binarize_pack(torch.randn(1, cin, size, size, generator=g))
    w_packed = hk.pack_weight(torch.randn(cout, cin, 3, 3, generator=g))
    with torch.inference_mode():
        out = benchmark(hk.binary_conv2d, x_packed, w_packed, cin, stride, 1, 1)
    if benchmark.stats is not None:
        macs = cout * out.shape[2] * out.shape[3] * 9 * cin
        rate = macs / benchmark.stats.stats.median / 1e9
        limit = _peak_rate() / 1e9 * torch.get_num_threads()
        row = f"binary_conv2d {cin}->{cout} {size}x{size} s{stride}, {torch.get_num_threads()} threads"
        record_metric(*TABLE, row, RATE, rate)
        record_metric(*TABLE, row, FRACTION, rate / limit)
