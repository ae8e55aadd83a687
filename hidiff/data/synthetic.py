"""SyntheticShapes: a procedurally generated segmentation task needing no files (the demo's default data).

Each image is a textured, unevenly lit background with a few star-convex blobs. Target blobs (classes 1..K-1, or the
single foreground class for K = 1) and distractor blobs differ only in colour direction, not in brightness alone, so a
segmentor must use colour; all blobs have blurred, low-contrast edges under pixel noise, so the exact boundary is
ambiguous. The mask is the sharp shape before blurring. A small segmentor learns it quickly (Dice around 0.85 after
a few hundred small steps) but not perfectly: the blurred boundaries and thin protrusions leave room for refinement.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .base import SegmentationDataset, check_split
from .transforms import PairedAugment, Size, as_size, to_image_tensor

# Colour directions (RGB offsets, before the per-object contrast) of the target classes and of distractors.
# Every direction has a positive red component so targets cannot be told from distractors by brightness alone.
_CLASS_COLOURS = np.array(
    [
        [1.0, -0.35, -0.25],
        [0.15, 0.85, -0.45],
        [0.45, -0.2, 0.95],
        [-0.7, 0.5, 0.6],
        [0.8, 0.8, -0.6],
        [-0.4, -0.6, 0.9],
        [0.9, -0.8, 0.7],
    ],
    dtype=np.float32,
)
_DISTRACTOR_COLOURS = np.array([[0.6, 0.55, 0.5], [0.55, 0.25, 0.7]], dtype=np.float32)
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float, channels: int = 1) -> np.ndarray:
    """Gaussian-filtered white noise (channels, H, W) float32 rescaled to unit standard deviation, channels
    independent."""
    white = rng.standard_normal((channels, *shape)).astype(np.float32)
    noise = ndimage.gaussian_filter(white, sigma=(0.0, sigma, sigma), mode="wrap")
    return noise / max(float(noise.std()), 1e-6)


def _blob(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random star-convex blob (bool (H, W)): an ellipse whose radius is perturbed by low angular harmonics."""
    size = min(height, width)
    radius = rng.uniform(0.07, 0.2) * size
    cy = rng.uniform(0.15, 0.85) * height
    cx = rng.uniform(0.15, 0.85) * width
    aspect = rng.uniform(0.55, 1.0)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / aspect
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    boundary = np.ones_like(theta)
    for k in (2, 3, 5):
        boundary += rng.uniform(-0.15, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return rho < radius * boundary


def render_shapes(rng: np.random.Generator, height: int, width: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Renders one synthetic sample.

    Args:
        rng: the sample's random generator.
        height, width: image size.
        num_classes: K (1: one foreground class; K > 1: classes 1..K-1 plus background).

    Returns:
        (image float32 (H, W, 3) in [0, 1], label int64 (H, W) in 0..max(1, K-1)).
    """
    scale = min(height, width) / 128.0
    base = rng.uniform(0.3, 0.55, size=3).astype(np.float32)
    image = np.broadcast_to(base, (height, width, 3)).copy()
    image += 0.06 * np.moveaxis(_smooth_noise(rng, (height, width), 10 * scale, channels=3), 0, 2)
    # Uneven illumination: a random linear ramp and a vignette, as in endoscopy frames.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / max(height - 1, 1) - 0.5, xx / max(width - 1, 1) - 0.5
    ramp = rng.uniform(-0.15, 0.15) * yy + rng.uniform(-0.15, 0.15) * xx - rng.uniform(0.0, 0.4) * (yy**2 + xx**2)
    image += ramp[:, :, None]

    # Object texture (one field shared by all objects of the image).
    texture = 1.0 + 0.35 * _smooth_noise(rng, (height, width), 1.5 * scale)[0]
    label = np.zeros((height, width), dtype=np.int64)
    foreground = max(1, num_classes - 1)
    objects = [int(c) for c in rng.integers(1, foreground + 1, size=rng.integers(1, 4))]
    objects += [0] * int(rng.integers(0, 3))
    rng.shuffle(objects)
    for cls in objects:
        shape = _blob(rng, height, width)
        if cls:
            colour = _CLASS_COLOURS[(cls - 1) % len(_CLASS_COLOURS)]
        else:
            colour = _DISTRACTOR_COLOURS[int(rng.integers(0, len(_DISTRACTOR_COLOURS)))]
        contrast = rng.uniform(0.1, 0.2)
        # Blurred edges: the mask is the sharp shape, the image shows it through a Gaussian of 1-2.5 pixels.
        alpha = ndimage.gaussian_filter(shape.astype(np.float32), sigma=rng.uniform(1.0, 2.5) * scale)
        image += (alpha * texture)[:, :, None] * (contrast * colour)
        label[shape] = cls
    image += rng.uniform(0.03, 0.07) * rng.standard_normal(image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32), label


class SyntheticShapes(SegmentationDataset):
    """Procedurally generated blobs on textured backgrounds (see the module docstring); no files needed.

    Sample `index` of split `split` is rendered from `np.random.SeedSequence([seed, split code, index])`, so samples are
    reproducible, independent of access order, and the splits are disjoint (different seeds).

    Each item: image float32 (3, S, S) in [0, 1], mask float32 (K, S, S), id = "<split>_NNNNN".

    Args:
        root: ignored (present for the common reader signature).
        split: "train", "val" or "test".
        image_size: output size S (int or (H, W)).
        augment: PairedAugment, True for the default one, None for "on for train only".
        seed: dataset seed (samples and augmentations).
        num_classes: K; 1 for a single foreground class, K > 1 for K - 1 target classes plus background (at most 8).
        length: number of samples (default 512 for train, 64 otherwise).
    """

    SPLITS = tuple(_SPLIT_CODES)
    in_channels = 3

    def __init__(
        self,
        root: object = None,
        split: str = "train",
        image_size: Size = 128,
        augment: bool | PairedAugment | None = None,
        seed: int = 0,
        num_classes: int = 1,
        length: int | None = None,
    ) -> None:
        check_split(split, self.SPLITS, "SyntheticShapes")
        if not 1 <= num_classes <= len(_CLASS_COLOURS) + 1:
            raise ValueError(f"num_classes must lie in 1..{len(_CLASS_COLOURS) + 1}, got {num_classes}")
        super().__init__(split, augment, seed)
        self.image_size = as_size(image_size, "image_size")
        self.num_classes = num_classes
        self.class_names = (
            ("shape",) if num_classes == 1 else ("background", *(f"shape{c}" for c in range(1, num_classes)))
        )
        length = (512 if split == "train" else 64) if length is None else length
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.ids = [f"{split}_{i:05d}" for i in range(length)]

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SPLIT_CODES[self.split], index]))
        image, label = render_shapes(rng, *self.image_size, self.num_classes)
        return to_image_tensor(image), torch.from_numpy(label), {}
