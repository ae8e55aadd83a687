"""``python -m hidiff_kernels.overhead``: where the time of a small binary layer goes.

For each layer (batch 1, 3x3, padding 1, scale and bias) it times, in microseconds per call:

- ``binarize_pack``, ``binary_conv2d`` and ``binary_conv2d_fused`` (with ``pack=True``) through the
  Python wrappers and through ``torch.ops.hidiff.*`` directly, with all threads and with one;
- the convolution's stages in C++ alone on one thread (``_C.conv_stage_times``: plan from the
  cache, weight tables, input planes, tiles).

From these it splits one ``binary_conv2d`` call into the Python wrapper (wrapper - op), the
dispatcher and ATen glue (op on one thread - C++ stages), the C++ stages themselves, and what
the threads add or save (op on all threads - op on one). The same split, without torch, is
printed by ``build/cmake/conv_breakdown``. Timings are medians of several rounds; on a shared
machine compare runs made one after the other, not across sessions.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import hidiff_kernels as hk

# (in_channels, out_channels, size): the small layers where fixed costs dominate.
LAYERS = [(32, 32, 1), (128, 128, 4), (512, 512, 4), (512, 512, 8), (512, 512, 16)]


def per_call_us(fn: Callable[[], object], reps: int, rounds: int = 7) -> float:
    """Median over ``rounds`` of the mean time of ``reps`` calls of ``fn``, in microseconds."""
    for _ in range(max(1, reps // 10)):
        fn()
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        means.append((time.perf_counter() - start) / reps * 1e6)
    return statistics.median(means)


@dataclass
class LayerOverhead:
    """Microseconds per call of one layer; ``threads`` is the thread count of the "all threads" figures."""

    layer: tuple[int, int, int]
    threads: int
    pack_wrapper: float
    pack_op: float
    pack_op_one_thread: float
    conv_wrapper: float
    conv_op: float
    conv_op_one_thread: float
    fused_wrapper: float
    fused_op: float
    stages: dict[str, float]

    @property
    def kernel(self) -> float:
        """The C++ stages of one call after the first (plan from the cache), one thread."""
        return sum(self.stages[k] for k in ("plan_cached", "weights", "input", "tiles"))


def measure(layer: tuple[int, int, int], reps: int | None = None) -> LayerOverhead:
    """Times one layer (see the module docstring); ``reps`` calls per round (default: by the layer's work)."""
    cin, cout, size = layer
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, cin, size, size, generator=generator)
    w = torch.randn(cout, cin, 3, 3, generator=generator)
    scale, bias = w.abs().mean((1, 2, 3)), torch.randn(cout, generator=generator)
    x_packed, w_packed = hk.binarize_pack(x), hk.pack_weight(w)
    if reps is None:
        reps = max(20, min(2000, int(2e8 / (cout * size * size * 9 * cin))))
    ops = torch.ops.hidiff
    threads = torch.get_num_threads()
    timings: dict[str, float] = {}
    with torch.inference_mode():
        calls = {
            "pack_wrapper": lambda: hk.binarize_pack(x),
            "pack_op": lambda: ops.binarize_pack(x, None),
            "conv_wrapper": lambda: hk.binary_conv2d(x_packed, w_packed, cin, 1, 1, 1, scale, bias),
            "conv_op": lambda: ops.binary_conv2d(x_packed, w_packed, cin, (1, 1), (1, 1), (1, 1), scale, bias),
            "fused_wrapper": lambda: hk.binary_conv2d_fused(x_packed, w_packed, cin, 1, 1, 1, scale, bias, pack=True),
            "fused_op": lambda: ops.binary_conv2d_fused(
                x_packed, w_packed, cin, (1, 1), (1, 1), (1, 1), scale, bias, None, None, None, None, None, True
            ),
        }
        for name, call in calls.items():
            timings[name] = per_call_us(call, reps)
        try:
            torch.set_num_threads(1)
            timings["pack_op_one_thread"] = per_call_us(calls["pack_op"], reps)
            timings["conv_op_one_thread"] = per_call_us(calls["conv_op"], reps)
        finally:
            torch.set_num_threads(threads)
    stages = hk._C.conv_stage_times(cin, cout, size, size, 3, 1, 1, reps)
    return LayerOverhead(layer=layer, threads=threads, stages=stages, **timings)


def report(results: list[LayerOverhead]) -> str:
    """The tables printed by the command, as Markdown."""
    threads = results[0].threads if results else torch.get_num_threads()
    lines = [
        f"popcount path {hk._C.active_isa()}, {threads} threads, microseconds per call (median)",
        "",
        "| layer | binarize_pack | binary_conv2d | binary_conv2d_fused | pack + conv |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        name = "{}->{} {s}x{s}".format(*r.layer[:2], s=r.layer[2])
        lines.append(
            f"| {name} | {r.pack_wrapper:.1f} | {r.conv_wrapper:.1f} | {r.fused_wrapper:.1f} | "
            f"{r.pack_wrapper + r.conv_wrapper:.1f} |"
        )
    lines += [
        "",
        "One binary_conv2d call split up (C++ stages on one thread; threads = op on all threads - op on one):",
        "",
        "| layer | Python wrapper | dispatcher + glue | plan (cached) | weights | input | tiles "
        "| threads | binarize_pack: threads |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        name = "{}->{} {s}x{s}".format(*r.layer[:2], s=r.layer[2])
        s = r.stages
        lines.append(
            f"| {name} | {r.conv_wrapper - r.conv_op:.1f} | {r.conv_op_one_thread - r.kernel:.1f} "
            f"| {s['plan_cached']:.2f} | {s['weights']:.1f} | {s['input']:.1f} | {s['tiles']:.1f} "
            f"| {r.conv_op - r.conv_op_one_thread:+.1f} | {r.pack_op - r.pack_op_one_thread:+.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hidiff_kernels.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="threads for the 'all threads' figures")
    args = parser.parse_args(argv)
    if not hk.COMPILED:
        raise SystemExit("the compiled extension hidiff_kernels._C is not built")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(report([measure(layer) for layer in LAYERS]))


if __name__ == "__main__":
    main()
