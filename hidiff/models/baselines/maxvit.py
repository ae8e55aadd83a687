"""MaxViT / MaxxViT backbones of MERIT, re-implemented in plain torch (timm is not required).

MERIT (Rahman & Marculescu, "Multi-scale Hierarchical Vision Transformer with Cascaded Attention
Decoding for Medical Image Segmentation", MIDL 2023; github.com/SLDGroup/MERIT at commit
31b0263d79259209df05c41f7ef4b1b42c5addd5, ``lib/maxxvit_4out.py``, a copy of timm 0.6's
``maxxvit.py`` that returns the four stage outputs) builds its two backbones with
``model_scale='small'``:

- ``maxxvit_rmlp_small_rw_256`` for the 256x256 branch: :func:`maxxvit_rmlp_small`;
- ``maxvit_rmlp_small_rw_224`` for the 224x224 branch: :func:`maxvit_rmlp_small`.

Shared configuration (timm ``MaxxVitCfg``): widths (96, 192, 384, 768) at strides 4, 8, 16, 32,
depths (2, 2, 5, 2), every block a MaxViT block (conv block, then block attention, then grid
attention). The attention is channels-last with head width 32, qkv and projection biases,
LayerNorm (eps 1e-6), an MLP of expansion 4 with GELU, LayerScale (init 1e-6) on both branches,
and an MLP relative-position bias ("rmlp": Linear(2, 512) -> ReLU -> Linear(512, heads) on the
log-spaced relative coordinates sign(d) * log(1 + |d|), timm's "cr" mode). The window and grid
sizes are ``image_size // 32`` (timm ``partition_ratio``; timm fixes the input size from the
pretrained config: 8 at 256, 7 at 224). The last stage output goes through a final LayerNorm2d.

Conv blocks and stems (the only differences between the two backbones):

- ``maxvit_rmlp_small_rw_224`` (timm ``_rw_max_cfg``): stem conv3x3/2 (3 -> 32, no bias) ->
  BatchNorm -> SiLU -> conv3x3 (32 -> 64, no bias); MBConv blocks: pre-BatchNorm, 1x1 expansion
  (x4 of the INPUT width, no bias) -> BN -> SiLU, depthwise 3x3 (stride 2 in the first block of a
  stage, no bias) -> BN -> SiLU, squeeze-excite (width mid/16, SiLU, biases), 1x1 projection (no
  bias); shortcut: 2x2 average pool + 1x1 conv (no bias) when downsampling.
- ``maxxvit_rmlp_small_rw_256`` (timm ``_next_cfg``): stem conv3x3/2 (3 -> 48) -> LayerNorm2d ->
  GELU -> conv3x3 (48 -> 96), no biases; ConvNeXt blocks: depthwise 7x7 (groups = input width,
  stride 2 in the first block of a stage, bias) -> LayerNorm2d -> 1x1 MLP (x4, GELU, biases) ->
  LayerScale (1e-6); shortcut: 2x2 average pool + 1x1 conv (with bias) when downsampling.

Parameter counts (the reference code run with its configuration, no classifier head, final norm
included): ``maxvit_rmlp_small_rw_224`` 64,126,044; ``maxxvit_rmlp_small_rw_256`` 65,241,516.
timm's model cards list 64.9 M and 66.0 M, i.e. these plus the 768 x 1000 classifier (769,000).
Eval-mode outputs match the reference to float rounding when the weights are copied in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_map, check_positive_int

#: Total stride of the backbones (stem 2 x four stages of 2); also timm's window ``partition_ratio``.
TOTAL_STRIDE = 32
#: Width of one attention head.
HEAD_WIDTH = 32


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map: ``(B, C, H, W) -> (B, C, H, W)``."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (init ``init_value``) on the last dim, or on dim 1 for NCHW maps."""

    def __init__(self, channels: int, init_value: float = 1e-6, channels_last: bool = True) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), init_value))
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        return x * (self.gamma if self.channels_last else self.gamma[:, None, None])


def _make_divisible(value: float, divisor: int = 8) -> int:
    """timm's channel rounding: nearest multiple of ``divisor``, never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class Downsample(nn.Sequential):
    """Shortcut of a stride-2 block: 2x2 average pool, then a 1x1 conv when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool) -> None:
        layers: list[nn.Module] = [nn.AvgPool2d(2)]
        if in_channels != out_channels:
            layers.append(nn.Conv2d(in_channels, out_channels, 1, bias=bias))
        super().__init__(*layers)


