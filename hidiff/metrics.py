"""Segmentation metrics of the paper's evaluation (Sec. III-A.3): Dice, IoU, recall, accuracy, HD95.

Per-image functions take two binary masks of the same shape (bool or {0, 1}; numpy arrays or torch tensors, any
number of spatial dimensions, usually (H, W)). Conventions for empty masks (every ratio uses "0/0 = 1"):

- Dice and IoU are 1.0 when both masks are empty (0.0 when exactly one is).
- Recall is 1.0 when the ground truth is empty (nothing to miss).
- HD95 is 0.0 when both masks are empty and NaN (undefined) when exactly one is; `SegmentationMetrics` averages HD95
  over the defined cases and reports the fraction of undefined ones as the "NaN ratio", as the paper does.

HD95 is computed on mask borders: the border of a mask is the mask minus its erosion by the cross-shaped
(face-connected) structuring element, with everything outside the image counted as background (so a mask touching the
image edge has a border there). Distances are Euclidean, in pixels or in physical units when a per-axis `spacing`
(e.g. (sy, sx)) is given. HD95 is the 95th percentile (numpy's linear interpolation) of the union of both directed
sets: the distance of every border pixel of the prediction to the nearest border pixel of the ground truth, and of
every border pixel of the ground truth to the nearest border pixel of the prediction. (medpy's `hd95` instead takes
the larger of the two directed 95th percentiles; the two definitions agree on symmetric cases and differ slightly
otherwise.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

ArrayLike = np.ndarray | torch.Tensor

METRIC_NAMES = ("dice", "iou", "recall", "accuracy", "hd95")


def _to_bool(mask: ArrayLike, name: str) -> np.ndarray:
    """Converts a bool/{0, 1} mask to a numpy bool array, rejecting anything else (e.g. probabilities)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    elif not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(mask).__name__}")
    if mask.dtype == bool:
        return mask
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"{name} must be binary (bool or values in {{0, 1}}); threshold probabilities first")
    return mask.astype(bool)


def _pair(pred: ArrayLike, true: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _to_bool(pred, "pred"), _to_bool(true, "true")
    if a.shape != b.shape:
        raise ValueError(f"pred and true must have the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError(f"masks must not be empty arrays, got shape {a.shape}")
    return a, b


def _ratio(numerator: int, denominator: int) -> float:
    return 1.0 if denominator == 0 else numerator / denominator


def dice(pred: ArrayLike, true: ArrayLike) -> float:
    """Dice = 2 |P & T| / (|P| + |T|); 1.0 when both masks are empty."""
    a, b = _pair(pred, true)
    return _ratio(2 * int(np.count_nonzero(a & b)), int(np.count_nonzero(a)) + int(np.count_nonzero(b)))


def iou(pred: ArrayLike, true: ArrayLike) -> float:
    """IoU (Jaccard) = |P & T| / |P | T|; 1.0 when both masks are empty."""
    a, b = _pair(pred, true)
    return _ratio(int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b)))


def recall(pred: ArrayLike, true: ArrayLike) -> float:
    """Recall (sensitivity) = |P & T| / |T|; 1.0 when the ground truth is empty."""
    a, b = _pair(pred, true)
    return _ratio(int(np.count_nonzero(a & b)), int(np.count_nonzero(b)))


def accuracy(pred: ArrayLike, true: ArrayLike) -> float:
    """Pixel accuracy = fraction of pixels where the masks agree."""
    a, b = _pair(pred, true)
    return float(np.count_nonzero(a == b)) / a.size


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(s > 0 and math.isfinite(s) for s in values):
        raise ValueError(f"spacing must hold {ndim} positive finite numbers (one per spatial axis), got {spacing!r}")
    return values


