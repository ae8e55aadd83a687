"""Spatial and photometric transforms shared by the dataset readers.

Conventions:

- Images are float32 tensors (C, H, W). Readers of natural-image formats (JPEG, TIFF, PNG) scale 8-bit values to
  [0, 1] per channel with no further normalisation (no ImageNet mean/std is baked in: a model that wants it normalises
  itself). Readers of medical volumes keep their own intensity convention (Synapse: TransUNet's [0, 1] windowing,
  BraTS: per-volume z-score), documented on each reader.
- Labels are integer maps (H, W) (int64) holding class indices: {0, 1} for single-object tasks, 0..K-1 for K > 1.
  Every spatial transform works on label maps, not on one-hot masks, so padding with 0 always means "background"
  (a zero-padded one-hot mask would have no class at all) and nearest resampling cannot mix classes. `one_hot` turns a
  label map into the (K, H, W) mask of the dataset contract at the very end.
- Randomness comes from an explicit `torch.Generator`; `sample_generator(seed, epoch, index)` derives one per sample, so
  augmentations depend on (seed, epoch, index) only and not on DataLoader worker count or iteration order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Size = int | tuple[int, int]


def as_size(size: Size, name: str = "size") -> tuple[int, int]:
    """Normalises an int or (H, W) pair into a (H, W) tuple of positive ints.

    Raises:
        ValueError: when `size` is not a positive int or a pair of positive ints.
    """
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        pair = (int(size), int(size))
    elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int | np.integer) for s in size):
        pair = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints (H, W), got {size!r}")
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return pair


def to_image_tensor(array: np.ndarray) -> torch.Tensor:
    """Converts an image array to float32 (C, H, W).

    Args:
        array: (H, W) or (H, W, C) array. uint8 is scaled to [0, 1] (divided by 255), uint16 divided by 65535; floating
            point arrays are kept as they are (cast to float32).

    Returns:
        float32 tensor (C, H, W), C = 1 for a 2-D input.
    """
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"image array must be (H, W) or (H, W, C), got shape {array.shape}")
    if array.dtype == np.uint8:
        out = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        out = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
    else:
        raise ValueError(f"image array dtype must be uint8, uint16 or floating point, got {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def resize_image(image: torch.Tensor, size: Size) -> torch.Tensor:
    """Bilinear resize of a float image (C, H, W) to `size`.

    Anti-aliased when shrinking (Kvasir-SEG frames are up to 1920x1072 and go down to 256: without anti-aliasing the
    result would alias the JPEG's fine texture). A no-op when the size already matches.
    """
    height, width = as_size(size)
    if tuple(image.shape[-2:]) == (height, width):
        return image
    out = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
    # The filter weights are non-negative and sum to 1, so the exact result stays within the input's range; clamping
    # removes float rounding past it (a [0, 1] image must not come back with 1.0000001).
    return out.clamp(float(image.min()), float(image.max())) if image.numel() else out


def resize_label(label: torch.Tensor, size: Size) -> torch.Tensor:
    """Nearest-neighbour resize of an integer label map (H, W) to `size` (no class mixing).

    Uses "nearest-exact" (pixel-centre sampling, as PIL and scikit-image do) rather than torch's legacy "nearest",
    which is shifted by half a pixel.
    """
    height, width = as_size(size)
    if tuple(label.shape[-2:]) == (height, width):
        return label
    out = F.interpolate(label[None, None].float(), size=(height, width), mode="nearest-exact")[0, 0]
    return out.to(label.dtype)


def _pad_to(image: torch.Tensor, labels: Sequence[torch.Tensor], height: int, width: int):
    """Zero-pads image and label maps at the bottom/right up to at least (height, width)."""
    pad_h = max(0, height - image.shape[-2])
    pad_w = max(0, width - image.shape[-1])
    if pad_h == 0 and pad_w == 0:
        return image, list(labels)
    image = F.pad(image, (0, pad_w, 0, pad_h))
    labels = [F.pad(lab, (0, pad_w, 0, pad_h)) for lab in labels]
    return image, labels


def random_crop(
    image: torch.Tensor, labels: Sequence[torch.Tensor], size: Size, generator: torch.Generator
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Crops the same random window of `size` from an image (C, H, W) and its label maps (H, W).

    Inputs smaller than the window are first zero-padded at the bottom/right (label 0 = background).
    """
    height, width = as_size(size)
    image, labels = _pad_to(image, labels, height, width)
    top = int(torch.randint(0, image.shape[-2] - height + 1, (1,), generator=generator))
    left = int(torch.randint(0, image.shape[-1] - width + 1, (1,), generator=generator))
    window = (slice(top, top + height), slice(left, left + width))
    return image[(slice(None), *window)], [lab[window] for lab in labels]


def center_crop(
    image: torch.Tensor, labels: Sequence[torch.Tensor], size: Size
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Crops the central window of `size` (zero-padding first when the input is smaller)."""
    height, width = as_size(size)
    image, labels = _pad_to(image, labels, height, width)
    top = (image.shape[-2] - height) // 2
    left = (image.shape[-1] - width) // 2
    window = (slice(top, top + height), slice(left, left + width))
    return image[(slice(None), *window)], [lab[window] for lab in labels]


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Turns an integer label map (H, W) into the float32 mask (K, H, W) of the dataset contract.

    K = 1: the single foreground channel (label > 0). K > 1: one channel per class including background (channel 0).

    Raises:
        ValueError: when a label is outside 0..K-1 (for K > 1).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_classes == 1:
        return (label > 0).to(torch.float32)[None]
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        raise ValueError(
            f"label values must lie in 0..{num_classes - 1}, got min {int(label.min())} max {int(label.max())}"
        )
    return F.one_hot(label.long(), num_classes).permute(2, 0, 1).to(torch.float32).contiguous()


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A torch.Generator seeded from (seed, epoch, index) through numpy's SeedSequence hashing.

    Hashing (rather than e.g. seed + index) keeps nearby triples statistically independent.
    """
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


@dataclass
class PairedAugment:
    """Random training augmentations applied identically to an image and its label maps.

    Order: scale jitter, horizontal flip, vertical flip, rotation by a multiple of 90 degrees, brightness jitter
    (image only). The output has the input's size.

    Attributes:
        hflip: flip left-right with probability 0.5.
        vflip: flip up-down with probability 0.5.
        rot90: rotate by k * 90 degrees, k uniform in 0..3 for square inputs; k in {0, 2} for non-square inputs, so
            that every sample of a batch keeps the same shape.
        scale: zoom factor drawn uniformly from [1 - scale, 1 + scale]; the zoomed image is centre-cropped or
            zero-padded back to the input size (bilinear for the image, nearest for the labels). 0 disables it.
        brightness: multiplicative intensity factor drawn uniformly from [1 - brightness, 1 + brightness]. 0 disables.
        clip: (low, high) range the image is clipped to after the brightness change, or None (z-scored inputs).
    """

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    scale: float = 0.1
    brightness: float = 0.1
    clip: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"scale must lie in [0, 1), got {self.scale}")
        if not 0.0 <= self.brightness < 1.0:
            raise ValueError(f"brightness must lie in [0, 1), got {self.brightness}")

    def __call__(
        self, image: torch.Tensor, labels: Sequence[torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Applies the augmentations.

        Args:
            image: float32 (C, H, W).
            labels: integer label maps (H, W) (the mask, and e.g. a field-of-view mask).
            generator: source of randomness.

        Returns:
            (image (C, H, W), list of label maps (H, W)), same sizes as the inputs.
        """
        labels = list(labels)

        def uniform() -> float:
            return float(torch.rand((), generator=generator))

        # Every random number is drawn whether or not its transform is enabled, so switching one transform off does
        # not change the draws of the others.
        zoom = 1.0 + self.scale * (2.0 * uniform() - 1.0)
        flip_h, flip_v = uniform() < 0.5, uniform() < 0.5
        k = int(torch.randint(0, 4, (), generator=generator))
        factor = 1.0 + self.brightness * (2.0 * uniform() - 1.0)

        height, width = image.shape[-2:]
        if self.scale > 0 and abs(zoom - 1.0) > 1e-6:
            new_size = (max(1, round(height * zoom)), max(1, round(width * zoom)))
            image = resize_image(image, new_size)
            labels = [resize_label(lab, new_size) for lab in labels]
            image, labels = center_crop(image, labels, (height, width))
        if self.hflip and flip_h:
            image, labels = image.flip(-1), [lab.flip(-1) for lab in labels]
        if self.vflip and flip_v:
            image, labels = image.flip(-2), [lab.flip(-2) for lab in labels]
        if self.rot90:
            if height != width:
                k = 2 * (k % 2)
            if k:
                image, labels = image.rot90(k, (-2, -1)), [lab.rot90(k, (-2, -1)) for lab in labels]
        if self.brightness > 0:
            image = image * factor
            if self.clip is not None:
                image = image.clamp(*self.clip)
        return image.contiguous(), [lab.contiguous() for lab in labels]
