"""HiDiff models: the BBDM refiner (binary and real) with the X-Former, segmentors, and HiDiff.

- :class:`BBDM`: the refiner ``(image, y_t, prior, t, features) -> eps_hat``.
- :class:`UNet`, :class:`TimmSegmentor`, :func:`build_segmentor`: segmentors
  ``x -> (logits, 4 features at H/4..H/32)``; :func:`prior_from_logits`.
- :class:`HiDiff`: segmentor + refiner + Bernoulli diffusion (prior, loss, refinement, masks).
"""

from .bbdm import BBDM
from .hidiff import HiDiff
from .segmentors import TimmSegmentor, UNet, build_segmentor, prior_from_logits
from .xformer import XFormer

__all__ = ["BBDM", "HiDiff", "TimmSegmentor", "UNet", "XFormer", "build_segmentor", "prior_from_logits"]
