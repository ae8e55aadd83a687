"""Dataset readers for the official layouts of the paper's datasets, transforms, synthetic data, sliding window.

Every reader returns `{"image": float32 (C, H, W), "mask": float32 (K, H, W) in {0, 1}, "id": str}` (DRIVE adds
"fov") and has attributes `num_classes`, `in_channels`, `class_names`, `ids`. `build_dataset(name, root, split)`
builds one by name.
"""

from .base import DataFileError, SegmentationDataset, seeded_split
from .brats import BraTS
from .polyp import CVCClinicDB, KvasirSEG
from .registry import DATASETS, build_dataset, default_root
from .retina import CHASEDB1, DRIVE
from .sliding_window import gaussian_weight, sliding_window_inference
from .synapse import Synapse
from .synthetic import SyntheticShapes, render_shapes
from .transforms import PairedAugment, one_hot, random_crop, resize_image, resize_label, sample_generator

__all__ = [
    "BraTS",
    "CHASEDB1",
    "CVCClinicDB",
    "DATASETS",
    "DRIVE",
    "DataFileError",
    "KvasirSEG",
    "PairedAugment",
    "SegmentationDataset",
    "Synapse",
    "SyntheticShapes",
    "build_dataset",
    "default_root",
    "gaussian_weight",
    "one_hot",
    "random_crop",
    "render_shapes",
    "resize_image",
    "resize_label",
    "sample_generator",
    "seeded_split",
    "sliding_window_inference",
]
