"""Baseline networks of the paper's Table XI (FLOPs and storage), for counting and timing.

- :class:`MERIT`: the segmentor (two MaxViT-small backbones, :mod:`.maxvit`, and the CASCADE decoder).
- :class:`BerDiff`, :class:`PDDDPM`, :class:`MedSegDiffV2`: diffusion denoisers, one forward per
  sampling step, built on the guided-diffusion U-Net (:class:`GuidedDiffusionUNet`).
- :data:`BASELINES` / :class:`BaselineSpec` / :func:`build_baseline`: the registry (builder,
  example inputs, role, integration with a segmentor, sampling steps, source).

Each module's docstring names the paper, the public repository and commit, the configuration
used and the parameter counts of the reference code; the networks are independent
re-implementations in plain torch.
"""

from .berdiff import BerDiff
from .guided_unet import GuidedDiffusionUNet
from .maxvit import MaxVit, maxvit_rmlp_small, maxxvit_rmlp_small
from .medsegdiff_v2 import ConditionUNet, MedSegDiffV2
from .merit import MERIT
from .pd_ddpm import PDDDPM
from .registry import (
    BASELINES,
    ROLE_DENOISER,
    ROLE_SEGMENTOR,
    TABLE_XI_IMAGE_SIZE,
    TABLE_XI_STEPS,
    BaselineSpec,
    build_baseline,
)

__all__ = [
    "BASELINES",
    "MERIT",
    "PDDDPM",
    "ROLE_DENOISER",
    "ROLE_SEGMENTOR",
    "TABLE_XI_IMAGE_SIZE",
    "TABLE_XI_STEPS",
    "BaselineSpec",
    "BerDiff",
    "ConditionUNet",
    "GuidedDiffusionUNet",
    "MaxVit",
    "MedSegDiffV2",
    "build_baseline",
    "maxvit_rmlp_small",
    "maxxvit_rmlp_small",
]
