"""BerDiff's denoiser: a guided-diffusion U-Net on ``concat(y_t, image)`` with a sigmoid output.

Source: Chen, Wang & Shan, "BerDiff: Conditional Bernoulli Diffusion Model for Medical Image
Segmentation", MICCAI 2023 (arXiv 2304.04429); code github.com/takimailto/BerDiff at commit
d0978f1e0130d0eace2a01afb5a37867fc0c4c90 (``codes/model/unet.py`` ``SegmentationModel``,
``codes/scripts/script_util.py`` ``create_model``, configuration of ``codes/test.py`` for the
released checkpoint): ``num_channels=128, num_res_blocks=2, num_heads=1,
attention_resolutions="16", use_scale_shift_norm=False, dropout=0``, channel_mult from the image
size ((1, 1, 2, 2, 4, 4) at 256), 1000 diffusion steps sampled with 10 DDIM steps
(``timestep_respacing="ddimuni10"``). The network predicts the Bernoulli noise probabilities
(``mean_type="epsilon"``) through a sigmoid. It has no segmentor: the reverse process starts
from Bernoulli(0.5) noise.

The public model is binary (K = 1: ``in_channels = out_channels = 1``); for K classes each
channel is an independent Bernoulli variable, so the mask and the output have K channels.
Parameter count of the reference code at 256x256 with a 1-channel image and K = 1: 113,669,761
(113,672,065 with a 3-channel image).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import check_map, check_positive_int, check_timesteps
from .guided_unet import GuidedDiffusionUNet


class BerDiff(nn.Module):
    """BerDiff denoiser (see the module docstring).

    Args:
        image_channels: channels of the conditioning image.
        num_classes: K, channels of the Bernoulli mask.
        image_size: input size, one of 32, 64, 128, 256, 512 (selects ``channel_mult``).

    Shapes:
        ``forward(y_t, t, image)``: y_t float ``(B, K, S, S)`` (the noisy binary mask), t int
        ``(B,)``, image float ``(B, image_channels, S, S)`` with ``S = image_size`` -> the predicted
        noise probabilities float ``(B, K, S, S)`` in (0, 1).
    """

    def __init__(self, image_channels: int, num_classes: int, image_size: int = 256) -> None:
        super().__init__()
        self.image_channels = check_positive_int("image_channels", image_channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.image_size = image_size
        self.unet = GuidedDiffusionUNet(num_classes + image_channels, num_classes, image_size)

    def forward(self, y_t: Tensor, t: Tensor, image: Tensor) -> Tensor:
        check_map("y_t", y_t, self.num_classes, self.image_size)
        check_map("image", image, self.image_channels, self.image_size)
        check_timesteps(t, y_t.shape[0])
        return torch.sigmoid(self.unet(torch.cat([y_t, image], dim=1), t))
