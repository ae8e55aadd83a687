"""MERIT, the segmentor of Table XI: two MaxViT backbones and a shared CASCADE decoder.

Source: Rahman & Marculescu, "Multi-scale Hierarchical Vision Transformer with Cascaded
Attention Decoding for Medical Image Segmentation", MIDL 2023; code github.com/SLDGroup/MERIT at
commit 31b0263d79259209df05c41f7ef4b1b42c5addd5 (``lib/networks.py`` ``MERIT_Cascaded``,
``lib/decoders.py`` ``CASCADE_Add``). HiDiff's public code (github.com/takimailto/HiDiff,
``scripts/segmentation_main.py``) builds it as ``MERIT_Cascaded(n_class=K, img_size_s1=(256, 256),
img_size_s2=(224, 224), model_scale='small', decoder_aggregation='additive',
interpolation='bilinear')``, which is the configuration here:

- backbone 1: ``maxxvit_rmlp_small_rw_256`` on the image at 256x256; backbone 2:
  ``maxvit_rmlp_small_rw_224`` on the image at 224x224 multiplied by the first pass's
  sigmoid feedback map (a 1x1 conv 96 -> 1 of its H/4 decoder output, upsampled x4). The second
  decoder pass adds the first backbone's features, resized bilinearly, to the second's.
- One CASCADE decoder (additive aggregation, widths (768, 384, 192, 96)) shared by both passes:
  1x1 conv, then per level channel attention (avg- and max-pooled shared MLP, reduction 16, no
  biases) and spatial attention (7x7 conv on [mean, max] over channels, shared by all levels),
  two conv3x3-BN-ReLU; upsampling by nearest x2 + conv3x3-BN-ReLU; attention gates on the skips
  (1x1 conv + BN on gate and skip, ReLU, 1x1 conv to 1 + BN + sigmoid).
- Four 1x1 prediction heads (at H/32, H/16, H/8, H/4), shared by both passes; the maps are
  upsampled bilinearly to the input size and summed over the two passes. MERIT's evaluation sums
  the four resulting maps: that sum is the output here.
- A 1x1 conv + BN + ReLU maps a grayscale image to 3 channels (the public code always holds it
  for 1 channel and applies it only to 1-channel inputs).

Parameter counts of the reference code (``MERIT_Cascaded``, 'small', additive): 147,848,404 for
K = 1 and 147,859,956 for K = 9 (Synapse), of which the shared decoder is 18,479,291; these
include the 12 parameters of the 1 -> 3 input adapter.

Deviations (no effect on the cost at the paper's 256x256): the second backbone runs at 7/8 of
``image_size`` rounded down to a multiple of 32 (224 for 256; MERIT fixes 256 and 224 and resizes
every input to them); the input must already be ``image_size`` square, so the first backbone
needs no resize; an RGB (3-channel) image has no input adapter (the public code keeps an unused
one: 12 parameters), and other channel counts get an ``in -> 3`` adapter of the same form (the
public code supports 1 and 3 only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_map, check_positive_int
from .maxvit import TOTAL_STRIDE, maxvit_rmlp_small, maxxvit_rmlp_small

#: CASCADE decoder widths, deepest first (the MaxViT-small stage widths).
DECODER_WIDTHS = (768, 384, 192, 96)


def second_image_size(image_size: int) -> int:
    """Resolution of MERIT's second backbone: 7/8 of ``image_size`` rounded down to a multiple of 32."""
    return 7 * image_size // 8 // TOTAL_STRIDE * TOTAL_STRIDE


class ConvBNReLU(nn.Sequential):
    """conv (with bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpConv(nn.Sequential):
    """Nearest x2 upsampling then conv3x3-BN-ReLU: ``(B, in, H, W) -> (B, out, 2H, 2W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2), ConvBNReLU(in_channels, out_channels))


