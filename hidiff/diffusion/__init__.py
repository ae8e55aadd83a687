"""Bernoulli diffusion of segmentation masks around a segmentor prior (HiDiff paper Sec. II-B.1).

- :mod:`.schedules`: cosine schedules (the paper's squared one and the public code's unsquared one)
  and the timestep convention.
- :mod:`.process`: forward sampling (XOR reparameterisation), the posterior of Eq. 7, calibration.
- :mod:`.losses`: KL / decoder NLL + focal loss (Eq. 11-13).
- :mod:`.samplers`: ancestral and DDIM samplers with respacing and ensembles, on the counter RNG of
  ``hidiff_kernels.bernoulli_step``.
- :mod:`.modes`: the named choices (sampler, model posterior, t = 0 term, refiner output) as enums.
- :class:`BernoulliDiffusion` ties them together.
"""

from .bernoulli import BernoulliDiffusion
from .losses import DiffusionLoss, bernoulli_kl, bernoulli_nll, diffusion_loss, focal_loss
from .modes import FirstStepTerm, ModelPosterior, Parameterization, Sampler
from .process import calibrate, posterior_mean, prior_flip_rate, q_sample
from .samplers import DenoiseFn, respace, sample, sample_chain, step_coefficients, to_mask
from .schedules import (
    MAX_BETA,
    SCHEDULES,
    BernoulliSchedule,
    continuous_alpha_bar,
    make_betas,
    make_schedule,
)

__all__ = [
    "MAX_BETA",
    "SCHEDULES",
    "BernoulliDiffusion",
    "BernoulliSchedule",
    "DenoiseFn",
    "DiffusionLoss",
    "FirstStepTerm",
    "ModelPosterior",
    "Parameterization",
    "Sampler",
    "bernoulli_kl",
    "bernoulli_nll",
    "calibrate",
    "continuous_alpha_bar",
    "diffusion_loss",
    "focal_loss",
    "make_betas",
    "make_schedule",
    "prior_flip_rate",
    "posterior_mean",
    "q_sample",
    "respace",
    "sample",
    "sample_chain",
    "step_coefficients",
    "to_mask",
]
