"""``python -m hidiff_kernels.info``: what was built and which kernel serves each op.

Prints the torch version the extension was built against and the one running, CUDA, the CPU
features detected, the popcount path in use, and for every ``hidiff::`` op and backend whether
the compiled kernel, a Triton kernel (CUDA only) or the pure-PyTorch reference runs.
"""

from __future__ import annotations

import argparse

import torch

import hidiff_kernels
from hidiff_kernels import ops
from hidiff_kernels.triton.registration import TRITON_SERVED


def kernel_table() -> dict[str, dict[str, str]]:
    """``{op: {backend: description}}`` for every op of the library."""
    table: dict[str, dict[str, str]] = {}
    for name in ops.SCHEMAS:
        row = {}
        for key in ops.BACKENDS:
            if (name, key) in ops.REFERENCE_SERVED:
                row[key] = "reference"
            elif (name, key) in TRITON_SERVED:
                row[key] = "Triton"
            elif ops.has_kernel(name, key):
                row[key] = "C++" if key == "CPU" else "CUDA"
            else:
                row[key] = "none"
        table[name] = row
    return table


def report() -> str:
    """The report printed by the command, as text."""
    lines = [f"hidiff_kernels {hidiff_kernels.__version__}"]
    cuda = torch.version.cuda or "none"
    lines.append(f"torch running: {torch.__version__} (CUDA {cuda}, GPU available: {torch.cuda.is_available()})")
    if hidiff_kernels.COMPILED:
        ext = hidiff_kernels._C
        lines.append(f"extension built against torch {ext.torch_version}, CUDA kernels built: {ext.with_cuda}")
        features = [name for name, present in ext.cpu_features().items() if present]
        lines.append(f"CPU features: {' '.join(features) or 'none of interest'}")
        lines.append(f"popcount paths: {', '.join(ext.supported_isas())} (active: {ext.active_isa()})")
    else:
        lines.append("extension: not built (reference kernels only)")
    lines.append(f"threads: {torch.get_num_threads()}")
    lines.append("")
    width = max(len(name) for name in ops.SCHEMAS) + 2
    header = f"{'op':<{width}}" + "".join(f"{key:<16}" for key in ops.BACKENDS)
    lines.append(header)
    for name, row in kernel_table().items():
        lines.append(f"{name:<{width}}" + "".join(f"{row[key]:<16}" for key in ops.BACKENDS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hidiff_kernels.info",
        description="Report the torch version built against, CPU features and which kernel serves each op.",
    )
    parser.parse_args(argv)
    print(report())


if __name__ == "__main__":
    main()
