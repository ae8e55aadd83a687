"""Discriminative segmentors that produce HiDiff's prior and its four-level feature pyramid, and their registry.

Contract: ``forward(x) -> (logits (B, K, H, W), [features at H/4, H/8, H/16, H/32])`` with the
attributes ``feature_channels``, ``num_classes`` and ``in_channels``.

:func:`build_segmentor` is the one way to build a segmentor by name (training configurations, the
model factory, ``hidiff flops``): ``"unet"`` (:class:`UNet`), ``"merit"`` (:class:`MeritSegmentor`,
the paper's segmentor) and ``"timm:<backbone>"`` (:class:`TimmSegmentor`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .baselines import MERIT

logger = logging.getLogger(__name__)

#: Strides of the feature levels handed to the refiner.
FEATURE_STRIDES = (4, 8, 16, 32)


def prior_from_logits(logits: Tensor) -> Tensor:
    """The prior ``p`` from segmentor logits: sigmoid for K = 1, softmax over channels for K > 1.

    Args:
        logits: float ``(B, K, H, W)``.

    Returns:
        float ``(B, K, H, W)`` in (0, 1) (up to floating-point saturation).
    """
    if not isinstance(logits, Tensor) or logits.dim() < 2:
        raise ValueError(f"logits must be a (B, K, ...) tensor, got {getattr(logits, 'shape', type(logits))}")
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def _check_image(x: Tensor, in_channels: int, divisor: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != in_channels:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, {in_channels}, H, W) tensor, got {shape}")
    if x.shape[2] % divisor or x.shape[3] % divisor:
        raise ValueError(f"x height and width must be divisible by {divisor}, got {x.shape[2]}x{x.shape[3]}")


class ConvBNReLU(nn.Sequential):
    """conv3x3 (no bias) -> BatchNorm -> ReLU: ``(B, in, H, W) -> (B, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvBNReLU`: ``(B, in, H, W) -> (B, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


class UNet(nn.Module):
    """A light U-Net with six encoder levels (H, H/2, ..., H/32), so features exist at H/4..H/32.

    Level widths ``base * (1, 2, 4, 8, 8, 8)``; each level is two conv3x3-BN-ReLU (after a 2x2 max
    pool below the first); the decoder upsamples bilinearly, concatenates the skip and applies
    two conv3x3-BN-ReLU; a 1x1 conv gives the logits.

    Args:
        in_channels: image channels.
        num_classes: K, logit channels.
        base_channels: width of the first level.

    Shapes:
        ``forward(x)``: float ``(B, in_channels, H, W)``, H and W divisible by 32 ->
        ``(logits (B, K, H, W), [f (B, feature_channels[i], H / 2^(i+2), W / 2^(i+2)) for i in 0..3])``.
    """

    WIDTH_MULTIPLIERS = (1, 2, 4, 8, 8, 8)

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_channels: int = 32) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("base_channels", base_channels),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        widths = [base_channels * m for m in self.WIDTH_MULTIPLIERS]
        self.feature_channels: tuple[int, int, int, int] = tuple(widths[2:])
        self.encoder = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoder.append(DoubleConv(previous, width))
            previous = width
        self.decoder = nn.ModuleList()
        for skip in reversed(widths[:-1]):
            self.decoder.append(DoubleConv(previous + skip, skip))
            previous = skip
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        _check_image(x, self.in_channels, 32)
        skips = []
        h = x
        for level, block in enumerate(self.encoder):
            h = block(h if level == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        features = skips[2:]
        skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return self.classifier(h), features


def _import_timm():
    try:
        return importlib.import_module("timm")
    except ImportError as error:
        raise ImportError(
            "timm segmentors need the optional `timm` package (and a torchvision build matching your torch): "
            "pip install .[timm] in the project folder (or: pip install timm)"
        ) from error


def _load_local_checkpoint(module: nn.Module, path: str | Path) -> None:
    """Loads a LOCAL backbone checkpoint (never downloads); tolerates a classifier head in the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_path does not exist or is not a file: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"pretrained_path {path} does not hold a state dict (got {type(state).__name__})")
    own = module.state_dict()
    matched = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not matched:
        raise ValueError(f"pretrained_path {path}: no tensor matches the backbone's parameters (by name and shape)")
    module.load_state_dict(matched, strict=False)
    logger.info(
        "loaded %d/%d backbone tensors from %s (%d checkpoint tensors unused)",
        len(matched),
        len(own),
        path,
        len(state) - len(matched),
    )


class TimmSegmentor(nn.Module):
    """A timm backbone (``features_only``) with a light FPN decoder.

    The backbone levels at strides 4, 8, 16 and 32 are the features handed to the refiner. The
    decoder projects each with a 1x1 conv to ``decoder_channels``, merges top-down (upsample +
    add), smooths each level with conv3x3-BN-ReLU, sums the levels at H/4, and predicts the logits
    with a 1x1 conv upsampled bilinearly to the input size. timm is imported only here; weights
    are never downloaded: ``pretrained_path`` is an optional local checkpoint.

    Args:
        backbone: timm model name (e.g. ``"resnet34"``, ``"pvt_v2_b2"``).
        in_channels: image channels (passed to timm as ``in_chans``).
        num_classes: K, logit channels.
        pretrained_path: local checkpoint of the backbone, loaded with ``torch.load(weights_only=True)``.
        decoder_channels: width of the FPN decoder.
        out_indices: timm feature indices (default: timm's); the levels whose reductions are 4, 8,
            16 and 32 are picked from them through ``feature_info``.
        **timm_kwargs: passed to ``timm.create_model``.

    Shapes:
        ``forward(x)``: float ``(B, in_channels, H, W)``, H and W divisible by 32 ->
        ``(logits (B, K, H, W), [4 features at H/4, H/8, H/16, H/32])``.
    """

    def __init__(
        self,
        backbone: str,
        in_channels: int,
        num_classes: int,
        pretrained_path: str | Path | None = None,
        decoder_channels: int = 128,
        out_indices: Sequence[int] | None = None,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, str) or not backbone:
            raise ValueError(f"backbone must be a timm model name, got {backbone!r}")
        if timm_kwargs.pop("pretrained", False):
            raise ValueError("TimmSegmentor never downloads weights: pass a local checkpoint as pretrained_path")
        timm = _import_timm()
        self.in_channels = in_channels
        self.num_classes = num_classes
        kwargs = {"features_only": True, "pretrained": False, "in_chans": in_channels, **timm_kwargs}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        self.backbone = timm.create_model(backbone, **kwargs)
        reductions = list(self.backbone.feature_info.reduction())
        channels = list(self.backbone.feature_info.channels())
        missing = [s for s in FEATURE_STRIDES if s not in reductions]
        if missing:
            raise ValueError(
                f"backbone {backbone!r} gives feature reductions {reductions}; strides {missing} are missing "
                "(choose out_indices that include the levels at strides 4, 8, 16 and 32)"
            )
        # Positions, among the backbone's outputs, of the levels at strides 4, 8, 16, 32 (a CNN's
        # stride-2 stem output is computed anyway, so selecting here costs nothing).
        self._levels = tuple(reductions.index(s) for s in FEATURE_STRIDES)
        self.feature_channels: tuple[int, int, int, int] = tuple(channels[i] for i in self._levels)
        if pretrained_path is not None:
            _load_local_checkpoint(self.backbone, pretrained_path)
        self.lateral = nn.ModuleList(nn.Conv2d(c, decoder_channels, 1) for c in self.feature_channels)
        self.smooth = nn.ModuleList(ConvBNReLU(decoder_channels, decoder_channels) for _ in self.feature_channels)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def _channels_first(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Some timm backbones (e.g. Swin) return NHWC maps: move channels to dim 1."""
        out = []
        for feature, channels in zip(features, self.feature_channels, strict=True):
            if feature.shape[1] != channels and feature.shape[-1] == channels:
                feature = feature.permute(0, 3, 1, 2)
            out.append(feature.contiguous())
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        _check_image(x, self.in_channels, 32)
        outputs = self.backbone(x)
        features = self._channels_first([outputs[i] for i in self._levels])
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[2:], mode="nearest")
        size = laterals[0].shape[2:]
        fused = sum(
            F.interpolate(smooth(lat), size=size, mode="bilinear", align_corners=False) if i else smooth(lat)
            for i, (smooth, lat) in enumerate(zip(self.smooth, laterals, strict=True))
        )
        logits = F.interpolate(self.classifier(fused), size=x.shape[2:], mode="bilinear", align_corners=False)
        return logits, features


class MeritSegmentor(nn.Module):
    """MERIT (:class:`~hidiff.models.baselines.MERIT`, the paper's segmentor) with the segmentor contract.

    The features are the first MaxViT backbone's stage outputs (96, 192, 384, 768 channels at
    H/4..H/32), the widths :class:`~hidiff.models.BBDM`'s default ``cond_channels`` expect. The wrapper
    adds no computation: it costs exactly one MERIT forward, and gradients reach both backbones.

    Args:
        in_channels: image channels.
        num_classes: K, logit channels.
        image_size: S, the one input size MERIT is built for (a multiple of 32, at least 64).

    Shapes:
        ``forward(x)``: float ``(B, in_channels, S, S)`` -> ``(logits (B, K, S, S),
        [f (B, feature_channels[i], S / 2^(i+2), S / 2^(i+2)) for i in 0..3])``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 256) -> None:
        super().__init__()
        self.merit = MERIT(in_channels, num_classes, image_size)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_channels: tuple[int, int, int, int] = self.merit.backbone1.widths

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        captured: list[list[Tensor]] = []
        # MERIT returns only its logits; a hook picks up the backbone's features on the way.
        handle = self.merit.backbone1.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            logits = self.merit(x)
        finally:
            handle.remove()
        return logits, list(captured[0])


@dataclass(frozen=True)
class SegmentorSpec:
    """A registered segmentor.

    Attributes:
        build: ``build(in_channels=..., num_classes=..., **kwargs) -> nn.Module`` with the segmentor contract.
        fixed_size: the network is built for one input size, given as its ``image_size`` argument.
    """

    build: Callable[..., nn.Module]
    fixed_size: bool = False


#: The registered segmentors by name; ``"timm:<backbone>"`` names (:data:`TIMM_PREFIX`) are resolved apart.
SEGMENTORS: dict[str, SegmentorSpec] = {
    "unet": SegmentorSpec(UNet),
    "merit": SegmentorSpec(MeritSegmentor, fixed_size=True),
}
#: Prefix of the segmentors on a timm backbone: ``"timm:resnet34"``.
TIMM_PREFIX = "timm:"


def segmentor_spec(name: str) -> SegmentorSpec:
    """The :class:`SegmentorSpec` of ``name`` (see :func:`build_segmentor`).

    Raises:
        ValueError: when ``name`` is not a registered name nor ``"timm:<backbone>"`` (the message lists the known
            names).
    """
    key = name.strip().lower() if isinstance(name, str) else ""
    if key in SEGMENTORS:
        return SEGMENTORS[key]
    if key.startswith(TIMM_PREFIX) and len(key) > len(TIMM_PREFIX):
        backbone = name.strip()[len(TIMM_PREFIX) :]
        return SegmentorSpec(lambda **kwargs: TimmSegmentor(backbone, **kwargs))
    known = ", ".join([*map(repr, SEGMENTORS), f"'{TIMM_PREFIX}<backbone>'"])
    raise ValueError(f"unknown segmentor {name!r}; known segmentors: {known}")


def build_segmentor(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """Builds a segmentor by name.

    Args:
        name: ``"unet"`` (:class:`UNet`), ``"merit"`` (:class:`MeritSegmentor`) or ``"timm:<backbone>"``
            (:class:`TimmSegmentor`, needs the optional timm package); case-insensitive.
        in_channels: image channels.
        num_classes: K, logit channels.
        **kwargs: further constructor arguments (e.g. ``base_channels`` of the U-Net, ``image_size`` of MERIT,
            ``pretrained_path`` of a timm backbone).

    Returns:
        The segmentor, ``forward(x (B, in_channels, H, W)) -> (logits (B, K, H, W), 4 features at H/4..H/32)``.

    Raises:
        ValueError: on an unknown ``name`` (the message lists the known ones) or bad constructor arguments.
        ImportError: for a timm segmentor when timm is not installed.
    """
    return segmentor_spec(name).build(in_channels=in_channels, num_classes=num_classes, **kwargs)
