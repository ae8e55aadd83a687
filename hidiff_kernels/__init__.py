"""hidiff_kernels: bit-packed XNOR-popcount kernels for PyTorch.

Importing the package defines the ``hidiff::`` ops, loads the compiled kernels
(``hidiff_kernels._C``) when they are built, and registers the pure-PyTorch reference for any
backend left without a kernel, so the ops always run.
"""

from __future__ import annotations

import logging

from . import ops
from .ops import binarize_pack, binary_conv2d, pack_weight, time_activation

logger = logging.getLogger(__name__)

try:
    from . import _C  # noqa: F401  (registers the compiled CPU kernels)

    COMPILED = True
except ImportError as error:  # not built, or built against another torch
    _C = None
    COMPILED = False
    logger.warning("hidiff_kernels._C is not available (%s); using the pure-PyTorch reference kernels", error)

ops.register_reference_fallbacks()

__all__ = ["COMPILED", "binarize_pack", "binary_conv2d", "pack_weight", "time_activation"]
__version__ = "0.1.0"
