"""The registry of Table XI baselines: how to build each network, feed it, and count it.

Table XI (HIDIFF_SPEC section 8) reports FLOPs and storage at 256x256 with 10 sampling steps:
a segmentor counts one forward; a diffusion denoiser counts one forward per step; an integrated
method adds its segmentor's forward once (``segmentor + denoiser x steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from ._common import check_positive_int
from .berdiff import BerDiff
from .medsegdiff_v2 import MedSegDiffV2
from .merit import MERIT
from .pd_ddpm import DIFFUSION_STEPS, PDDDPM, START_STEP

#: Roles: one forward per inference, or one forward per sampling step.
ROLE_SEGMENTOR = "segmentor"
ROLE_DENOISER = "denoiser per step"
#: Sampling steps of the diffusion baselines in Table XI (DDIM).
TABLE_XI_STEPS = 10
#: Resolution of Table XI.
TABLE_XI_IMAGE_SIZE = 256


@dataclass(frozen=True)
class BaselineSpec:
    """One Table XI baseline.

    Attributes:
        name: the name printed in the table.
        build: ``(image_channels, num_classes, image_size) -> nn.Module``.
        example_inputs: ``(image_channels, num_classes, image_size, batch_size=1, device="cpu")
            -> args`` of one forward of the built module (random, seeded).
        role: :data:`ROLE_SEGMENTOR` (one forward per inference) or :data:`ROLE_DENOISER` (one
            forward per sampling step).
        integrated_with_segmentor: the method starts from a separately trained segmentor's output
            (PD-DDPM), so its inference cost adds one segmentor forward. MedSegDiff-V2's condition
            network runs inside every denoiser forward and is counted there.
        sampling_steps: forwards per inference in Table XI (1 for a segmentor, 10 DDIM steps for
            the diffusion baselines).
        source: paper and public code the network follows (details in its module docstring).
    """

    name: str
    build: Callable[[int, int, int], nn.Module]
    example_inputs: Callable[..., tuple[Tensor, ...]]
    role: str
    integrated_with_segmentor: bool
    sampling_steps: int
    source: str


def _check_sizes(image_channels: int, num_classes: int, image_size: int, batch_size: int) -> None:
    for name, value in (
        ("image_channels", image_channels),
        ("num_classes", num_classes),
        ("image_size", image_size),
        ("batch_size", batch_size),
    ):
        check_positive_int(name, value)


def segmentor_inputs(
    image_channels: int, num_classes: int, image_size: int, batch_size: int = 1, device: torch.device | str = "cpu"
) -> tuple[Tensor]:
    """``(image,)``: a standard-normal float ``(batch_size, image_channels, image_size, image_size)``."""
    _check_sizes(image_channels, num_classes, image_size, batch_size)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch_size, image_channels, image_size, image_size, generator=generator)
    return (image.to(device),)


def denoiser_inputs(
    image_channels: int,
    num_classes: int,
    image_size: int,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    *,
    binary_mask: bool,
    timestep: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(noisy_mask, t, image)`` for a denoiser's first reverse step.

    Args:
        binary_mask: a {0, 1} mask (Bernoulli diffusion) instead of a standard-normal one.
        timestep: the value of ``t`` (the first reverse step of the sampler).

    Returns:
        noisy mask float ``(B, K, S, S)``, t int64 ``(B,)``, image float ``(B, Cimg, S, S)``.
    """
    _check_sizes(image_channels, num_classes, image_size, batch_size)
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, num_classes, image_size, image_size)
    if binary_mask:
        mask = torch.randint(0, 2, shape, generator=generator).float()
    else:
        mask = torch.randn(shape, generator=generator)
    t = torch.full((batch_size,), timestep, dtype=torch.int64)
    image = torch.randn(batch_size, image_channels, image_size, image_size, generator=generator)
    return mask.to(device), t.to(device), image.to(device)


BASELINES: dict[str, BaselineSpec] = {
    "merit": BaselineSpec(
        name="MERIT",
        build=MERIT,
        example_inputs=segmentor_inputs,
        role=ROLE_SEGMENTOR,
        integrated_with_segmentor=False,
        sampling_steps=1,
        source="Rahman & Marculescu, MIDL 2023; github.com/SLDGroup/MERIT (MERIT_Cascaded, small, additive)",
    ),
    "berdiff": BaselineSpec(
        name="BerDiff",
        build=BerDiff,
        example_inputs=partial(denoiser_inputs, binary_mask=True, timestep=DIFFUSION_STEPS - 1),
        role=ROLE_DENOISER,
        integrated_with_segmentor=False,
        sampling_steps=TABLE_XI_STEPS,
        source="Chen, Wang & Shan, MICCAI 2023 (arXiv 2304.04429); github.com/takimailto/BerDiff",
    ),
    "pd_ddpm": BaselineSpec(
        name="PD-DDPM",
        build=PDDDPM,
        example_inputs=partial(denoiser_inputs, binary_mask=False, timestep=START_STEP - 1),
        role=ROLE_DENOISER,
        integrated_with_segmentor=True,
        sampling_steps=TABLE_XI_STEPS,
        source="Guo et al., ISBI 2023 (arXiv 2210.17408); github.com/Guoxt/ADDPM",
    ),
    "medsegdiff_v2": BaselineSpec(
        name="MedSegDiff-V2",
        build=MedSegDiffV2,
        example_inputs=partial(denoiser_inputs, binary_mask=False, timestep=DIFFUSION_STEPS - 1),
        role=ROLE_DENOISER,
        integrated_with_segmentor=False,
        sampling_steps=TABLE_XI_STEPS,
        source="Wu et al., AAAI 2024 (arXiv 2301.11798); github.com/MedicineToken/MedSegDiff (version 'new')",
    ),
}


def build_baseline(
    name: str, image_channels: int, num_classes: int, image_size: int = TABLE_XI_IMAGE_SIZE
) -> nn.Module:
    """Builds the baseline registered as ``name`` (a key of :data:`BASELINES`).

    Raises:
        ValueError: ``name`` is not registered.
    """
    if name not in BASELINES:
        raise ValueError(f"name must be one of {sorted(BASELINES)}, got {name!r}")
    return BASELINES[name].build(image_channels, num_classes, image_size)
