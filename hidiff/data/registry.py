"""Dataset registry: names -> reader classes, default roots, and `build_dataset`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import SegmentationDataset
from .brats import BraTS
from .polyp import CVCClinicDB, KvasirSEG
from .retina import CHASEDB1, DRIVE
from .synapse import Synapse
from .synthetic import SyntheticShapes

DATASETS: dict[str, type[SegmentationDataset]] = {
    "kvasir": KvasirSEG,
    "cvc": CVCClinicDB,
    "drive": DRIVE,
    "chase": CHASEDB1,
    "synapse": Synapse,
    "brats": BraTS,
    "synthetic": SyntheticShapes,
}

# Folder names looked up under ../shared/data (relative to the working directory) when no root is given.
_SHARED_FOLDERS = {
    "kvasir": "Kvasir-SEG",
    "cvc": "CVC-ClinicDB",
    "drive": "DRIVE",
    "chase": "CHASEDB1",
    "synapse": "Synapse",
    "brats": "BraTS2021",
}


def _check_name(name: str) -> str:
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(sorted(DATASETS))}")
    return key


def default_root(name: str) -> Path | None:
    """The data folder used when none is given, or None.

    Looks at the environment variable HIDIFF_<NAME>_ROOT (e.g. HIDIFF_KVASIR_ROOT), then at
    ../shared/data/<folder> relative to the current working directory (Kvasir-SEG, CVC-ClinicDB, DRIVE, CHASEDB1,
    Synapse, BraTS2021), returning the first that is set / exists. Always None for "synthetic".

    Raises:
        ValueError: for an unknown dataset name.
    """
    key = _check_name(name)
    if key == "synthetic":
        return None
    env = os.environ.get(f"HIDIFF_{key.upper()}_ROOT")
    if env:
        return Path(env)
    candidate = Path.cwd().parent / "shared" / "data" / _SHARED_FOLDERS[key]
    return candidate if candidate.is_dir() else None


def build_dataset(
    name: str, root: str | Path | None = None, split: str = "train", **kwargs: Any
) -> SegmentationDataset:
    """Builds the reader registered under `name` ("kvasir", "cvc", "drive", "chase", "synapse", "brats", "synthetic").

    Args:
        name: dataset name (case-insensitive).
        root: data folder; None uses `default_root(name)`. Ignored for "synthetic".
        split: split name (see each reader).
        **kwargs: further reader arguments (image_size, augment, seed, ...).

    Raises:
        ValueError: for an unknown name.
        FileNotFoundError: when no root is given and no default root exists, or the data is missing.
    """
    key = _check_name(name)
    cls = DATASETS[key]
    if key == "synthetic":
        return cls(None, split, **kwargs)
    if root is None:
        root = default_root(key)
        if root is None:
            raise FileNotFoundError(
                f"no data folder for {key!r}: pass root, or set HIDIFF_{key.upper()}_ROOT, or place it at "
                f"../shared/data/{_SHARED_FOLDERS[key]} relative to the working directory"
            )
    return cls(root, split, **kwargs)
