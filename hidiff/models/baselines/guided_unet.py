"""The guided-diffusion U-Net shared by the diffusion baselines (BerDiff, PD-DDPM, MedSegDiff-V2).

All three public codes build the ``UNetModel`` of openai/improved-diffusion / guided-diffusion
with the same options (BerDiff ``codes/model/unet.py``; PD-DDPM/ADDPM ``diffusion/unet.py``;
MedSegDiff ``guided_diffusion/unet.py``): base width 128, two residual blocks per level, one
attention head, attention at the 16x16 level (``--attention_resolutions 16``) and in the middle
block, no scale-shift norm, convolutional resampling, no class conditioning, dropout 0. The
channel multipliers follow the image size as in their ``script_util.create_model``
(:data:`CHANNEL_MULT`).

Layers: time embedding sinusoid(C) -> Linear(C, 4C) -> SiLU -> Linear(4C, 4C); ResBlock:
GroupNorm(32) -> SiLU -> conv3x3, plus Linear(SiLU(emb)) added per channel, GroupNorm(32) ->
SiLU -> zero-initialised conv3x3, skip = identity or 1x1 conv; AttentionBlock: GroupNorm(32),
1x1 qkv projection, softmax attention over all positions (heads split before q/k/v, the
"legacy" order), zero-initialised 1x1 output projection, residual; downsampling conv3x3/2,
upsampling nearest x2 + conv3x3; output GroupNorm -> SiLU -> zero-initialised conv3x3.
The public code's 1x1 ``Conv1d`` projections of the attention are 1x1 ``Conv2d`` here (same
weights and multiply-accumulates).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import timestep_embedding, zero_module
from ._common import check_positive_int

#: ``channel_mult`` per image size in the public ``create_model`` (32 appears only in BerDiff's table).
CHANNEL_MULT: dict[int, tuple[int, ...]] = {
    512: (1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}
#: Spatial size of the attention levels (``--attention_resolutions 16``).
ATTENTION_RESOLUTION = 16


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


class ResBlock(nn.Module):
    """Time-conditioned residual block: ``x (B, in, H, W), emb (B, E) -> (B, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            _norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels), nn.SiLU(), zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over all positions: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b * self.num_heads, 3 * c // self.num_heads, h * w)
        q, k, v = qkv.chunk(3, dim=1)
        weights = torch.softmax((q.transpose(1, 2) @ k) * (c // self.num_heads) ** -0.5, dim=-1)
        out = (v @ weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Conv2d):
    """conv3x3 with stride 2: ``(B, C, H, W) -> (B, C, H/2, W/2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, stride=2, padding=1)


class Upsample(nn.Module):
    """Nearest x2 then conv3x3: ``(B, C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A sequence of layers where the :class:`ResBlock` ones also read the time embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class GuidedDiffusionUNet(nn.Module):
    """The guided-diffusion ``UNetModel`` (see the module docstring).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        image_size: input size; selects ``channel_mult`` from :data:`CHANNEL_MULT` and puts the
            attention at the 16x16 level.
        model_channels: C, the base width.
        num_res_blocks: residual blocks per level (one more per level in the decoder).
        num_heads: attention heads.

    Shapes:
        ``forward(x, t, input_residual=None)``: x float ``(B, in_channels, image_size, image_size)``,
        t int ``(B,)``, input_residual an optional float ``(B, C, image_size, image_size)`` added to
        the output of the input conv (MedSegDiff's anchor condition) -> float
        ``(B, out_channels, image_size, image_size)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        model_channels: int = 128,
        num_res_blocks: int = 2,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("model_channels", model_channels),
            ("num_res_blocks", num_res_blocks),
            ("num_heads", num_heads),
        ):
            check_positive_int(name, value)
        if image_size not in CHANNEL_MULT:
            raise ValueError(
                f"image_size must be one of {sorted(CHANNEL_MULT)} (the public channel_mult table), got {image_size!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = image_size
        self.model_channels = model_channels
        channel_mult: Sequence[int] = CHANNEL_MULT[image_size]
        attention_downsample = image_size // ATTENTION_RESOLUTION
        emb = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))

        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * model_channels, emb)]
                ch = mult * model_channels
                if ds == attention_downsample:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(ResBlock(ch, ch, emb), AttentionBlock(ch, num_heads), ResBlock(ch, ch, emb))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), mult * model_channels, emb)]
                ch = mult * model_channels
                if ds == attention_downsample:
                    layers.append(AttentionBlock(ch, num_heads))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, input_residual: Tensor | None = None) -> Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        skips = []
        h = x
        for index, block in enumerate(self.input_blocks):
            h = block(h, emb)
            if index == 0 and input_residual is not None:
                h = h + input_residual
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
