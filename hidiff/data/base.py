"""Common machinery of the dataset readers: file reading with clear errors, seeded splits, the base class."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import PairedAugment, one_hot, sample_generator

logger = logging.getLogger(__name__)


class DataFileError(OSError):
    """A dataset file exists but cannot be decoded (truncated, corrupt, or not in the expected format)."""


def require_path(path: Path, layout: str, kind: str = "file") -> Path:
    """Returns `path` if it exists, else raises FileNotFoundError naming it and the expected layout.

    A file is also found when its name differs from `path`'s only in letter case (``X.JPG`` for ``X.jpg``): archives
    re-packed on other systems change the case of extensions, and a reader that skipped those files would silently
    change its seeded splits. The file's actual path is returned.

    Args:
        path: the file or folder that must exist.
        layout: a description of the dataset's expected on-disk layout, quoted in the error.
        kind: "file" or "folder", for the message.
    """
    if (kind == "folder" and path.is_dir()) or (kind == "file" and path.is_file()):
        return path
    if kind == "file" and path.parent.is_dir():
        matches = [p for p in path.parent.iterdir() if p.name.lower() == path.name.lower() and p.is_file()]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(f"ambiguous file {path}: {sorted(p.name for p in matches)} differ only in letter case")
    raise FileNotFoundError(f"missing {kind} {path}; expected layout:\n{layout}")


def glob_files(directory: Path, pattern: str) -> list[Path]:
    """The files of `directory` whose names match the glob `pattern` in any letter case, sorted by name.

    ``glob_files(d, "*.jpg")`` also lists ``X.JPG`` and ``y.Jpg`` (``Path.glob`` is case-sensitive on Linux).
    """
    pattern = pattern.lower()
    return sorted(p for p in directory.iterdir() if fnmatch.fnmatchcase(p.name.lower(), pattern) and p.is_file())


def read_with(path: Path, what: str, reader: Callable[[Path], Any]) -> Any:
    """Runs `reader(path)`, turning any decoding failure into a DataFileError naming the file."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, expected {what} file")
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        return reader(path)
    except Exception as error:  # every decoder (Pillow, tifffile, h5py, nibabel, numpy) has its own exception types
        raise DataFileError(f"cannot read {path} as {what}: {type(error).__name__}: {error}") from error


def image_array(image: Any, mode: str = "RGB") -> np.ndarray:
    """A decoded Pillow image as an array in `mode`, keeping 16-bit pixels at 16 bits.

    Pillow's ``convert("RGB"/"L")`` clips 16-bit greyscale pixels (modes "I;16*" and "I") at 255 instead of scaling
    them, so such images are returned as uint16 (replicated to 3 channels for "RGB"); callers scale by the dtype's
    range (:func:`~hidiff.data.transforms.to_image_tensor` divides uint16 by 65535).

    Args:
        image: an open ``PIL.Image.Image``.
        mode: "RGB" -> (H, W, 3) or "L" -> (H, W); uint8, uint16 for 16-bit greyscale images, float32 for float
            images (mode "F", values in [0, 1]; other ranges raise ValueError).
    """
    if image.mode == "F":
        # 32-bit float pixels: Pillow's convert() would clip them to 0 or 1 in 8 bits (nearly all black).
        array = np.asarray(image, dtype=np.float32)
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not np.isfinite(array).all() or low < 0.0 or high > 1.0:
            raise ValueError(
                f"float image with values in [{low:g}, {high:g}]: expected finite values in [0, 1] (scale it, or save "
                "it as an 8- or 16-bit image)"
            )
        return np.repeat(array[:, :, None], 3, axis=2) if mode == "RGB" else array
    if image.mode.startswith("I;16") or image.mode == "I":
        # Mode "I" holds 32-bit ints; Pillow uses it for 16-bit PNGs in some versions.
        array = np.clip(np.asarray(image), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        return np.repeat(array[:, :, None], 3, axis=2) if mode == "RGB" else array
    return np.asarray(image.convert(mode))


def read_image(path: Path, mode: str = "RGB") -> np.ndarray:
    """Reads a JPEG/PNG/GIF/BMP file with Pillow.

    Args:
        path: the image file.
        mode: Pillow mode to convert to ("RGB" -> (H, W, 3); "L" -> (H, W)); uint8, or uint16 for 16-bit images
            (see :func:`image_array`).

    Raises:
        DataFileError: when the file cannot be decoded.
    """
    from PIL import Image

    def decode(p: Path) -> np.ndarray:
        with Image.open(p) as img:
            return image_array(img, mode)

    return read_with(path, "an image", decode)


def read_tiff(path: Path) -> np.ndarray:
    """Reads a TIFF file with tifffile (CVC-ClinicDB's TIFF headers are rejected by some other readers).

    Returns:
        the first page's array ((H, W) or (H, W, C)).
    """
    import tifffile

    return read_with(path, "a TIFF image", lambda p: np.asarray(tifffile.imread(p)))


def to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """Brings a decoded image to (H, W, 3): greyscale is replicated, an alpha channel dropped."""
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return array[:, :, :3]
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        # Planar (C, H, W) TIFF.
        return np.moveaxis(array[:3], 0, 2)
    raise DataFileError(f"cannot read {path} as an RGB image: unexpected array shape {array.shape}")


def to_binary(array: np.ndarray, path: Path, threshold: int = 127) -> np.ndarray:
    """Thresholds a mask image (greyscale, or RGB reduced by its max over channels) to int64 {0, 1} (> threshold).

    8-bit masks stored as JPEG carry compression noise around 0 and 255, hence the threshold rather than != 0.
    Masks stored as {0, 1} (some PNG/GIF exports) are recognised and kept as they are. The threshold is given on the
    8-bit scale and scaled to the range of 16-bit masks.
    """
    if array.ndim == 3:
        array = array.max(axis=2)
    if array.ndim != 2:
        raise DataFileError(f"cannot read {path} as a mask: unexpected array shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.int64)
    if array.size and array.max() <= 1:
        return (array > 0).astype(np.int64)
    if array.dtype == np.uint16:
        threshold = threshold * 257  # 255 * 257 = 65535
    return (array > threshold).astype(np.int64)


def check_same_size(image: np.ndarray, image_path: Path, other: np.ndarray, other_path: Path) -> None:
    """Raises ValueError naming both files when their spatial sizes (H, W) differ."""
    if image.shape[:2] != other.shape[:2]:
        raise ValueError(
            f"size mismatch: {image_path} is {image.shape[0]}x{image.shape[1]} (HxW) but {other_path} is "
            f"{other.shape[0]}x{other.shape[1]}"
        )


def seeded_split(
    ids: Sequence[str], fractions: Sequence[float], seed: int, names: Sequence[str] = ("train", "val", "test")
) -> dict[str, list[str]]:
    """Splits ids into disjoint parts by a seeded permutation.

    The ids are sorted first (so the result does not depend on directory listing order), permuted with
    `np.random.default_rng(seed).permutation`, and cut into consecutive parts of sizes round(fraction * n) for every
    part but the last, which takes the rest (1000 ids at 0.8/0.1/0.1 -> 800/100/100; 612 -> 490/61/61). Each part is
    returned sorted.

    Raises:
        ValueError: when the fractions are not positive or do not sum to 1.
    """
    if len(fractions) != len(names) or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be {len(names)} positive numbers summing to 1, got {tuple(fractions)}")
    ordered = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ordered))
    parts: dict[str, list[str]] = {}
    start = 0
    for i, (name, fraction) in enumerate(zip(names, fractions, strict=True)):
        stop = len(ordered) if i == len(names) - 1 else min(len(ordered), start + round(fraction * len(ordered)))
        parts[name] = sorted(ordered[j] for j in order[start:stop])
        start = stop
    return parts


