"""Metrics: overlap scores on hand-made cases, HD95 against a brute-force implementation, accumulator, report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from hidiff.metrics import (
    SegmentationMetrics,
    accuracy,
    border,
    dice,
    format_report,
    hd95,
    iou,
    recall,
    surface_distances,
)


def brute_border(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a face neighbour outside the mask (or outside the image), by explicit neighbour checks."""
    out = np.zeros_like(mask)
    for index in zip(*np.nonzero(mask), strict=True):
        for axis in range(mask.ndim):
            for step in (-1, 1):
                neighbour = list(index)
                neighbour[axis] += step
                if not 0 <= neighbour[axis] < mask.shape[axis] or not mask[tuple(neighbour)]:
                    out[index] = True
    return out


def brute_hd95(a: np.ndarray, b: np.ndarray, spacing=None) -> float:
    """95th percentile of all border-to-nearest-border distances in both directions, by pairwise distances."""
    scale = np.ones(a.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    pa = np.argwhere(brute_border(a)) * scale
    pb = np.argwhere(brute_border(b)) * scale
    pairwise = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([pairwise.min(1), pairwise.min(0)]), 95))


def random_mask(rng: np.random.Generator, shape, smooth: float = 1.5, level: float = 0.4) -> np.ndarray:
    """Blobby masks with several components, holes and border contact."""
    field = ndimage.gaussian_filter(rng.random(shape), smooth)
    return field > np.quantile(field, 1 - level)


def test_overlap_scores_by_hand():
    pred = np.zeros((4, 5), bool)
    true = np.zeros((4, 5), bool)
    pred[0, :3] = True  # 3 pixels
    true[0, 1:5] = True  # 4 pixels, 2 shared
    assert dice(pred, true) == pytest.approx(4 / 7)
    assert iou(pred, true) == pytest.approx(2 / 5)
    assert recall(pred, true) == pytest.approx(2 / 4)
    assert accuracy(pred, true) == pytest.approx(17 / 20)
    # torch and {0, 1} float inputs give the same values.
    assert dice(torch.from_numpy(pred).float(), torch.from_numpy(true).long()) == pytest.approx(4 / 7)


def test_empty_mask_conventions():
    empty, full = np.zeros((3, 3)), np.ones((3, 3))
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0 and recall(empty, empty) == 1.0
    assert hd95(empty, empty) == 0.0
    assert dice(full, empty) == 0.0 and iou(empty, full) == 0.0 and recall(full, empty) == 1.0
    assert recall(empty, full) == 0.0 and accuracy(empty, full) == 0.0
    assert math.isnan(hd95(full, empty)) and math.isnan(hd95(empty, full))
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(empty, full)


def test_input_validation():
    with pytest.raises(ValueError, match="binary"):
        dice(np.full((2, 2), 0.7), np.ones((2, 2)))
    with pytest.raises(ValueError, match="same shape"):
        iou(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        recall([[1]], np.ones((1, 1)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((2, 2)), np.ones((2, 2)), spacing=(1.0,))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((2, 2)), np.ones((2, 2)), spacing=(1.0, 0.0))


def test_border_matches_definition():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = random_mask(rng, (17, 23))
        assert np.array_equal(border(mask), brute_border(mask))


def test_hd95_known_values():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[2, 3] = True
    b[5, 7] = True
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(6.0, 2.0))
    assert hd95(a, a) == 0.0
    # Two squares, one shifted by 3 columns: every border distance is 0 or 3 (or less along the overlap).
    c = np.zeros((30, 30), bool)
    d = np.zeros((30, 30), bool)
    c[5:15, 5:15] = True
    d[5:15, 8:18] = True
    assert hd95(c, d) == pytest.approx(3.0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spacing", [None, (1.0, 1.0), (0.7, 1.9)])
def test_hd95_matches_brute_force(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(8, 30)), int(rng.integers(8, 30)))
    a = random_mask(rng, shape, level=rng.uniform(0.1, 0.5))
    b = random_mask(rng, shape, level=rng.uniform(0.1, 0.5))
    assert hd95(a, b, spacing) == pytest.approx(brute_hd95(a, b, spacing), rel=1e-9, abs=1e-9)
    # Small masks far from each other exercise the bounding-box crop of the distance transforms.
    small = np.zeros((40, 40), bool)
    small[1:3, 2:5] = True
    far = np.zeros((40, 40), bool)
    far[30:36, 25:27] = True
    assert hd95(small, far, spacing) == pytest.approx(brute_hd95(small, far, spacing))


def test_hd95_3d_matches_brute_force():
    rng = np.random.default_rng(7)
    a = random_mask(rng, (6, 9, 10), smooth=1.0)
    b = random_mask(rng, (6, 9, 10), smooth=1.0)
    assert hd95(a, b, (2.5, 0.8, 0.8)) == pytest.approx(brute_hd95(a, b, (2.5, 0.8, 0.8)))


