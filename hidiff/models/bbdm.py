"""The refiner: a binary (or real) Bernoulli diffusion U-Net, BBDM (HIDIFF_SPEC section 3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hidiff_kernels.nn import BinaryConv2d, BinaryLinear

from .layers import BinaryBlock, ConcatLayer, DownBlock, Head, TimeEmbedding, UpBlock, flip_probability, flip_scale
from .xformer import XFormer

#: The refiner's input must be divisible by this (five stride-2 stages).
SIZE_DIVISOR = 32

# The U-Net's wiring as names of its submodules, walked by BBDM.forward and by the frozen form
# (hidiff.models.frozen), which has submodules of the same names: the topology is written once.

#: Encoder levels at H, H/2, ..., H/16: ``(block, condition layer or None, down)``. A level's output
#: (after its condition layer, which fuses the next segmentor feature) is a skip of the decoder.
ENCODER: tuple[tuple[str, str | None, str], ...] = (
    ("block1", None, "down1"),
    ("block2", None, "down2"),
    ("block3", "concat1", "down3"),
    ("block4", "concat2", "down4"),
    ("block5", "concat3", "down5"),
)
#: Bottleneck at H/32: ``mid1``, the fusion of the deepest feature (X-Former or concatenation), ``mid2``.
BOTTLENECK: tuple[str, str, str] = ("mid1", "fuse", "mid2")
#: Decoder levels at H/16, ..., H: ``(upsampling block, merge block of concat(up, skip))``.
DECODER: tuple[tuple[str, str], ...] = (
    ("up1", "merge1"),
    ("up2", "merge2"),
    ("up3", "merge3"),
    ("up4", "merge4"),
    ("up5", "merge5"),
)
#: The layers that read a segmentor feature, in the order of the features (H/4, H/8, H/16, H/32).
CONDITIONED: tuple[str, ...] = (*(concat for _, concat, _ in ENCODER if concat is not None), BOTTLENECK[1])


def check_image_and_features(
    image: Tensor, features: Sequence[Tensor], image_channels: int, cond_channels: Sequence[int]
) -> None:
    """Checks the per-image inputs of a refiner (training or frozen form).

    Raises:
        ValueError: image is not ``(B, image_channels, H, W)`` with H, W divisible by 32, or
            features is not 4 tensors ``(B, cond_channels[i], H / 2^(i+2), W / 2^(i+2))``.
    """
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != image_channels:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a (B, {image_channels}, H, W) tensor, got {shape}")
    batch, _, height, width = image.shape
    if height % SIZE_DIVISOR or width % SIZE_DIVISOR:
        raise ValueError(f"image height and width must be divisible by {SIZE_DIVISOR}, got {height}x{width}")
    if not isinstance(features, (list, tuple)) or len(features) != len(CONDITIONED):
        raise ValueError(f"features must be a list of 4 tensors at H/4, H/8, H/16, H/32, got {type(features)}")
    for i, (feature, channels) in enumerate(zip(features, cond_channels, strict=True)):
        stride = 4 * 2**i
        want = (batch, channels, height // stride, width // stride)
        if not isinstance(feature, Tensor) or tuple(feature.shape) != want:
            shape = tuple(feature.shape) if isinstance(feature, Tensor) else type(feature).__name__
            raise ValueError(f"features[{i}] must have shape {want} (B, C, H/{stride}, W/{stride}), got {shape}")


def check_state(name: str, value: Tensor, expected: tuple[int, ...], of: str = "the image") -> None:
    """Raises a ValueError unless ``value`` (y_t or the prior) is a tensor of shape ``expected`` ``(B, K, H, W)``."""
    if not isinstance(value, Tensor) or tuple(value.shape) != expected:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must have shape {expected} (B, K, H, W) of {of}, got {shape}")


def check_timesteps(t: Tensor | int, batch: int) -> Tensor:
    """Timesteps as a ``(batch,)`` tensor: an int or a scalar tensor is broadcast.

    Raises:
        TypeError: t is not an int or a tensor of integer (or real) values.
        ValueError: t has another shape than ``(batch,)``.
    """
    if isinstance(t, int) and not isinstance(t, bool):
        t = torch.tensor(t)
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be an int or a tensor of timesteps, got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t must hold integer (or real) timesteps, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch)
    if tuple(t.shape) != (batch,):
        raise ValueError(f"t must have shape ({batch},) or be a scalar, got {tuple(t.shape)}")
    return t


class BBDM(nn.Module):
    """Binary Bernoulli diffusion model: predicts the flip map ``eps_hat`` of ``y_t``.

    A U-Net of base width C (levels for a 256x256 input: 256 (C), 128 (C), 64 (2C), 32 (2C),
    16 (4C), 8 (4C)) on ``concat(image, y_t, prior)``, conditioned on the time embedding and on
    the four segmentor features (concatenation layers at H/4, H/8, H/16; the X-Former at H/32).
    The input conv, the time MLP, every time-conditioned linear, the norms, the condition
    ResBlocks and the head stay in full precision; with ``binary=True`` every other conv and the
    X-Former's linears are binary. ``binary=False`` is the real refiner with the same module tree
    and ``state_dict`` keys (real convs/linears, TB's thresholds acting as time-dependent shifts,
    TA kept as the activation).

    Args:
        image_channels: Cimg, channels of the image.
        num_classes: K, channels of the mask (1 for a single object; K > 1 includes background).
        model_channels: C, the base width (128 in the paper).
        cond_channels: channels of the segmentor features at H/4, H/8, H/16, H/32.
        binary: binary refiner (BBDM) or its real-valued twin.
        xformer: fuse the H/32 feature with the X-Former (True) or with a concatenation layer
            like the shallower levels (the ablation without the X-Former).
        prior_flip_rates: ``1 - abar_t`` for t = 0..T-1 selects the residual output
            ``eps_hat = sigmoid(head + logit((1 - abar_t) |y_t - p|))`` around the prior-only Bayes
            denoiser (see :func:`~hidiff.models.layers.flip_probability`); None gives the paper's
            ``sigmoid(head)``. A plain tuple (configuration, not a weight): ``state_dict`` keys are
            the same in both forms.

    Shapes:
        ``forward(image, y_t, prior, t, features)``: image float ``(B, Cimg, H, W)``, y_t and prior
        float ``(B, K, H, W)``, t int64 ``(B,)`` (or a scalar, broadcast), features a sequence of 4
        float tensors ``(B, cond_channels[i], H / 2^(i+2), W / 2^(i+2))``; H and W divisible by 32.
        Returns ``eps_hat`` float ``(B, K, H, W)`` in (0, 1).

    In eval mode with autograd off the binary layers run the bit-packed XNOR-popcount kernels;
    otherwise they run the straight-through float simulation of the same arithmetic.
    """

    def __init__(
        self,
        image_channels: int,
        num_classes: int,
        model_channels: int = 128,
        cond_channels: Sequence[int] = (96, 192, 384, 768),
        binary: bool = True,
        xformer: bool = True,
        prior_flip_rates: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_channels", image_channels),
            ("num_classes", num_classes),
            ("model_channels", model_channels),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        cond_channels = tuple(cond_channels)
        if len(cond_channels) != 4 or not all(isinstance(c, int) and c > 0 for c in cond_channels):
            raise ValueError(f"cond_channels must be 4 positive ints (features at H/4..H/32), got {cond_channels!r}")
        if prior_flip_rates is not None:
            prior_flip_rates = tuple(float(r) for r in prior_flip_rates)
            if not prior_flip_rates or not all(0.0 <= r <= 1.0 for r in prior_flip_rates):
                raise ValueError(f"prior_flip_rates must be a non-empty sequence in [0, 1], got {prior_flip_rates!r}")
        self.prior_flip_rates: tuple[float, ...] | None = prior_flip_rates
        self.image_channels = image_channels
        self.num_classes = num_classes
        self.model_channels = model_channels
        self.cond_channels: tuple[int, int, int, int] = cond_channels
        self.binary = bool(binary)
        self.use_xformer = bool(xformer)
        self.in_channels = image_channels + 2 * num_classes

        c, e = model_channels, 4 * model_channels
        b = self.binary
        self.time_embed = TimeEmbedding(c)
        self.input_conv = nn.Conv2d(self.in_channels, c, 3, padding=1)
        # Encoder; the comments give the resolution of the block's output and the skip index.
        self.block1 = BinaryBlock(c, c, e, b)  # H, skip 0
        self.down1 = DownBlock(c, c, e, b)
        self.block2 = BinaryBlock(c, c, e, b)  # H/2, skip 1
        self.down2 = DownBlock(c, 2 * c, e, b)
        self.block3 = BinaryBlock(2 * c, 2 * c, e, b)
        self.concat1 = ConcatLayer(cond_channels[0], 2 * c, e, b)  # H/4, skip 2
        self.down3 = DownBlock(2 * c, 2 * c, e, b)
        self.block4 = BinaryBlock(2 * c, 2 * c, e, b)
        self.concat2 = ConcatLayer(cond_channels[1], 2 * c, e, b)  # H/8, skip 3
        self.down4 = DownBlock(2 * c, 4 * c, e, b)
        self.block5 = BinaryBlock(4 * c, 4 * c, e, b)
        self.concat3 = ConcatLayer(cond_channels[2], 4 * c, e, b)  # H/16, skip 4
        self.down5 = DownBlock(4 * c, 4 * c, e, b)
        # Bottleneck at H/32.
        self.mid1 = BinaryBlock(4 * c, 4 * c, e, b)
        self.fuse = (
            XFormer(cond_channels[3], 4 * c, e, binary=b) if xformer else ConcatLayer(cond_channels[3], 4 * c, e, b)
        )
        self.mid2 = BinaryBlock(4 * c, 4 * c, e, b)
        # Decoder: UpBlock, then a block on concat(h, skip).
        self.up1 = UpBlock(4 * c, 4 * c, e, b)
        self.merge1 = BinaryBlock(8 * c, 4 * c, e, b)  # H/16
        self.up2 = UpBlock(4 * c, 2 * c, e, b)
        self.merge2 = BinaryBlock(4 * c, 2 * c, e, b)  # H/8
        self.up3 = UpBlock(2 * c, 2 * c, e, b)
        self.merge3 = BinaryBlock(4 * c, 2 * c, e, b)  # H/4
        self.up4 = UpBlock(2 * c, c, e, b)
        self.merge4 = BinaryBlock(2 * c, c, e, b)  # H/2
        self.up5 = UpBlock(c, c, e, b)
        self.merge5 = BinaryBlock(2 * c, c, e, b)  # H
        self.head = Head(c, num_classes)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (plain Python values): ``BBDM(**config)`` builds the same architecture."""
        return {
            "image_channels": self.image_channels,
            "num_classes": self.num_classes,
            "model_channels": self.model_channels,
            "cond_channels": list(self.cond_channels),
            "binary": self.binary,
            "xformer": self.use_xformer,
            "prior_flip_rates": None if self.prior_flip_rates is None else list(self.prior_flip_rates),
        }

    def extra_repr(self) -> str:
        return (
            f"image_channels={self.image_channels}, num_classes={self.num_classes}, "
            f"model_channels={self.model_channels}, cond_channels={self.cond_channels}, binary={self.binary}, "
            f"xformer={self.use_xformer}, residual={self.prior_flip_rates is not None}"
        )

    def flip_scale(self, t: Tensor) -> Tensor | None:
        """float32 ``(B,)`` ``1 - abar_t`` of the residual form for timesteps ``t`` ``(B,)`` (None: paper form)."""
        return flip_scale(self.prior_flip_rates, t)

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameter counts: ``total``, ``binary_conv`` and ``binary_linear`` (weights of the binary
        layers; 0 for the real refiner) and ``real`` (everything else, kept in full precision)."""
        total = sum(p.numel() for p in self.parameters())
        conv = sum(m.weight.numel() for m in self.modules() if isinstance(m, BinaryConv2d))
        linear = sum(m.weight.numel() for m in self.modules() if isinstance(m, BinaryLinear))
        return {"total": total, "binary_conv": conv, "binary_linear": linear, "real": total - conv - linear}

    def forward(self, image: Tensor, y_t: Tensor, prior: Tensor, t: Tensor, features: Sequence[Tensor]) -> Tensor:
        check_image_and_features(image, features, self.image_channels, self.cond_channels)
        batch, _, height, width = image.shape
        for name, value in (("y_t", y_t), ("prior", prior)):
            check_state(name, value, (batch, self.num_classes, height, width))
        t = check_timesteps(t, batch)
        emb = self.time_embed(t)
        conditions = dict(zip(CONDITIONED, features, strict=True))
        h = self.input_conv(torch.cat([image, y_t, prior], dim=1))
        skips = []
        for block, concat, down in ENCODER:
            h = getattr(self, block)(h, emb)
            if concat is not None:
                h = getattr(self, concat)(h, conditions[concat], emb)
            skips.append(h)
            h = getattr(self, down)(h, emb)
        mid1, fuse, mid2 = (getattr(self, name) for name in BOTTLENECK)
        h = mid2(fuse(mid1(h, emb), conditions[BOTTLENECK[1]], emb), emb)
        for up, merge in DECODER:
            h = getattr(self, merge)(torch.cat([getattr(self, up)(h, emb), skips.pop()], dim=1), emb)
        return flip_probability(self.head(h), y_t, prior, self.flip_scale(t))