def _shortcut(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Module:
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    if stride == 2:
        return Downsample(in_channels, out_channels, bias)
    if in_channels != out_channels:
        raise ValueError(
            f"a stride-1 block keeps its width, got in_channels={in_channels}, out_channels={out_channels}"
        )
    return nn.Identity()


class SqueezeExcite(nn.Module):
    """x * sigmoid(conv1x1(SiLU(conv1x1(mean_hw(x))))): ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(F.silu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class MBConv(nn.Module):
    """timm "rw" MBConv block: ``(B, in, H, W) -> (B, out, H / stride, W / stride)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        mid = _make_divisible(4 * in_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride, bias=False)
        self.pre_norm = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.norm1 = nn.Sequential(nn.BatchNorm2d(mid), nn.SiLU())
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.norm2 = nn.Sequential(nn.BatchNorm2d(mid), nn.SiLU())
        self.se = SqueezeExcite(mid, mid // 16)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(self.conv1(self.pre_norm(x)))
        h = self.se(self.norm2(self.conv2(h)))
        return self.conv3(h) + self.shortcut(x)


class ConvNeXtBlock(nn.Module):
    """timm MaxxViT ConvNeXt block: ``(B, in, H, W) -> (B, out, H / stride, W / stride)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels % in_channels:
            raise ValueError(f"out_channels ({out_channels}) must be a multiple of in_channels ({in_channels})")
        self.shortcut = _shortcut(in_channels, out_channels, stride, bias=True)
        self.conv_dw = nn.Conv2d(in_channels, out_channels, 7, stride=stride, padding=3, groups=in_channels)
        self.norm = LayerNorm2d(out_channels, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Conv2d(out_channels, 4 * out_channels, 1), nn.GELU(), nn.Conv2d(4 * out_channels, out_channels, 1)
        )
        self.ls = LayerScale(out_channels, channels_last=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.ls(self.mlp(self.norm(self.conv_dw(x)))) + self.shortcut(x)


class RelPosMlp(nn.Module):
    """Relative-position bias of one window from an MLP of the log-spaced coordinate offsets.

    Shapes: ``forward() -> (heads, window^2, window^2)``.
    """

    def __init__(self, window: int, num_heads: int, hidden: int = 512) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, num_heads))
        offsets = torch.arange(-(window - 1), window, dtype=torch.float32)
        table = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).reshape(-1, 2)
        self.register_buffer("log_offsets", torch.sign(table) * torch.log1p(table.abs()), persistent=False)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        delta = coords[:, :, None] - coords[:, None, :] + window - 1
        self.register_buffer("index", delta[0] * (2 * window - 1) + delta[1], persistent=False)

    def forward(self) -> Tensor:
        return self.mlp(self.log_offsets)[self.index].permute(2, 0, 1)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, plus the relative-position bias.

    Shapes: ``(N, window^2, dim) -> (N, window^2, dim)``.
    """

    def __init__(self, dim: int, window: int) -> None:
        super().__init__()
        if dim % HEAD_WIDTH:
            raise ValueError(f"dim must be a multiple of {HEAD_WIDTH}, got {dim}")
        self.num_heads = dim // HEAD_WIDTH
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rel_pos = RelPosMlp(window, self.num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, tokens, _ = x.shape
        # Per head the qkv features are laid out [q | k | v] (timm's layout, so weights carry over).
        qkv = self.qkv(x).view(n, tokens, self.num_heads, 3 * HEAD_WIDTH).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        scores = (q @ k.transpose(-2, -1)) * HEAD_WIDTH**-0.5 + self.rel_pos()
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, tokens, -1))


def _partition(x: Tensor, size: int, grid: bool) -> Tensor:
    """``(B, H, W, C) -> (B * H * W / size^2, size^2, C)``: contiguous windows or a dilated grid."""
    b, h, w, c = x.shape
    if grid:
        x = x.view(b, size, h // size, size, w // size, c).permute(0, 2, 4, 1, 3, 5)
    else:
        x = x.view(b, h // size, size, w // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, c)


def _unpartition(windows: Tensor, size: int, grid: bool, height: int, width: int) -> Tensor:
    """Inverse of :func:`_partition`: ``(B * H * W / size^2, size^2, C) -> (B, H, W, C)``."""
    c = windows.shape[-1]
    x = windows.view(-1, height // size, width // size, size, size, c)
    x = x.permute(0, 3, 1, 4, 2, 5) if grid else x.permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


class PartitionAttention(nn.Module):
    """Pre-norm transformer layer on block (contiguous) or grid (dilated) partitions.

    Shapes: channels-last ``(B, H, W, dim) -> (B, H, W, dim)``, H and W multiples of ``size``.
    """

    def __init__(self, dim: int, size: int, grid: bool) -> None:
        super().__init__()
        self.size = size
        self.grid = grid
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention(dim, size)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        _, height, width, _ = x.shape
        windows = self.attn(_partition(self.norm1(x), self.size, self.grid))
        x = x + self.ls1(_unpartition(windows, self.size, self.grid, height, width))
        return x + self.ls2(self.mlp(self.norm2(x)))


class MaxVitBlock(nn.Module):
    """Conv block, then block attention, then grid attention: ``(B, in, H, W) -> (B, out, H / s, W / s)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, conv_block: str, partition: int) -> None:
        super().__init__()
        conv = {"mbconv": MBConv, "convnext": ConvNeXtBlock}[conv_block]
        self.conv = conv(in_channels, out_channels, stride)
        self.attn_block = PartitionAttention(out_channels, partition, grid=False)
        self.attn_grid = PartitionAttention(out_channels, partition, grid=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.attn_grid(self.attn_block(x)).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class MaxVitConfig:
    """One timm MaxViT variant (see the module docstring).

    Attributes:
        stem_widths: widths of the two stem convs.
        conv_block: ``"mbconv"`` (MaxViT) or ``"convnext"`` (MaxxViT); also picks the stem's
            norm/activation (BatchNorm + SiLU, or LayerNorm2d + GELU).
        widths: stage widths at strides 4, 8, 16, 32.
        depths: blocks per stage.
    """

    stem_widths: tuple[int, int]
    conv_block: str
    widths: tuple[int, int, int, int] = (96, 192, 384, 768)
    depths: tuple[int, int, int, int] = (2, 2, 5, 2)


#: timm ``maxvit_rmlp_small_rw_224`` (MERIT's second backbone).
MAXVIT_RMLP_SMALL = MaxVitConfig(stem_widths=(32, 64), conv_block="mbconv")
#: timm ``maxxvit_rmlp_small_rw_256`` (MERIT's first backbone).
MAXXVIT_RMLP_SMALL = MaxVitConfig(stem_widths=(48, 96), conv_block="convnext")


class MaxVit(nn.Module):
    """A MaxViT backbone returning its four stage outputs.

    Args:
        config: the variant (:data:`MAXVIT_RMLP_SMALL` or :data:`MAXXVIT_RMLP_SMALL`).
        image_size: the fixed input size; a multiple of 32. The attention windows and grids are
            ``image_size // 32`` wide (timm's rule).
        in_channels: image channels (3 for the ImageNet backbones).

    Shapes:
        ``forward(x)``: float ``(B, in_channels, image_size, image_size)`` ->
        ``[f_i (B, config.widths[i], image_size / 2^(i+2), image_size / 2^(i+2)) for i in 0..3]``;
        the last one is layer-normalised.
    """

    def __init__(self, config: MaxVitConfig, image_size: int, in_channels: int = 3) -> None:
        super().__init__()
        check_positive_int("image_size", image_size)
        check_positive_int("in_channels", in_channels)
        if config.conv_block not in ("mbconv", "convnext"):
            raise ValueError(f"config.conv_block must be 'mbconv' or 'convnext', got {config.conv_block!r}")
        if image_size % TOTAL_STRIDE:
            raise ValueError(f"image_size must be a multiple of {TOTAL_STRIDE}, got {image_size}")
        self.config = config
        self.image_size = image_size
        self.in_channels = in_channels
        self.widths: tuple[int, int, int, int] = config.widths
        partition = image_size // TOTAL_STRIDE

        s0, s1 = config.stem_widths
        if config.conv_block == "mbconv":
            stem_norm: list[nn.Module] = [nn.BatchNorm2d(s0), nn.SiLU()]
        else:
            stem_norm = [LayerNorm2d(s0, eps=1e-6), nn.GELU()]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, s0, 3, stride=2, padding=1, bias=False),
            *stem_norm,
            nn.Conv2d(s0, s1, 3, padding=1, bias=False),
        )
        stages = []
        previous = s1
        for width, depth in zip(config.widths, config.depths, strict=True):
            blocks = [
                MaxVitBlock(previous if i == 0 else width, width, 2 if i == 0 else 1, config.conv_block, partition)
                for i in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.norm = LayerNorm2d(config.widths[-1], eps=1e-6)

    def forward(self, x: Tensor) -> list[Tensor]:
        check_map("x", x, self.in_channels, self.image_size)
        h = self.stem(x)
        features = []
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        features[-1] = self.norm(features[-1])
        return features


def maxvit_rmlp_small(image_size: int = 224, in_channels: int = 3) -> MaxVit:
    """timm ``maxvit_rmlp_small_rw_224`` (at ``image_size``): 64,126,044 parameters for 3 channels."""
    return MaxVit(MAXVIT_RMLP_SMALL, image_size, in_channels)


def maxxvit_rmlp_small(image_size: int = 256, in_channels: int = 3) -> MaxVit:
    """timm ``maxxvit_rmlp_small_rw_256`` (at ``image_size``): 65,241,516 parameters for 3 channels."""
    return MaxVit(MAXXVIT_RMLP_SMALL, image_size, in_channels)
