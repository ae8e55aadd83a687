"""PD-DDPM's denoiser: a guided-diffusion U-Net on ``concat(image, x_t)`` predicting Gaussian noise.

Source: Guo, Yang, Ye, Lu, Xiang & Ma, "Accelerating Diffusion Models via Pre-segmentation
Diffusion Sampling for Medical Image Segmentation", ISBI 2023 (arXiv 2210.17408), and its
journal extension ADDPM; the public code is github.com/Guoxt/ADDPM at commit
9684e595be782b367110cbff75613d5073a79fab (``diffusion/unet.py`` ``UNetModel``,
``diffusion/script_util.py`` ``create_model``, flags of ``run.sh``): ``--image_size 256
--num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma False
--use_scale_shift_norm False --attention_resolutions 16 --diffusion_steps 1000
--noise_schedule cosine``; ``in_channels=5`` (4 BraTS modalities + the noisy mask),
``out_channels=1``. Sampling (``sample.py --pre_t 300``) noises a separately trained
segmentor's mask to step 300 of 1000 with the forward process and denoises from there: the
method is integrated with a segmentor (MERIT in Table XI). ADDPM's extra one-step denoising
network is not part of PD-DDPM and is not modelled.

The public model is binary (one mask channel); here the mask has K channels (the U-Net's input
is ``image_channels + K`` and its output K). Parameter count of the reference code at 256x256:
113,673,217 with 4 image channels and K = 1 (113,669,761 with 1 image channel).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import check_map, check_positive_int, check_timesteps
from .guided_unet import GuidedDiffusionUNet

#: Diffusion steps of training and the step the pre-segmentation is noised to (``--pre_t``).
DIFFUSION_STEPS = 1000
START_STEP = 300


class PDDDPM(nn.Module):
    """PD-DDPM denoiser (see the module docstring).

    Args:
        image_channels: channels of the conditioning image.
        num_classes: K, channels of the mask.
        image_size: input size, one of 32, 64, 128, 256, 512 (selects ``channel_mult``).

    Shapes:
        ``forward(x_t, t, image)``: x_t float ``(B, K, S, S)`` (the noisy mask), t int ``(B,)``,
        image float ``(B, image_channels, S, S)`` with ``S = image_size`` -> the predicted noise
        float ``(B, K, S, S)``.
    """

    def __init__(self, image_channels: int, num_classes: int, image_size: int = 256) -> None:
        super().__init__()
        self.image_channels = check_positive_int("image_channels", image_channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.image_size = image_size
        self.unet = GuidedDiffusionUNet(image_channels + num_classes, num_classes, image_size)

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        check_map("x_t", x_t, self.num_classes, self.image_size)
        check_map("image", image, self.image_channels, self.image_size)
        check_timesteps(t, x_t.shape[0])
        return self.unet(torch.cat([image, x_t], dim=1), t)
