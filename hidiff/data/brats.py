"""BraTS 2021 brain tumour reader: per-patient NIfTI volumes to 2-D axial slices (K = 4, four MRI modalities)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .base import (
    DataFileError,
    SegmentationDataset,
    check_split,
    glob_files,
    read_with,
    require_path,
    seeded_split,
)
from .transforms import PairedAugment, Size, as_size, center_crop

BRATS_LAYOUT = """\
<root>/<patient>/<patient>_t1.nii.gz      one folder per patient (e.g. BraTS2021_00000), four co-registered
<root>/<patient>/<patient>_t1ce.nii.gz    MRI modalities of the same shape (240x240x155 in BraTS 2021)
<root>/<patient>/<patient>_t2.nii.gz
<root>/<patient>/<patient>_flair.nii.gz
<root>/<patient>/<patient>_seg.nii.gz     labels 0, 1 (necrotic core), 2 (oedema), 4 (enhancing tumour)"""

MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_CLASSES = ("background", "necrotic_core", "edema", "enhancing_tumor")


def _load_nifti(path: Path) -> np.ndarray:
    import nibabel

    return np.asarray(nibabel.load(str(path)).dataobj)


def _nifti_shape(path: Path) -> tuple[int, ...]:
    import nibabel

    return tuple(int(s) for s in nibabel.load(str(path)).shape)


def zscore(volume: np.ndarray) -> np.ndarray:
    """Per-volume z-score over the brain (non-zero voxels); the background stays 0.

    Statistics over the brain only, because the zero background (most of the volume) would otherwise dominate the
    mean and std. A volume with no non-zero voxel is returned as zeros.

    Args:
        volume: float array of any shape.

    Returns:
        float32 array of the same shape.
    """
    volume = volume.astype(np.float32)
    brain = volume != 0
    if not brain.any():
        return np.zeros_like(volume)
    values = volume[brain]
    std = float(values.std())
    out = np.zeros_like(volume)
    out[brain] = (values - float(values.mean())) / (std if std > 0 else 1.0)
    return out


class BraTS(SegmentationDataset):
    """BraTS 2021 as 2-D axial slices, four channels (t1, t1ce, t2, flair, in this order), K = 4.

    Labels 0 (background), 1 (necrotic core), 2 (oedema), 4 (enhancing tumour) are mapped to classes 0..3 (4 -> 3).
    Per patient, the axial slices z with drop_bottom <= z < depth - drop_top are kept (80 and 26: with 155 slices, the
    49 slices through the brain's middle; the rest are mostly empty). Each modality is z-scored per volume over its
    non-zero voxels (`zscore`), then every slice is centre-cropped to `image_size` (224: the 240x240 slice minus an
    8-pixel border). Volumes are (x, y, z) in the files; slices are returned as (y, x).

    Splits "train" / "val" / "test": seeded 80/10/10 split by patient (`seeded_split` over the sorted patient folder
    names), so no patient contributes slices to two splits; "all": every patient.

    Each item: image float32 (4, S, S) (z-scored), mask float32 (4, S, S) one-hot, id = "<patient>_zNNN".

    Args:
        root: the folder of patient folders.
        split: "train", "val", "test" or "all".
        image_size: centre-crop size (zero-padded when larger than the slice).
        augment: PairedAugment (default: flips, rotations, scale and brightness jitter without clipping).
        seed: base seed of the augmentations.
        split_seed: seed of the patient permutation.
        split_fractions: (train, val, test) fractions of patients.
        drop_bottom: number of lowest axial slices dropped.
        drop_top: number of highest axial slices dropped.
        volume_cache: how many decoded patients to keep in memory (consecutive slices of one patient then decode its
            volumes once).
    """

    SPLITS = ("train", "val", "test", "all")
    num_classes = 4
    in_channels = len(MODALITIES)
    class_names = BRATS_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: Size = 224,
        augment: bool | PairedAugment | None = None,
        seed: int = 0,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        drop_bottom: int = 80,
        drop_top: int = 26,
        volume_cache: int = 2,
    ) -> None:
        check_split(split, self.SPLITS, "BraTS")
        if drop_bottom < 0 or drop_top < 0:
            raise ValueError(f"drop_bottom and drop_top must be >= 0, got {drop_bottom} and {drop_top}")
        super().__init__(split, augment, seed)
        self.image_size = as_size(image_size, "image_size")
        self.drop_bottom, self.drop_top = int(drop_bottom), int(drop_top)
        self.root = require_path(Path(root), BRATS_LAYOUT, "folder")
        patients = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and glob_files(p, "*.nii*")
        )
        if not patients:
            raise FileNotFoundError(
                f"no patient folders with NIfTI volumes in {self.root}; expected layout:\n{BRATS_LAYOUT}"
            )
        if split != "all":
            patients = seeded_split(patients, split_fractions, split_seed)[split]
        self.patients = patients
        self.slices: list[tuple[str, int]] = []
        for patient in patients:
            seg = self._path(patient, "seg")
            for modality in MODALITIES:
                self._path(patient, modality)
            shape = read_with(seg, "a NIfTI volume", _nifti_shape)
            if len(shape) != 3:
                raise DataFileError(f"cannot read {seg} as a 3-D NIfTI volume: shape {shape}")
            kept = range(self.drop_bottom, shape[2] - self.drop_top)
            if not kept:
                raise ValueError(
                    f"{seg} has {shape[2]} axial slices: none left after dropping the bottom {self.drop_bottom} and "
                    f"top {self.drop_top}"
                )
            self.slices.extend((patient, z) for z in kept)
        self.ids = [f"{patient}_z{z:03d}" for patient, z in self.slices]
        self.volume_cache = max(1, int(volume_cache))
        self._volumes: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def default_augment(self) -> PairedAugment:
        return PairedAugment(clip=None)

    def _path(self, patient: str, suffix: str) -> Path:
        return require_path(self.root / patient / f"{patient}_{suffix}.nii.gz", BRATS_LAYOUT)

    def _volume(self, patient: str) -> tuple[np.ndarray, np.ndarray]:
        """(image float32 (4, Z, Y, X) z-scored, label int64 (Z, Y, X) in 0..3) of the kept slices of a patient."""
        if patient in self._volumes:
            self._volumes.move_to_end(patient)
            return self._volumes[patient]
        seg_path = self._path(patient, "seg")
        seg = read_with(seg_path, "a NIfTI volume", _load_nifti)
        channels = []
        for modality in MODALITIES:
            path = self._path(patient, modality)
            volume = read_with(path, "a NIfTI volume", _load_nifti)
            if volume.shape != seg.shape:
                raise ValueError(f"size mismatch: {path} has shape {volume.shape} but {seg_path} has {seg.shape}")
            channels.append(zscore(volume))
        raw = np.rint(seg).astype(np.int64)
        unexpected = np.setdiff1d(np.unique(raw), [0, 1, 2, 4])
        if unexpected.size:
            raise DataFileError(f"{seg_path}: labels must be 0, 1, 2 or 4, found {unexpected.tolist()}")
        label = np.where(raw == 4, 3, raw)
        keep = slice(self.drop_bottom, seg.shape[2] - self.drop_top)
        image = np.ascontiguousarray(np.stack(channels)[..., keep].transpose(0, 3, 2, 1))
        label = np.ascontiguousarray(label[..., keep].transpose(2, 1, 0))
        self._volumes[patient] = (image, label)
        while len(self._volumes) > self.volume_cache:
            self._volumes.popitem(last=False)
        return image, label

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        patient, z = self.slices[index]
        image, label = self._volume(patient)
        k = z - self.drop_bottom
        return torch.from_numpy(image[:, k].copy()), torch.from_numpy(label[k].copy()), {}

    def _resize(self, image, label, extras):
        image, (label,) = center_crop(image, [label], self.image_size)
        return image, label, extras