def border(mask: np.ndarray) -> np.ndarray:
    """Border pixels of a bool mask: the mask minus its erosion (face connectivity, outside = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: ArrayLike, true: ArrayLike, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed border-to-border distances.

    Args:
        pred, true: binary masks of the same shape, both non-empty.
        spacing: optional physical size of a pixel along each axis.

    Returns:
        (distances float64 (Np,) from each border pixel of pred to the nearest border pixel of true,
         distances float64 (Nt,) from each border pixel of true to the nearest border pixel of pred).

    Raises:
        ValueError: when either mask is empty (the distances are undefined).
    """
    a, b = _pair(pred, true)
    sampling = _spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    border_a, border_b = border(a), border(b)
    # Every border pixel of both masks lies in the bounding box of their union, so the distance transforms can be
    # computed on that box alone: the nearest border pixel is never outside it, and distances do not depend on the
    # array extent.
    coords = np.nonzero(border_a | border_b)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    border_a, border_b = border_a[box], border_b[box]
    to_b = ndimage.distance_transform_edt(~border_b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~border_a, sampling=sampling)
    return to_b[border_a], to_a[border_b]


def hd95(pred: ArrayLike, true: ArrayLike, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile Hausdorff distance between the mask borders (see the module docstring).

    Args:
        pred, true: binary masks of the same shape.
        spacing: optional pixel size per axis, e.g. (sy, sx); distances are in pixels when None.

    Returns:
        HD95, 0.0 when both masks are empty, NaN when exactly one is.
    """
    a, b = _pair(pred, true)
    _spacing(spacing, a.ndim)
    has_a, has_b = bool(a.any()), bool(b.any())
    if not has_a and not has_b:
        return 0.0
    if has_a != has_b:
        return math.nan
    d_ab, d_ba = surface_distances(a, b, spacing)
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


_FUNCTIONS = {"dice": dice, "iou": iou, "recall": recall, "accuracy": accuracy}


class SegmentationMetrics:
    """Accumulates per-image, per-class metrics over batches and averages them.

    For K = 1 the single channel is the foreground class; for K > 1 channel 0 is the background and is skipped, so the
    classes evaluated are channels 1..K-1. Each metric is first averaged over images per class (HD95 over the images
    where it is defined), then over classes (HD95 over the classes where it is defined).

    Args:
        num_classes: K, the number of mask channels.
        class_names: names of the channels: K names (background first when K > 1), or K - 1 foreground names when
            K > 1. Default: "class1".."class{K-1}", or "foreground" for K = 1.
        spacing: pixel size per spatial axis for HD95 (None: pixels).
    """

    def __init__(
        self, num_classes: int, class_names: Sequence[str] | None = None, spacing: Sequence[float] | None = None
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.channels = [0] if num_classes == 1 else list(range(1, num_classes))
        if class_names is None:
            names = ["foreground"] if num_classes == 1 else [f"class{c}" for c in self.channels]
        else:
            names = [str(n) for n in class_names]
            if num_classes > 1 and len(names) == num_classes:
                names = names[1:]
            if len(names) != len(self.channels):
                expected = "1" if num_classes == 1 else f"{num_classes} or {num_classes - 1}"
                raise ValueError(f"class_names must hold {expected} names, got {len(names)}")
        self.class_names = names
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.reset()

    def reset(self) -> None:
        """Forgets every accumulated image."""
        self._values: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_NAMES}

    @property
    def num_images(self) -> int:
        """Number of images accumulated so far."""
        return sum(len(v) for v in self._values["dice"])

    def update(self, pred_mask: ArrayLike, true_mask: ArrayLike) -> None:
        """Adds a batch.

        Args:
            pred_mask: predicted one-hot / binary masks (B, K, *spatial) (bool or {0, 1}; numpy or torch, any device).
            true_mask: ground-truth masks of the same shape.
        """
        pred, true = _pair(pred_mask, true_mask)
        if pred.ndim < 3 or pred.shape[1] != self.num_classes:
            raise ValueError(
                f"masks must be (B, K, *spatial) with K = {self.num_classes}, got shape {tuple(pred.shape)}"
            )
        if self.spacing is not None:
            _spacing(self.spacing, pred.ndim - 2)
        batch = {name: np.empty((pred.shape[0], len(self.channels))) for name in METRIC_NAMES}
        for b in range(pred.shape[0]):
            for j, c in enumerate(self.channels):
                p, t = pred[b, c], true[b, c]
                for name, fn in _FUNCTIONS.items():
                    batch[name][b, j] = fn(p, t)
                batch["hd95"][b, j] = hd95(p, t, self.spacing)
        for name in METRIC_NAMES:
            self._values[name].append(batch[name])

    def per_image(self) -> dict[str, np.ndarray]:
        """Every accumulated value: metric name -> float64 (N images, classes) (HD95 NaN where undefined)."""
        columns = len(self.channels)
        return {name: np.concatenate(v) if v else np.empty((0, columns)) for name, v in self._values.items()}

    def compute(self) -> dict[str, Any]:
        """Averages the accumulated values.

        Returns:
            {"dice", "iou", "recall", "accuracy", "hd95": mean over classes (floats; "hd95" NaN when undefined
            everywhere), "hd95_nan_ratio": fraction of (image, class) cases with undefined HD95, "num_images": int,
            "per_class": {class name: {the same six keys}}}.

        Raises:
            RuntimeError: when nothing was accumulated.
        """
        values = self.per_image()
        if values["dice"].shape[0] == 0:
            raise RuntimeError("SegmentationMetrics.compute() called before any update()")
        per_class: dict[str, dict[str, float]] = {}
        for j, name in enumerate(self.class_names):
            entry = {m: float(values[m][:, j].mean()) for m in _FUNCTIONS}
            column = values["hd95"][:, j]
            defined = column[~np.isnan(column)]
            entry["hd95"] = float(defined.mean()) if defined.size else math.nan
            entry["hd95_nan_ratio"] = float(np.isnan(column).mean())
            per_class[name] = entry
        result: dict[str, Any] = {m: float(np.mean([e[m] for e in per_class.values()])) for m in _FUNCTIONS}
        class_hd95 = [e["hd95"] for e in per_class.values() if not math.isnan(e["hd95"])]
        result["hd95"] = float(np.mean(class_hd95)) if class_hd95 else math.nan
        result["hd95_nan_ratio"] = float(np.isnan(values["hd95"]).mean())
        result["num_images"] = int(values["dice"].shape[0])
        result["per_class"] = per_class
        return result


_COLUMNS = (
    ("dice", "Dice (%)", 100.0),
    ("iou", "IoU (%)", 100.0),
    ("recall", "Recall (%)", 100.0),
    ("accuracy", "Accuracy (%)", 100.0),
    ("hd95", "HD95", 1.0),
    ("hd95_nan_ratio", "HD95 NaN ratio (%)", 100.0),
)


def format_report(results: Mapping[str, Any], title: str | None = None) -> str:
    """Formats the dict of `SegmentationMetrics.compute()` as a Markdown table.

    One row per class (when there is more than one) and a "mean" row; ratios in percent with two decimals, HD95 with
    two decimals, "n/a" for NaN. Columns missing from `results` are left out.

    Args:
        results: the computed metrics.
        title: optional line printed above the table.

    Returns:
        The Markdown text (ends with a newline).
    """
    columns = [c for c in _COLUMNS if c[0] in results]
    if not columns:
        raise ValueError(f"results hold none of the metrics {', '.join(c[0] for c in _COLUMNS)}")

    def cell(value: Any, factor: float) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return f"{float(value) * factor:.2f}"

    rows = []
    per_class = results.get("per_class") or {}
    if len(per_class) > 1:
        rows += [(name, entry) for name, entry in per_class.items()]
    label = "mean" if len(per_class) > 1 else next(iter(per_class), "mean")
    rows.append((label, results))
    lines = []
    if title:
        lines += [title, ""]
    lines.append("| class | " + " | ".join(header for _, header, _ in columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for name, entry in rows:
        lines.append(f"| {name} | " + " | ".join(cell(entry.get(key), f) for key, _, f in columns) + " |")
    if "num_images" in results:
        lines += ["", f"{results['num_images']} images."]
    return "\n".join(lines) + "\n"
