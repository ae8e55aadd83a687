"""Build of the compiled extension hidiff_kernels._C.

The CPU kernels are always built; one binary carries the portable, AVX2 and AVX-512 paths and
picks one from the CPU at load time. CUDA sources (csrc/cuda) are added when torch was built with
CUDA and a toolkit with cuda_runtime.h is found, or when HIDIFF_BUILD_CUDA=1; HIDIFF_BUILD_CUDA=0
skips them. Availability of a GPU on the build machine never decides this.

Install with `pip install --no-build-isolation .` so the extension is built against the torch
that is already installed (build isolation would fetch another one).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    # Relative paths: setuptools rejects absolute source paths in an editable install.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _has_runtime_header(home: str | None) -> bool:
    return bool(home) and os.path.exists(os.path.join(home, "include", "cuda_runtime.h"))


def _nvcc_home(nvcc: str) -> str | None:
    """Toolkit root of an nvcc on PATH, following wrapper scripts.

    nvcc's dry run prints the directory it really runs from (``_HERE_=<root>/bin``), which also
    holds when PATH only has a script that execs the real compiler.
    """
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if _has_runtime_header(home):
        return home
    try:
        dry_run = subprocess.run([nvcc, "--dryrun", "-c", "probe.cu"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (dry_run.stdout + dry_run.stderr).splitlines():
        if line.startswith("#$ _HERE_="):
            return os.path.dirname(line.split("=", 1)[1].strip())
    return None


def _cuda_home() -> str | None:
    """Toolkit root: CUDA_HOME / CUDA_PATH, else the one of the nvcc on PATH; None without headers."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and shutil.which("nvcc"):
        home = _nvcc_home(shutil.which("nvcc"))
    return home if _has_runtime_header(home) else None


def _build_cuda() -> bool:
    flag = os.environ.get("HIDIFF_BUILD_CUDA")
    if flag == "0":
        return False
    cuda_sources = _sources("csrc/cuda/*.cu")
    if not cuda_sources:
        return False
    if flag == "1":
        return True
    return torch.version.cuda is not None and _cuda_home() is not None


def _extension() -> cpp_extension.CppExtension:
    sources = _sources("csrc/core/*.cpp") + _sources("csrc/cpu/*.cpp")
    # The torch version is recorded so `python -m hidiff_kernels.info` can report a mismatch.
    cxx_flags = [
        "-O3",
        "-std=c++17",
        "-ffp-contract=off",
        "-fvisibility=hidden",
        # at::parallel_for is inlined from ATen's headers: without OpenMP it runs serially.
        # No -fopenmp at link time: the OpenMP runtime is the one torch already loaded.
        "-fopenmp",
        f'-DHIDIFF_TORCH_VERSION="{torch.__version__}"',
    ]
    if _build_cuda():
        cxx_flags.append("-DHIDIFF_WITH_CUDA")
        os.environ.setdefault("CUDA_HOME", _cuda_home() or "")
        return cpp_extension.CUDAExtension(
            "hidiff_kernels._C",
            sources + _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp"),
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        )
    return cpp_extension.CppExtension("hidiff_kernels._C", sources, extra_compile_args={"cxx": cxx_flags})


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
