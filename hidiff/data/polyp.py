"""Polyp segmentation readers: Kvasir-SEG and CVC-ClinicDB (single object, K = 1, RGB, resized to 256x256)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .base import (
    SegmentationDataset,
    check_same_size,
    check_split,
    glob_files,
    read_image,
    read_tiff,
    require_path,
    seeded_split,
    to_binary,
    to_rgb,
)
from .transforms import PairedAugment, Size, as_size, resize_image, resize_label, to_image_tensor

KVASIR_LAYOUT = """\
<root>/images/<id>.jpg         RGB colonoscopy frames
<root>/masks/<id>.jpg          masks with the same file names (JPEG: thresholded at > 127)
<root>/official_train.txt      (optional) ids of the official 880-image training split, one per line
<root>/official_val.txt        (optional) ids of the official 120-image validation split
<root>/pranet_test.txt         (optional) the 100 test ids of the PraNet split"""

CVC_LAYOUT = """\
<root>/Original/<n>.tif        384x288 RGB frames, n = 1..612
<root>/Ground Truth/<n>.tif    masks with the same file names (thresholded at > 127)"""


class _PolypDataset(SegmentationDataset):
    """Shared behaviour: binary mask, resize both image and mask to `image_size`."""

    num_classes = 1
    in_channels = 3
    class_names = ("polyp",)

    def __init__(
        self, split: str, image_size: Size, augment: bool | PairedAugment | None, seed: int, cache: bool
    ) -> None:
        super().__init__(split, augment, seed, cache)
        self.image_size = as_size(image_size, "image_size")

    def _paths(self, index: int) -> tuple[Path, Path]:
        raise NotImplementedError

    def _read(self, path: Path, is_mask: bool) -> np.ndarray:
        raise NotImplementedError

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        image_path, mask_path = self._paths(index)
        image = to_rgb(self._read(image_path, is_mask=False), image_path)
        mask = to_binary(self._read(mask_path, is_mask=True), mask_path)
        check_same_size(image, image_path, mask, mask_path)
        return to_image_tensor(image), torch.from_numpy(mask), {}

    def _resize(self, image, label, extras):
        return resize_image(image, self.image_size), resize_label(label, self.image_size), extras


class KvasirSEG(_PolypDataset):
    """Kvasir-SEG (1000 polyp frames with masks), official layout.

    Splits:
        "train" / "val" / "test": the paper's 80/10/10 split (following DUCK-Net), made by `seeded_split`: the 1000
            sorted ids permuted by `np.random.default_rng(split_seed)` and cut into 800/100/100. DUCK-Net's own random
            split is not published as a list, so this seeded one stands in for it (stable across runs and machines).
        "official_train" / "official_val": the lists official_train.txt (880) / official_val.txt (120).
        "pranet_test": the ids of pranet_test.txt (100); "pranet_train": every other id (900).
        "all": every id.

    Each item: image float32 (3, S, S) in [0, 1] (bilinear, anti-aliased resize), mask float32 (1, S, S) in {0, 1}
    (nearest resize of the mask thresholded at > 127), id = file stem. S = `image_size` (256 by default).

    Args:
        root: the Kvasir-SEG folder.
        split: one of the splits above.
        image_size: output size, an int or (H, W).
        augment: PairedAugment to apply, True for the default one, None for "default on the train splits only".
        seed: base seed of the augmentations.
        split_seed: seed of the 80/10/10 permutation.
        split_fractions: (train, val, test) fractions of the seeded split.
        cache: keep resized samples in memory (about 0.75 MB each at 256x256) to skip JPEG decoding after the first
            epoch.

    Raises:
        FileNotFoundError: naming the missing folder, list or file and the expected layout.
    """

    SPLITS = ("train", "val", "test", "official_train", "official_val", "pranet_train", "pranet_test", "all")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: Size = 256,
        augment: bool | PairedAugment | None = None,
        seed: int = 0,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        cache: bool = False,
    ) -> None:
        check_split(split, self.SPLITS, "Kvasir-SEG")
        super().__init__(split, image_size, _train_default(split, augment), seed, cache)
        self.root = require_path(Path(root), KVASIR_LAYOUT, "folder")
        self.image_dir = require_path(self.root / "images", KVASIR_LAYOUT, "folder")
        self.mask_dir = require_path(self.root / "masks", KVASIR_LAYOUT, "folder")
        all_ids = sorted(p.stem for p in glob_files(self.image_dir, "*.jpg"))
        if not all_ids:
            raise FileNotFoundError(f"no <id>.jpg images in {self.image_dir}; expected layout:\n{KVASIR_LAYOUT}")
        if split in ("train", "val", "test"):
            ids = seeded_split(all_ids, split_fractions, split_seed)[split]
        elif split == "all":
            ids = all_ids
        elif split in ("official_train", "official_val"):
            ids = self._read_list(f"{split}.txt")
        else:
            test_ids = self._read_list("pranet_test.txt")
            ids = test_ids if split == "pranet_test" else sorted(set(all_ids) - set(test_ids))
        for sample_id in ids:
            require_path(self.image_dir / f"{sample_id}.jpg", KVASIR_LAYOUT)
            require_path(self.mask_dir / f"{sample_id}.jpg", KVASIR_LAYOUT)
        self.ids = ids

    def _read_list(self, name: str) -> list[str]:
        path = require_path(self.root / name, KVASIR_LAYOUT)
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        # Tolerate lists written with the file extension.
        return [i[: -len(".jpg")] if i.lower().endswith(".jpg") else i for i in ids]

    def _paths(self, index: int) -> tuple[Path, Path]:
        sample_id = self.ids[index]
        return (
            require_path(self.image_dir / f"{sample_id}.jpg", KVASIR_LAYOUT),
            require_path(self.mask_dir / f"{sample_id}.jpg", KVASIR_LAYOUT),
        )

    def _read(self, path: Path, is_mask: bool) -> np.ndarray:
        return read_image(path, "L" if is_mask else "RGB")


class CVCClinicDB(_PolypDataset):
    """CVC-ClinicDB (612 frames from 29 colonoscopy videos), official TIFF layout.

    Splits "train" / "val" / "test": seeded 80/10/10 split over frames (490/61/61), the paper's protocol; "all".
    As in the paper, frames are split at random, so frames of one video can fall on both sides.

    Each item: image float32 (3, S, S) in [0, 1], mask float32 (1, S, S) in {0, 1} (> 127), id = the frame number as a
    string. Files are read with tifffile. Arguments as for `KvasirSEG`.
    """

    SPLITS = ("train", "val", "test", "all")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: Size = 256,
        augment: bool | PairedAugment | None = None,
        seed: int = 0,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        cache: bool = False,
    ) -> None:
        check_split(split, self.SPLITS, "CVC-ClinicDB")
        super().__init__(split, image_size, augment, seed, cache)
        self.root = require_path(Path(root), CVC_LAYOUT, "folder")
        self.image_dir = require_path(self.root / "Original", CVC_LAYOUT, "folder")
        self.mask_dir = require_path(self.root / "Ground Truth", CVC_LAYOUT, "folder")
        all_ids = [p.stem for p in glob_files(self.image_dir, "*.tif")]
        if not all_ids:
            raise FileNotFoundError(f"no <n>.tif images in {self.image_dir}; expected layout:\n{CVC_LAYOUT}")
        ids = all_ids if split == "all" else seeded_split(all_ids, split_fractions, split_seed)[split]
        ids = sorted(ids, key=_numeric_key)
        for sample_id in ids:
            require_path(self.mask_dir / f"{sample_id}.tif", CVC_LAYOUT)
        self.ids = ids

    def _paths(self, index: int) -> tuple[Path, Path]:
        sample_id = self.ids[index]
        return (
            require_path(self.image_dir / f"{sample_id}.tif", CVC_LAYOUT),
            require_path(self.mask_dir / f"{sample_id}.tif", CVC_LAYOUT),
        )

    def _read(self, path: Path, is_mask: bool) -> np.ndarray:
        return read_tiff(path)


def _numeric_key(name: str) -> tuple[int, str]:
    """Sorts "2" before "10" (CVC frames are numbered), non-numeric names after."""
    return (int(name), "") if name.isdigit() else (1 << 62, name)


def _train_default(split: str, augment: bool | PairedAugment | None) -> bool | PairedAugment | None:
    """Augmentation defaults to on for every training split (train, official_train, pranet_train)."""
    if augment is None:
        return split in ("train", "official_train", "pranet_train")
    return augment