def check_split(split: str, allowed: Sequence[str], dataset: str) -> None:
    """Raises ValueError when `split` is not one of `allowed`."""
    if split not in allowed:
        raise ValueError(f"split must be one of {', '.join(map(repr, allowed))} for {dataset}, got {split!r}")


class SegmentationDataset(Dataset):
    """Base class of the readers: loading, the spatial pipeline, augmentation and the contract dict.

    A subclass sets `ids` and implements `_load(index) -> (image float32 (C, H, W), label int64 (H, W), extras)`
    where extras maps names (e.g. "fov") to further int64 (H, W) maps that follow every spatial transform, and
    `_spatial(image, label, extras, generator)` for its resize/crop policy (the default does nothing).

    Every item is `{"image": float32 (C, H, W), "mask": float32 (K, H, W) in {0, 1}, "id": str}` plus a float32
    (1, H, W) entry per extra map.

    Attributes:
        num_classes: K, the number of mask channels (1 for single-object tasks, background included otherwise).
        in_channels: image channels C.
        class_names: K names, background first when K > 1.
        ids: the sample ids of this split, in index order.
        split: the split name.
        augment: the PairedAugment applied to training samples, or None.
        seed: base seed of the per-sample generators (random crops and augmentations).
    """

    num_classes: int
    in_channels: int
    class_names: tuple[str, ...]

    def __init__(self, split: str, augment: bool | PairedAugment | None, seed: int, cache: bool = False) -> None:
        self.split = split
        if augment is None:
            augment = split == "train"
        if augment is True:
            augment = self.default_augment()
        self.augment: PairedAugment | None = augment or None
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = {}
        self.ids: list[str] = []

    def default_augment(self) -> PairedAugment:
        """The augmentation used when `augment=True` (or None on the training split)."""
        return PairedAugment()

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch mixed into the per-sample seeds, so each epoch sees new (reproducible) augmentations."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _resize(
        self, image: torch.Tensor, label: torch.Tensor, extras: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Deterministic part of the spatial pipeline (resizing), whose result may be cached."""
        return image, label, extras

    def _spatial(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        extras: dict[str, torch.Tensor],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Random part of the spatial pipeline (e.g. training crops) before augmentation."""
        return image, label, extras

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index = index % len(self)
        if self.cache and index in self._cache:
            image, label, extras = self._cache[index]
        else:
            image, label, extras = self._resize(*self._load(index))
            if self.cache:
                self._cache[index] = (image, label, extras)
        generator = sample_generator(self.seed, self.epoch, index)
        image, label, extras = self._spatial(image, label, extras, generator)
        if self.augment is not None:
            names = list(extras)
            image, maps = self.augment(image, [label, *(extras[n] for n in names)], generator)
            label, extras = maps[0], dict(zip(names, maps[1:], strict=True))
        sample: dict[str, Any] = {
            "image": image.to(torch.float32).contiguous(),
            "mask": one_hot(label, self.num_classes),
            "id": self.ids[index],
        }
        for name, value in extras.items():
            sample[name] = (value > 0).to(torch.float32)[None]
        return sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, num_classes={self.num_classes}, "
            f"in_channels={self.in_channels}, augment={self.augment is not None})"
        )
