"""Using a trained HiDiff: segment image files, write masks and overlay figures.

The model comes from a checkpoint through :func:`hidiff.factory.load_model`; nothing here imports
:mod:`hidiff.training`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .data.base import image_array
from .evaluation import predict
from .models import HiDiff, RefineSettings

logger = logging.getLogger(__name__)

#: The files written per image: ``<name>_mask.png`` (refined), ``<name>_prior.png`` and ``<name>_overlay.png``.
OUTPUT_SUFFIXES = ("_mask.png", "_prior.png", "_overlay.png")


def read_image(path: str | Path, channels: int = 3) -> Tensor:
    """Reads an image file as float32 ``(C, H, W)`` in [0, 1] (RGB for 3 channels, greyscale for 1).

    Pixels are divided by their type's range: 255 for 8-bit images, 65535 for 16-bit ones; float images (TIFF mode
    "F") are read as they are and must lie in [0, 1].
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"image {path} is a directory, expected an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if channels not in (1, 3):
        raise ValueError(f"segmenting image files needs a 1- or 3-channel model, this one reads {channels} channels")
    try:
        with Image.open(path) as image:
            pixels = image_array(image, "RGB" if channels == 3 else "L")
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    scale = 1.0 if np.issubdtype(pixels.dtype, np.floating) else np.iinfo(pixels.dtype).max
    array = pixels.astype(np.float32) / scale
    tensor = torch.from_numpy(array)
    return tensor.permute(2, 0, 1).contiguous() if tensor.dim() == 3 else tensor.unsqueeze(0)


@dataclass
class Segmentation:
    """The result for one image at its original size: the prior and refined masks ``(K, H, W)`` in {0, 1}."""

    image: Tensor
    prior_mask: Tensor
    refined_mask: Tensor
    prior: Tensor
    refined: Tensor


@torch.no_grad()
def segment_image(
    model: HiDiff, image: Tensor, image_size: int, settings: RefineSettings | None = None
) -> Segmentation:
    """Segments one image ``(C, H, W)`` in [0, 1]: resized to ``image_size`` for the model, maps resized back.

    Returns:
        a :class:`Segmentation` with maps at the image's own resolution.
    """
    height, width = image.shape[-2:]
    resized = F.interpolate(image[None], size=(image_size, image_size), mode="bilinear", align_corners=False)
    result = predict(model, resized, settings)
    maps = {}
    for key in ("prior", "refined"):
        maps[key] = F.interpolate(result[key], size=(height, width), mode="bilinear", align_corners=False)[0]
    return Segmentation(
        image=image,
        prior_mask=model.diffusion.to_mask(maps["prior"][None])[0],
        refined_mask=model.diffusion.to_mask(maps["refined"][None])[0],
        prior=maps["prior"],
        refined=maps["refined"],
    )


def label_map(mask: Tensor) -> np.ndarray:
    """``(K, H, W)`` one-hot/binary mask -> uint8 ``(H, W)``: 0/255 for K = 1, the class index for K > 1."""
    if mask.shape[0] == 1:
        return (mask[0] > 0.5).to(torch.uint8).mul(255).cpu().numpy()
    return mask.argmax(0).to(torch.uint8).cpu().numpy()


def save_overlay(segmentation: Segmentation, path: str | Path, title: str = "") -> Path:
    """Writes a figure: the image, the segmentor's mask and the refined mask drawn over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = segmentation.image.permute(1, 2, 0).cpu().numpy()
    image = image[..., 0] if image.shape[-1] == 1 else image
    panels = (("image", None), ("segmentor", segmentation.prior_mask), ("HiDiff (refined)", segmentation.refined_mask))
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for axis, (name, mask) in zip(axes, panels, strict=True):
        axis.imshow(image, cmap="gray" if image.ndim == 2 else None)
        if mask is not None:
            labels = label_map(mask).astype(float)
            axis.imshow(np.ma.masked_where(labels == 0, labels), cmap="autumn", alpha=0.45, interpolation="nearest")
        axis.set_title(name)
        axis.axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def segment_files(
    model: HiDiff,
    paths: Sequence[str | Path],
    output_dir: str | Path,
    image_size: int,
    settings: RefineSettings | None = None,
) -> list[Path]:
    """Segments image files; writes ``<name>_mask.png`` (refined), ``<name>_prior.png`` and ``<name>_overlay.png``.

    ``<name>`` is the file's stem; where stems repeat (``a/x.jpg`` and ``b/x.jpg``, or ``x.jpg`` and ``x.png``), see
    :func:`output_names`, so no output replaces another.

    Args:
        image_size: the model's input size (positive).

    Returns:
        the paths of the refined masks.

    Raises:
        ValueError: when `image_size` is not positive, a file is given twice, an output would replace an input, or an
            input cannot be read (all checked before anything is written).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    names = output_names(paths)
    output_dir = Path(output_dir)
    inputs = {Path(p).resolve(): p for p in paths}
    for stem in names:
        for suffix in OUTPUT_SUFFIXES:
            target = (output_dir / f"{stem}{suffix}").resolve()
            if target in inputs:
                raise ValueError(
                    f"the output {output_dir / f'{stem}{suffix}'} would replace the input {inputs[target]}: choose "
                    "another --output-dir (inputs are never written over)"
                )
    # Every input is read once before anything is written: a bad file fails the call, not half of it.
    for path in paths:
        read_image(path, model.refiner.image_channels)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, stem in zip(paths, names, strict=True):
        image = read_image(path, model.refiner.image_channels)
        segmentation = segment_image(model, image, image_size, settings)
        mask_suffix, prior_suffix, overlay_suffix = OUTPUT_SUFFIXES
        Image.fromarray(label_map(segmentation.refined_mask)).save(output_dir / f"{stem}{mask_suffix}")
        Image.fromarray(label_map(segmentation.prior_mask)).save(output_dir / f"{stem}{prior_suffix}")
        save_overlay(segmentation, output_dir / f"{stem}{overlay_suffix}", title=Path(path).name)
        written.append(output_dir / f"{stem}_mask.png")
        logger.info("segmented %s -> %s", path, written[-1])
    return written


def output_names(paths: Sequence[str | Path]) -> list[str]:
    """Distinct output names of image files: their stems, made unique where stems repeat.

    Files whose stems are unique keep them (``frame.png`` -> ``frame``). Where several files share a stem, their names
    are their paths relative to the inputs' common folder, folders joined by ``__``
    (``a/x.jpg``, ``b/x.jpg`` -> ``a__x``,
    ``b__x``), with the extension appended if that is still not enough (``x.jpg``, ``x.png`` -> ``x.jpg``, ``x.png``).

    Raises:
        ValueError: when one file is given twice, or no distinct names can be made.
    """
    resolved = [Path(p).resolve() for p in paths]
    seen: dict[Path, str | Path] = {}
    for original, path in zip(paths, resolved, strict=True):
        if path in seen:
            raise ValueError(f"image {original} is given twice (also as {seen[path]})")
        seen[path] = original
    stems = [p.stem for p in resolved]
    repeated = {stem for stem in stems if stems.count(stem) > 1}
    if not repeated:
        return stems
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    relative = [p.relative_to(common) for p in resolved]
    names = [
        "__".join((*r.parent.parts, r.stem)) if stem in repeated else stem
        for r, stem in zip(relative, stems, strict=True)
    ]
    clashes = {name for name in names if names.count(name) > 1}
    names = ["__".join(r.parts) if name in clashes else name for r, name in zip(relative, names, strict=True)]
    if len(set(names)) != len(names):
        raise ValueError(f"cannot give distinct output names to the images {[str(p) for p in paths]}: rename some")
    return names