class AttentionGate(nn.Module):
    """Attention gate on a skip: ``x * sigmoid(BN(conv(ReLU(BN(conv g) + BN(conv x)))))``.

    Shapes: ``g (B, C, H, W), x (B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(channels, inner, 1), nn.BatchNorm2d(inner))
        self.w_x = nn.Sequential(nn.Conv2d(channels, inner, 1), nn.BatchNorm2d(inner))
        self.psi = nn.Sequential(nn.Conv2d(inner, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: Tensor, x: Tensor) -> Tensor:
        return x * self.psi(F.relu(self.w_g(g) + self.w_x(x)))


class ChannelAttention(nn.Module):
    """``sigmoid(mlp(avgpool x) + mlp(maxpool x))``: ``(B, C, H, W) -> (B, C, 1, 1)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 16, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // 16, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        avg = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        peak = self.fc2(F.relu(self.fc1(x.amax((2, 3), keepdim=True))))
        return torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """``sigmoid(conv7x7([mean_c x, max_c x]))``: ``(B, C, H, W) -> (B, 1, H, W)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)))


class CascadeDecoder(nn.Module):
    """CASCADE with additive aggregation (MERIT's ``CASCADE_Add``).

    Args:
        widths: feature widths, deepest first.

    Shapes:
        ``forward(x, skips)``: x ``(B, widths[0], h, w)``, skips ``[(B, widths[i], h * 2^i, w * 2^i)
        for i in 1..3]`` -> the four decoded maps ``[(B, widths[i], h * 2^i, w * 2^i) for i in 0..3]``.
    """

    def __init__(self, widths: tuple[int, int, int, int] = DECODER_WIDTHS) -> None:
        super().__init__()
        self.conv_1x1 = nn.Conv2d(widths[0], widths[0], 1)
        self.conv_blocks = nn.ModuleList(nn.Sequential(ConvBNReLU(c, c), ConvBNReLU(c, c)) for c in widths)
        self.ups = nn.ModuleList(UpConv(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        # Gate inner widths: the next (shallower) width, half the last one at the shallowest level.
        inner = (*widths[2:], widths[3] // 2)
        self.gates = nn.ModuleList(AttentionGate(c, i) for c, i in zip(widths[1:], inner, strict=True))
        self.channel_attention = nn.ModuleList(ChannelAttention(c) for c in widths)
        self.spatial_attention = SpatialAttention()

    def _refine(self, level: int, d: Tensor) -> Tensor:
        d = self.channel_attention[level](d) * d
        d = self.spatial_attention(d) * d
        return self.conv_blocks[level](d)

    def forward(self, x: Tensor, skips: list[Tensor]) -> list[Tensor]:
        d = self._refine(0, self.conv_1x1(x))
        outputs = [d]
        for level, skip in enumerate(skips, start=1):
            d = self.ups[level - 1](d)
            d = self._refine(level, d + self.gates[level - 1](d, skip))
            outputs.append(d)
        return outputs


class MERIT(nn.Module):
    """Cascaded MERIT-small with the additive CASCADE decoder (see the module docstring).

    Args:
        in_channels: image channels.
        num_classes: K, logit channels.
        image_size: input size, a multiple of 32 (256 in Table XI); the second backbone runs at
            :func:`second_image_size` (224 for 256).

    Shapes:
        ``forward(x)``: float ``(B, in_channels, image_size, image_size)`` -> logits
        ``(B, K, image_size, image_size)``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 256) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        check_positive_int("image_size", image_size)
        if image_size % TOTAL_STRIDE or image_size < 2 * TOTAL_STRIDE:
            raise ValueError(
                f"image_size must be a multiple of {TOTAL_STRIDE} and at least {2 * TOTAL_STRIDE}, got {image_size}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size
        self.second_image_size = second_image_size(image_size)
        self.adapter = (
            nn.Identity()
            if in_channels == 3
            else nn.Sequential(nn.Conv2d(in_channels, 3, 1), nn.BatchNorm2d(3), nn.ReLU(inplace=True))
        )
        self.backbone1 = maxxvit_rmlp_small(image_size)
        self.backbone2 = maxvit_rmlp_small(self.second_image_size)
        self.decoder = CascadeDecoder(DECODER_WIDTHS)
        self.heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in DECODER_WIDTHS)
        self.feedback_head = nn.Conv2d(DECODER_WIDTHS[-1], 1, 1)

    def _decode(self, features: list[Tensor], size: tuple[int, int]) -> tuple[list[Tensor], Tensor]:
        """Decoder + heads: the four logit maps upsampled bilinearly to ``size``, and the H/4 decoded map."""
        decoded = self.decoder(features[3], [features[2], features[1], features[0]])
        return [
            F.interpolate(head(d), size=size, mode="bilinear", align_corners=False)
            for head, d in zip(self.heads, decoded, strict=True)
        ], decoded[-1]

    def forward(self, x: Tensor) -> Tensor:
        check_map("x", x, self.in_channels, self.image_size)
        x = self.adapter(x)
        size = (self.image_size, self.image_size)
        f1 = self.backbone1(x)
        maps1, shallow = self._decode(f1, size)
        feedback = F.interpolate(
            torch.sigmoid(self.feedback_head(shallow)), size=size, mode="bilinear", align_corners=False
        )
        second = (self.second_image_size, self.second_image_size)
        f2 = self.backbone2(F.interpolate(x * feedback, size=second, mode="bilinear", align_corners=False))
        f2 = [
            b + F.interpolate(a, size=b.shape[2:], mode="bilinear", align_corners=False)
            for a, b in zip(f1, f2, strict=True)
        ]
        maps2, _ = self._decode(f2, size)
        return sum(a + b for a, b in zip(maps1, maps2, strict=True))