def test_accumulator_single_class():
    metrics = SegmentationMetrics(1, class_names=["polyp"])
    rng = np.random.default_rng(1)
    preds = [random_mask(rng, (16, 16)) for _ in range(3)]
    trues = [random_mask(rng, (16, 16)) for _ in range(3)]
    trues[2][:] = False  # prediction but no object: HD95 undefined for that image
    metrics.update(
        torch.from_numpy(np.stack(preds[:2])[:, None]).float(), torch.from_numpy(np.stack(trues[:2])[:, None])
    )
    metrics.update(preds[2][None, None], trues[2][None, None])
    result = metrics.compute()
    assert result["num_images"] == 3 and list(result["per_class"]) == ["polyp"]
    assert result["dice"] == pytest.approx(np.mean([dice(p, t) for p, t in zip(preds, trues, strict=True)]))
    assert result["iou"] == pytest.approx(np.mean([iou(p, t) for p, t in zip(preds, trues, strict=True)]))
    assert result["accuracy"] == pytest.approx(np.mean([accuracy(p, t) for p, t in zip(preds, trues, strict=True)]))
    assert result["recall"] == pytest.approx(np.mean([recall(p, t) for p, t in zip(preds, trues, strict=True)]))
    assert result["hd95"] == pytest.approx(np.mean([hd95(p, t) for p, t in zip(preds[:2], trues[:2], strict=True)]))
    assert result["hd95_nan_ratio"] == pytest.approx(1 / 3)
    assert result["per_class"]["polyp"]["dice"] == result["dice"]
    assert metrics.per_image()["dice"].shape == (3, 1)
    metrics.reset()
    assert metrics.num_images == 0
    with pytest.raises(RuntimeError, match="before any update"):
        metrics.compute()


def test_accumulator_multi_class_skips_background():
    labels_pred = torch.tensor([[[0, 1, 1, 2], [0, 1, 1, 2], [0, 0, 0, 0], [0, 0, 0, 0]]])
    labels_true = torch.tensor([[[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    pred = torch.nn.functional.one_hot(labels_pred, 3).permute(0, 3, 1, 2)
    true = torch.nn.functional.one_hot(labels_true, 3).permute(0, 3, 1, 2)
    metrics = SegmentationMetrics(3, class_names=["background", "liver", "spleen"], spacing=(1.0, 2.0))
    metrics.update(pred, true)
    result = metrics.compute()
    assert list(result["per_class"]) == ["liver", "spleen"]
    liver, spleen = result["per_class"]["liver"], result["per_class"]["spleen"]
    assert liver["dice"] == 1.0 and liver["hd95"] == 0.0 and liver["hd95_nan_ratio"] == 0.0
    assert spleen["dice"] == 0.0 and math.isnan(spleen["hd95"]) and spleen["hd95_nan_ratio"] == 1.0
    assert spleen["accuracy"] == pytest.approx(14 / 16) and spleen["recall"] == 1.0
    assert result["dice"] == pytest.approx(0.5)
    assert result["hd95"] == 0.0  # mean over the classes where HD95 is defined
    assert result["hd95_nan_ratio"] == pytest.approx(0.5)
    assert SegmentationMetrics(3, class_names=["liver", "spleen"]).class_names == ["liver", "spleen"]
    assert SegmentationMetrics(3).class_names == ["class1", "class2"]
    with pytest.raises(ValueError, match="class_names must hold 3 or 2 names"):
        SegmentationMetrics(3, class_names=["a"])
    with pytest.raises(ValueError, match="K = 3"):
        metrics.update(pred[:, :2], true[:, :2])
    with pytest.raises(ValueError, match="spacing"):
        SegmentationMetrics(3, spacing=(1.0,)).update(pred, true)


def test_format_report():
    metrics = SegmentationMetrics(3, class_names=["background", "liver", "spleen"])
    labels = torch.tensor([[[0, 1], [2, 2]]])
    onehot = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2)
    wrong = torch.nn.functional.one_hot(torch.zeros_like(labels), 3).permute(0, 3, 1, 2)
    metrics.update(onehot, onehot)
    metrics.update(wrong, onehot)
    report = format_report(metrics.compute(), title="Synapse")
    lines = report.splitlines()
    assert lines[0] == "Synapse"
    assert lines[2].startswith("| class | Dice (%) | IoU (%) |") and lines[3].startswith("|---|")
    assert lines[4].startswith("| liver | 50.00 | 50.00 |") and "| 50.00 |" in lines[4]
    assert lines[6].startswith("| mean | 50.00 |")
    assert report.endswith("2 images.\n")
    single = SegmentationMetrics(1, class_names=["polyp"])
    single.update(np.zeros((1, 1, 3, 3)), np.ones((1, 1, 3, 3)))
    table = format_report(single.compute())
    assert "| polyp | 0.00 |" in table and "n/a" in table and "mean" not in table
    with pytest.raises(ValueError, match="none of the metrics"):
        format_report({"loss": 1.0})
