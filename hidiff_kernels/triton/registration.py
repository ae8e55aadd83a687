"""Registers the Triton kernels as the CUDA kernels of the ``hidiff::`` ops that lack a compiled one.

Called by ``hidiff_kernels/__init__.py`` after the compiled extension is loaded and before the
reference fallbacks are registered, so the order of preference on CUDA tensors is: compiled
CUDA kernel, then Triton, then the pure-PyTorch reference. It does nothing (and never imports
Triton) unless torch was built with CUDA, a GPU is visible and Triton imports.
"""

from __future__ import annotations

import importlib
import logging

import torch

from .. import ops

logger = logging.getLogger(__name__)

DISPATCH_KEY = "CUDA"

# The (op, dispatch key) pairs served by a Triton kernel (read by `python -m hidiff_kernels.info`).
TRITON_SERVED: set[tuple[str, str]] = set()

# Kept alive for the life of the process: a Library deregisters its kernels when collected.
_LIBRARY: torch.library.Library | None = None


def triton_usable() -> bool:
    """Whether the Triton kernels can serve CUDA tensors here: a CUDA torch, a GPU and Triton."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("triton")
    except ImportError as error:
        logger.info("triton is not importable (%s): CUDA ops without a compiled kernel use the reference", error)
        return False
    return True


def register_triton_kernels() -> list[str]:
    """Registers a Triton kernel for every ``hidiff::`` op without a CUDA kernel.

    Returns:
        the names of the ops registered now (empty when Triton or a GPU is missing, or when
        every op already has a CUDA kernel).
    """
    global _LIBRARY
    if not triton_usable():
        return []
    # Imported here: it imports Triton and compiles nothing until the first launch.
    from .launch import KERNELS

    registered = []
    for name in ops.SCHEMAS:
        if name not in KERNELS or ops.has_kernel(name, DISPATCH_KEY):
            continue
        if _LIBRARY is None:
            _LIBRARY = torch.library.Library(ops.NAMESPACE, "IMPL")
        _LIBRARY.impl(name, KERNELS[name], DISPATCH_KEY)
        TRITON_SERVED.add((name, DISPATCH_KEY))
        registered.append(name)
    if registered:
        logger.info("Triton kernels serve CUDA for: %s", ", ".join(registered))
    return registered
