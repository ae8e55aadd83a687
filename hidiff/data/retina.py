"""Retinal vessel readers: DRIVE and CHASE_DB1 (single object, K = 1, RGB).

Both train on random crops (256x256 by default) and are evaluated on the full image, by a sliding window
(`hidiff.data.sliding_window_inference`), as in the paper.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .base import (
    SegmentationDataset,
    check_same_size,
    check_split,
    glob_files,
    read_image,
    read_tiff,
    require_path,
    to_binary,
    to_rgb,
)
from .transforms import PairedAugment, Size, as_size, random_crop, resize_image, resize_label, to_image_tensor

DRIVE_LAYOUT = """\
<root>/training/images/NN_training.tif         565x584 RGB fundus images, NN = 21..40
<root>/training/1st_manual/NN_manual1.gif      vessel annotations (first observer)
<root>/training/mask/NN_training_mask.gif      field-of-view masks
<root>/test/images/NN_test.tif                 NN = 01..20, with test/1st_manual and test/mask as above"""

CHASE_LAYOUT = """\
<root>/Image_NNL.jpg, <root>/Image_NNR.jpg     999x960 RGB fundus images (left/right eye), NN = 01..14
<root>/Image_NNL_1stHO.png                     first observer's vessel annotation (the ground truth)"""


class _RetinaDataset(SegmentationDataset):
    num_classes = 1
    in_channels = 3
    class_names = ("vessel",)

    def __init__(
        self,
        split: str,
        image_size: Size | None,
        crop_size: Size | None,
        augment: bool | PairedAugment | None,
        seed: int,
        cache: bool,
    ) -> None:
        super().__init__(split, augment, seed, cache)
        self.image_size = None if image_size is None else as_size(image_size, "image_size")
        self.crop_size = None if crop_size is None else as_size(crop_size, "crop_size")

    def _resize(self, image, label, extras):
        if self.image_size is None:
            return image, label, extras
        return (
            resize_image(image, self.image_size),
            resize_label(label, self.image_size),
            {name: resize_label(value, self.image_size) for name, value in extras.items()},
        )

    def _spatial(self, image, label, extras, generator):
        if self.split != "train" or self.crop_size is None:
            return image, label, extras
        names = list(extras)
        image, maps = random_crop(image, [label, *(extras[n] for n in names)], self.crop_size, generator)
        return image, maps[0], dict(zip(names, maps[1:], strict=True))


class DRIVE(_RetinaDataset):
    """DRIVE (40 fundus images, 565x584), official layout.

    Splits: "train" = the training folder (images 21-40), "test" = the test folder (01-20).
    Each item: image float32 (3, H, W) in [0, 1], mask float32 (1, H, W) vessel map (> 127 of 1st_manual), "fov"
    float32 (1, H, W) the field-of-view mask (evaluate inside it), id = the image file stem (e.g. "21_training").
    Training items are random `crop_size` crops (zero-padded at the border when the image is smaller), test items
    the full image.

    Args:
        root: the DRIVE folder.
        split: "train" or "test".
        image_size: None for the native resolution (the paper), or a size to resize the full images to first.
        crop_size: size of the random training crops (None: full training images).
        augment: PairedAugment, True for the default one, None for "on for train only".
        seed: base seed of the crops and augmentations.
        cache: keep decoded images in memory.
    """

    SPLITS = ("train", "test")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: Size | None = None,
        crop_size: Size | None = 256,
        augment: bool | PairedAugment | None = None,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        check_split(split, self.SPLITS, "DRIVE")
        super().__init__(split, image_size, crop_size, augment, seed, cache)
        self.root = require_path(Path(root), DRIVE_LAYOUT, "folder")
        folder = "training" if split == "train" else "test"
        self.folder = require_path(self.root / folder, DRIVE_LAYOUT, "folder")
        image_dir = require_path(self.folder / "images", DRIVE_LAYOUT, "folder")
        self._files: list[tuple[Path, Path, Path]] = []
        ids = []
        for image_path in glob_files(image_dir, "*.tif"):
            match = re.match(r"(\d+)_", image_path.name)
            if match is None:
                continue
            number = match.group(1)
            manual = require_path(self.folder / "1st_manual" / f"{number}_manual1.gif", DRIVE_LAYOUT)
            fov = require_path(self.folder / "mask" / f"{image_path.stem}_mask.gif", DRIVE_LAYOUT)
            self._files.append((image_path, manual, fov))
            ids.append(image_path.stem)
        if not ids:
            raise FileNotFoundError(f"no NN_*.tif images in {image_dir}; expected layout:\n{DRIVE_LAYOUT}")
        self.ids = ids

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        image_path, manual_path, fov_path = self._files[index]
        image = to_rgb(read_tiff(image_path), image_path)
        label = to_binary(read_image(manual_path, "L"), manual_path)
        fov = to_binary(read_image(fov_path, "L"), fov_path)
        check_same_size(image, image_path, label, manual_path)
        check_same_size(image, image_path, fov, fov_path)
        return to_image_tensor(image), torch.from_numpy(label), {"fov": torch.from_numpy(fov)}


class CHASEDB1(_RetinaDataset):
    """CHASE_DB1 (28 fundus images, 999x960, both eyes of 14 children), official flat layout.

    Splits (the common one): "train" = subjects 01-10 (the first 20 images in sorted order), "test" = subjects 11-14
    (the last 8). Ground truth: the first observer's annotation (Image_NNX_1stHO.png). The official archive has no
    field-of-view masks, so items carry none.
    Each item: image float32 (3, H, W) in [0, 1], mask float32 (1, H, W), id = e.g. "Image_01L".
    Arguments as for `DRIVE`.
    """

    SPLITS = ("train", "test")
    NUM_TRAIN_SUBJECTS = 10

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: Size | None = None,
        crop_size: Size | None = 256,
        augment: bool | PairedAugment | None = None,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        check_split(split, self.SPLITS, "CHASE_DB1")
        super().__init__(split, image_size, crop_size, augment, seed, cache)
        self.root = require_path(Path(root), CHASE_LAYOUT, "folder")
        ids = []
        for image_path in glob_files(self.root, "Image_*.jpg"):
            match = re.fullmatch(r"Image_(\d+)[LR]", image_path.stem)
            if match is None:
                continue
            is_train = int(match.group(1)) <= self.NUM_TRAIN_SUBJECTS
            if is_train == (split == "train"):
                require_path(self.root / f"{image_path.stem}_1stHO.png", CHASE_LAYOUT)
                ids.append(image_path.stem)
        if not ids:
            raise FileNotFoundError(
                f"no Image_NN[LR].jpg images of the {split} split in {self.root}; expected layout:\n{CHASE_LAYOUT}"
            )
        self.ids = ids

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        image_path = require_path(self.root / f"{self.ids[index]}.jpg", CHASE_LAYOUT)
        label_path = require_path(self.root / f"{self.ids[index]}_1stHO.png", CHASE_LAYOUT)
        image = read_image(image_path, "RGB")
        label = to_binary(read_image(label_path, "L"), label_path)
        check_same_size(image, image_path, label, label_path)
        return to_image_tensor(image), torch.from_numpy(label), {}
