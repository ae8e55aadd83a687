"""Synapse multi-organ CT reader (TransUNet's preprocessed distribution; K = 9 with background)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import DataFileError, SegmentationDataset, check_split, read_with, require_path
from .transforms import PairedAugment, Size, as_size, resize_image, resize_label, to_image_tensor

SYNAPSE_LAYOUT = """\
<root>/train_npz/caseXXXX_sliceYYY.npz     2-D training slices: arrays "image" (512x512 float, in [0, 1])
                                           and "label" (512x512, 0..8)
<root>/test_vol_h5/caseXXXX.npy.h5         3-D test volumes: datasets "image" and "label" (D x 512 x 512)
<root>/lists_Synapse/train.txt             training slice names (caseXXXX_sliceYYY), one per line
<root>/lists_Synapse/test_vol.txt          test volume names (caseXXXX), one per line"""

SYNAPSE_CLASSES = (
    "background",
    "aorta",
    "gallbladder",
    "kidney_left",
    "kidney_right",
    "liver",
    "pancreas",
    "spleen",
    "stomach",
)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return np.asarray(data["image"]), np.asarray(data["label"])


class Synapse(SegmentationDataset):
    """Synapse multi-organ CT in TransUNet's distribution: 8 organs + background, K = 9, one channel.

    Splits: "train" (the 2-D slices of lists_Synapse/train.txt, from train_npz) and "test" (every axial slice of the
    volumes of lists_Synapse/test_vol.txt, from test_vol_h5, read slice by slice). Class order and label values are
    TransUNet's: background, aorta, gallbladder, left kidney, right kidney, liver, pancreas, spleen, stomach.

    Intensities are used as distributed (TransUNet clipped the CT to [-125, 275] HU and scaled it to [0, 1]).
    Each item: image float32 (1, S, S), mask float32 (9, S, S) one-hot, id = "caseXXXX_sliceYYY". S = `image_size`,
    by default 256 for "train" and 512 for "test" (the paper's resolutions); image bilinear, label nearest.

    Attributes:
        slices: (case, slice index) of every item; test items of one case are consecutive and in slice order, so
            predictions can be stacked back into volumes.

    Args:
        root: the folder holding train_npz, test_vol_h5 and lists_Synapse.
        split: "train" or "test".
        image_size: output size (None: 256 for train, 512 for test).
        augment: PairedAugment, True for the default one, None for "on for train only".
        seed: base seed of the augmentations.
        list_dir: folder of train.txt / test_vol.txt (default <root>/lists_Synapse; TransUNet keeps it in its
            code tree).
        cache: keep resized slices in memory.
    """

    SPLITS = ("train", "test")
    num_classes = 9
    in_channels = 1
    class_names = SYNAPSE_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: Size | None = None,
        augment: bool | PairedAugment | None = None,
        seed: int = 0,
        list_dir: str | Path | None = None,
        cache: bool = False,
    ) -> None:
        check_split(split, self.SPLITS, "Synapse")
        super().__init__(split, augment, seed, cache)
        self.image_size = as_size(image_size if image_size is not None else (256 if split == "train" else 512))
        self.root = require_path(Path(root), SYNAPSE_LAYOUT, "folder")
        list_dir = Path(list_dir) if list_dir is not None else self.root / "lists_Synapse"
        list_path = require_path(list_dir / ("train.txt" if split == "train" else "test_vol.txt"), SYNAPSE_LAYOUT)
        names = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
        if not names:
            raise ValueError(f"{list_path} lists no samples")
        self.slices: list[tuple[str, int]] = []
        self._paths: list[Path] = []
        if split == "train":
            folder = require_path(self.root / "train_npz", SYNAPSE_LAYOUT, "folder")
            for name in names:
                self._paths.append(require_path(folder / f"{name}.npz", SYNAPSE_LAYOUT))
                case, _, index = name.partition("_slice")
                self.slices.append((case, int(index) if index.isdigit() else 0))
            self.ids = names
        else:
            folder = require_path(self.root / "test_vol_h5", SYNAPSE_LAYOUT, "folder")
            for case in names:
                path = require_path(folder / f"{case}.npy.h5", SYNAPSE_LAYOUT)
                depth = read_with(path, "an HDF5 volume", self._volume_depth)
                for z in range(depth):
                    self._paths.append(path)
                    self.slices.append((case, z))
            self.ids = [f"{case}_slice{z:03d}" for case, z in self.slices]

    @staticmethod
    def _volume_depth(path: Path) -> int:
        import h5py

        with h5py.File(path, "r") as f:
            image, label = f["image"], f["label"]
            if image.ndim != 3 or image.shape != label.shape:
                raise ValueError(f"expected 3-D image and label of equal shape, got {image.shape} and {label.shape}")
            return int(image.shape[0])

    def _read_slice(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path = self._paths[index]
        if self.split == "train":
            return read_with(path, "an npz slice with 'image' and 'label'", _read_npz)
        import h5py

        z = self.slices[index][1]

        def read(p: Path) -> tuple[np.ndarray, np.ndarray]:
            with h5py.File(p, "r") as f:
                return np.asarray(f["image"][z]), np.asarray(f["label"][z])

        return read_with(path, "an HDF5 volume with 'image' and 'label'", read)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        image, label = self._read_slice(index)
        path = self._paths[index]
        if image.ndim != 2 or image.shape != label.shape:
            raise ValueError(
                f"{path}: expected 2-D image and label slices of equal shape, got {image.shape} and {label.shape}"
            )
        label = np.rint(label).astype(np.int64)
        if label.size and (label.min() < 0 or label.max() >= self.num_classes):
            raise DataFileError(
                f"{path}: label values must lie in 0..{self.num_classes - 1}, got {label.min()}..{label.max()}"
            )
        return to_image_tensor(image.astype(np.float32)), torch.from_numpy(label), {}

    def _resize(self, image, label, extras):
        return resize_image(image, self.image_size), resize_label(label, self.image_size), extras
