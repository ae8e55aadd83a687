"""HiDiff models: the BBDM refiner (binary and real) with the X-Former, segmentors, and HiDiff.

- :class:`BBDM`: the refiner ``(image, y_t, prior, t, features) -> eps_hat``.
- :class:`UNet`, :class:`MeritSegmentor`, :class:`TimmSegmentor`: segmentors
  ``x -> (logits, 4 features at H/4..H/32)``; :func:`build_segmentor` builds one by name
  (``"unet"``, ``"merit"``, ``"timm:<backbone>"``; the registry :data:`SEGMENTORS`); :func:`prior_from_logits`.
- :class:`HiDiff`: segmentor + refiner + Bernoulli diffusion (prior, loss, refinement, masks), with its
  :class:`RefineSettings` (how it refines by default; :data:`STORED` marks an argument that takes them).
- :func:`freeze` / :class:`FrozenBBDM`: the deployable refiner (folded, packed, per-step tables,
  per-image condition cache).
- :data:`BASELINES`, :func:`build_baseline`: the Table XI baselines (MERIT, BerDiff, PD-DDPM,
  MedSegDiff-V2), see :mod:`hidiff.models.baselines`.
"""

from .baselines import BASELINES, BaselineSpec, build_baseline
from .bbdm import BBDM
from .frozen import ConditionCache, FrozenBBDM, freeze
from .hidiff import STORED, HiDiff
from .segmentors import (
    SEGMENTORS,
    MeritSegmentor,
    SegmentorSpec,
    TimmSegmentor,
    UNet,
    build_segmentor,
    prior_from_logits,
    segmentor_spec,
)
from .settings import RefineSettings
from .xformer import XFormer

__all__ = [
    "BASELINES",
    "BBDM",
    "BaselineSpec",
    "ConditionCache",
    "FrozenBBDM",
    "HiDiff",
    "MeritSegmentor",
    "RefineSettings",
    "SEGMENTORS",
    "STORED",
    "SegmentorSpec",
    "TimmSegmentor",
    "UNet",
    "XFormer",
    "build_baseline",
    "build_segmentor",
    "freeze",
    "prior_from_logits",
    "segmentor_spec",
]
