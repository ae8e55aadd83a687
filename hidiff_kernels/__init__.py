"""hidiff_kernels: bit-packed XNOR-popcount kernels for PyTorch.

Importing the package defines the ``hidiff::`` ops, loads the compiled kernels
(``hidiff_kernels._C``) when they are built, registers the Triton kernels for CUDA ops without a
compiled kernel (only with a CUDA torch, a GPU and Triton), and the pure-PyTorch reference for
any backend still left without a kernel, so the ops always run. ``HIDIFF_KERNELS_REFERENCE_ONLY=1`` skips
the compiled kernels (to compare against, or to rule them out when debugging).
"""

from __future__ import annotations

import importlib
import logging
import os

from . import ops
from .ops import bernoulli_step, binarize_pack, binary_conv2d, binary_conv2d_fused, pack_weight, time_activation

logger = logging.getLogger(__name__)

_C = None
COMPILED = False
if os.environ.get("HIDIFF_KERNELS_REFERENCE_ONLY") == "1":
    logger.info("HIDIFF_KERNELS_REFERENCE_ONLY=1: using the pure-PyTorch reference kernels")
else:
    try:
        # Loading the module registers the compiled CPU kernels. (A plain `from . import _C`
        # would return the placeholder None above instead of importing the submodule.)
        _C = importlib.import_module("._C", __name__)

        COMPILED = True
    except ImportError as error:  # not built, or built against another torch
        logger.warning("hidiff_kernels._C is not available (%s); using the pure-PyTorch reference kernels", error)
    # Triton kernels for the CUDA ops left without a compiled one; a no-op (Triton not even
    # imported) without a CUDA torch, a GPU and Triton.
    importlib.import_module(".triton.registration", __name__).register_triton_kernels()

ops.register_reference_fallbacks()


def clear_output_cache() -> None:
    """Frees the blocks the compiled CPU kernels keep for reuse by large (>= 8 MiB) float outputs.

    The cache keeps at most 512 MiB (least recently released blocks are freed first); this returns all of
    it to the system, e.g. after a large inference. Outputs still alive are not affected. A no-op without
    the compiled kernels.
    """
    if _C is not None:
        _C.clear_output_cache()


__all__ = [
    "COMPILED",
    "bernoulli_step",
    "clear_output_cache",
    "binarize_pack",
    "binary_conv2d",
    "binary_conv2d_fused",
    "pack_weight",
    "time_activation",
]
__version__ = "0.1.0"
