"""MedSegDiff-V2's denoiser: a guided-diffusion U-Net with an image condition U-Net (anchor condition).

Source: Wu, Ji, Fu, Xu, Jin & Xu, "MedSegDiff-V2: Diffusion based Medical Image Segmentation
with Transformer", AAAI 2024 (arXiv 2301.11798); code github.com/MedicineToken/MedSegDiff
(formerly KidsWithTokens/MedSegDiff) at commit b4aee379c28ecb8d750d5dd25499e0025adc0d2e, the
default ``--version new`` ("based on the v2 framework"): ``guided_diffusion/unet.py``
``UNetModel_newpreview`` and ``Generic_UNet``, ``guided_diffusion/script_util.py``
``create_model``, README flags ``--image_size 256 --num_channels 128 --num_res_blocks 2
--num_heads 1 --learn_sigma True --use_scale_shift_norm False --attention_resolutions 16
--diffusion_steps 1000``; ``in_ch`` = image channels + 1 (4 for ISIC, 5 for BraTS),
``out_channels=2`` (noise and the learned variance interpolation).

Per step the public forward runs:

- the condition model (``high_way``: nnU-Net's ``Generic_UNet`` with 32 base features, 5
  poolings, widths 32, 64, 128, 256, 480 and a 480 bottleneck, two conv3x3-BN-LeakyReLU(0.01)
  per stage, max pooling, bilinear x2 upsampling, a 1x1 sigmoid head without bias) on the image;
  its decoder outputs at H/2 (32 channels) and H/4 (64 channels), upsampled bilinearly to H, are
  the anchors: ``concat(a_2, a_2, a_4)`` (128 channels) is added, detached, to the denoiser's
  first feature map (the anchor condition); the sigmoid head is the calibration map returned
  next to the prediction;
- the guided-diffusion U-Net (:mod:`.guided_unet`) on ``concat(image, x_t)``.

Simplifications (none changes the parameter count; the multiply-accumulates change by less than
0.5%): the encoder's ``Dropout2d(0.5)`` (inactive at inference) is omitted; the public
``Generic_UNet`` also builds a fresh, unregistered 1x1 conv (480 -> 512) on its bottleneck inside
every forward and discards its result in anchor mode (15.7 M MACs at 256x256), and upsamples two
more decoder maps that are never used: both are omitted. The paper's SS-Former (cross-attention
between the condition model's and the denoiser's deepest embeddings in the Fourier domain) and
its uncertain spatial attention are not in the public code and are not modelled; on the 8x8
embeddings of a 256x256 input one 512-wide transformer layer costs about 0.2 G MACs, under 0.2%
of the step.

The public model is binary (one mask channel, two output channels); here the mask has K channels
and the output 2K. Parameter count of the reference code at 256x256 with K = 1: 129,400,450 for a
3-channel image (ISIC), of which the condition model is 15,727,232; 129,397,570 for a
1-channel image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_map, check_positive_int, check_timesteps
from .guided_unet import GuidedDiffusionUNet


class ConvNormAct(nn.Sequential):
    """conv3x3 (with bias) -> BatchNorm -> LeakyReLU(0.01)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


class ConditionUNet(nn.Module):
    """MedSegDiff's condition model: nnU-Net's 2-D ``Generic_UNet`` at the public configuration.

    Args:
        in_channels: image channels.
        base_width: features of the first stage (doubled per stage up to ``max_width``).
        num_pool: number of 2x2 max poolings (H must be divisible by ``2 ** num_pool``).
        max_width: cap on the stage widths (nnU-Net's 480 for 2-D).

    Shapes:
        ``forward(image)``: float ``(B, in_channels, H, W)`` -> ``(anchors, calibration)`` with the
        anchors ``[(B, base_width, H, W), (B, 2 * base_width, H, W)]`` (the decoder outputs at H/2
        and H/4, upsampled) and the calibration map float ``(B, 1, H, W)`` in (0, 1).
    """

    def __init__(self, in_channels: int, base_width: int = 32, num_pool: int = 5, max_width: int = 480) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("base_width", base_width),
            ("num_pool", num_pool),
            ("max_width", max_width),
        ):
            check_positive_int(name, value)
        if num_pool < 3:
            raise ValueError(f"num_pool must be at least 3 (anchors come from the H/2 and H/4 levels), got {num_pool}")
        self.num_pool = num_pool
        widths = [min(base_width * 2**d, max_width) for d in range(num_pool)]
        self.encoder = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoder.append(nn.Sequential(ConvNormAct(previous, width), ConvNormAct(width, width)))
            previous = width
        bottleneck = min(2 * widths[-1], max_width)
        self.bottleneck = nn.Sequential(ConvNormAct(widths[-1], bottleneck), ConvNormAct(bottleneck, widths[-1]))
        self.decoder = nn.ModuleList()
        for u in range(num_pool):
            skip = widths[-(u + 1)]
            following = widths[-(u + 2)] if u < num_pool - 1 else skip
            self.decoder.append(nn.Sequential(ConvNormAct(2 * skip, skip), ConvNormAct(skip, following)))
        self.head = nn.Conv2d(widths[0], 1, 1, bias=False)

    def forward(self, image: Tensor) -> tuple[list[Tensor], Tensor]:
        size = image.shape[2:]
        skips = []
        h = image
        for block in self.encoder:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottleneck(h)
        decoded = []
        for block in self.decoder:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skips.pop()], dim=1))
            decoded.append(h)
        anchors = [
            F.interpolate(d, size=size, mode="bilinear", align_corners=False) for d in (decoded[-2], decoded[-3])
        ]
        return anchors, torch.sigmoid(self.head(h))


class MedSegDiffV2(nn.Module):
    """MedSegDiff-V2 denoiser with its condition model (see the module docstring).

    Args:
        image_channels: channels of the conditioning image.
        num_classes: K, channels of the mask.
        image_size: input size, one of 32, 64, 128, 256, 512 (selects ``channel_mult``).

    Shapes:
        ``forward(x_t, t, image)``: x_t float ``(B, K, S, S)`` (the noisy mask), t int ``(B,)``,
        image float ``(B, image_channels, S, S)`` with ``S = image_size`` ->
        ``(prediction (B, 2K, S, S), calibration (B, 1, S, S))``: the predicted noise and variance
        interpolation per mask channel, and the condition model's sigmoid map.
    """

    def __init__(self, image_channels: int, num_classes: int, image_size: int = 256) -> None:
        super().__init__()
        self.image_channels = check_positive_int("image_channels", image_channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.image_size = image_size
        self.unet = GuidedDiffusionUNet(image_channels + num_classes, 2 * num_classes, image_size)
        self.condition = ConditionUNet(image_channels)

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        check_map("x_t", x_t, self.num_classes, self.image_size)
        check_map("image", image, self.image_channels, self.image_size)
        check_timesteps(t, x_t.shape[0])
        (half, quarter), calibration = self.condition(image)
        # The anchors condition the denoiser without back-propagating into the condition model,
        # which is trained by its own loss on the calibration map (public code: .detach()).
        anchor = torch.cat([half, half, quarter], dim=1).detach()
        return self.unet(torch.cat([image, x_t], dim=1), t, input_residual=anchor), calibration
