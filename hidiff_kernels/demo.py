"""``python -m hidiff_kernels.demo``: binarise a small CNN and run it on the packed kernels.

Builds a small convolutional network, swaps its inner convolutions for ``BinaryConv2d`` with
:func:`hidiff_kernels.nn.binarize`, checks that the packed XNOR-popcount kernels give the same
outputs as the float simulation of the binary arithmetic (what the public HiDiff code runs),
and prints the time of each binary layer and of the whole network against torch float32.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import hidiff_kernels
from hidiff_kernels.nn import BinaryConv2d, binarize


def make_cnn(width: int) -> nn.Sequential:
    """A small VGG-style network: real stem and head, four inner 3x3 convolutions."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.Conv2d(width, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.Hardtanh(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.Hardtanh(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.Hardtanh(),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
        nn.BatchNorm2d(4 * width),
        nn.Conv2d(4 * width, 1, 1),
    ).eval()


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def simulated(layer: BinaryConv2d, x: torch.Tensor) -> torch.Tensor:
    """The binary layer's function in float arithmetic (the straight-through path)."""
    return layer._forward_ste(x, layer.threshold)


def layer_report(name: str, layer: BinaryConv2d, layer_input: torch.Tensor, repeats: int) -> str:
    """One table row: float-simulated vs packed time of a binary layer and their largest difference."""
    diff = (layer(layer_input) - simulated(layer, layer_input)).abs().max().item()
    t_float = median_time(lambda: simulated(layer, layer_input), repeats)
    t_packed = median_time(lambda: layer(layer_input), repeats)
    height, width = layer_input.shape[-2:]
    shape = f"{layer.in_channels}->{layer.out_channels} s{layer.stride[0]} {height}x{width}"
    return f"{name:<6}{shape:<26}{t_float * 1e3:>15.2f}{t_packed * 1e3:>13.2f}{t_float / t_packed:>9.1f}x{diff:>12.2e}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hidiff_kernels.demo",
        description="Binarise a small CNN, check the packed kernels against the float simulation, and time both.",
    )
    parser.add_argument("--size", type=int, default=128, help="input height and width (default 128)")
    parser.add_argument("--width", type=int, default=64, help="channels of the first layer (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    float_model = make_cnn(args.width)
    binary_model = binarize(copy.deepcopy(float_model)).eval()
    x = torch.randn(1, 3, args.size, args.size)
    isa = hidiff_kernels._C.active_isa() if hidiff_kernels.COMPILED else "reference"
    binary_layers = sum(isinstance(m, BinaryConv2d) for m in binary_model.modules())
    all_layers = sum(isinstance(m, (nn.Conv2d, BinaryConv2d)) for m in binary_model.modules())
    print(f"binarised {binary_layers} of {all_layers} convolutions; popcount path: {isa}; {args.threads} threads")

    # Capture each binary layer's input to time it alone, and compare both arithmetics on it.
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, name=name: inputs.__setitem__(name, a[0]))
        for name, m in binary_model.named_modules()
        if isinstance(m, BinaryConv2d)
    ]
    with torch.inference_mode():
        packed_out = binary_model(x)
    for h in hooks:
        h.remove()

    print(f"\n{'layer':<6}{'shape':<26}{'float sim (ms)':>15}{'packed (ms)':>13}{'speed-up':>10}{'max |diff|':>12}")
    with torch.inference_mode():
        for name, layer_input in inputs.items():
            print(layer_report(name, binary_model.get_submodule(name), layer_input, args.repeats))

        t_real = median_time(lambda: float_model(x), args.repeats)
        t_packed = median_time(lambda: binary_model(x), args.repeats)
        binary_model.train()  # the straight-through path: binary arithmetic simulated in float
        for m in binary_model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        simulated_out = binary_model(x)
        t_sim = median_time(lambda: binary_model(x), args.repeats)
    diff = (packed_out - simulated_out).abs().max().item()
    print(f"\nwhole network, {args.size}x{args.size}, batch 1:")
    print(f"  real-valued model (torch fp32)          {t_real * 1e3:9.2f} ms")
    print(f"  binary model simulated in fp32          {t_sim * 1e3:9.2f} ms")
    print(
        f"  binary model on packed kernels          {t_packed * 1e3:9.2f} ms"
        f"   ({t_real / t_packed:.1f}x vs real, {t_sim / t_packed:.1f}x vs simulated)"
    )
    print(f"  max |packed - simulated| on the output  {diff:9.2e}")


if __name__ == "__main__":
    main()
