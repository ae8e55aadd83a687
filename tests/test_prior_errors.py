"""Error statistics of the segmentor's prior: false-positive blobs, missed components, boundary errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hidiff.data import build_dataset
from hidiff.diffusion import BernoulliDiffusion
from hidiff.models import BBDM, HiDiff, UNet
from hidiff.prior_errors import _image_errors, compare_splits, format_prior_errors, prior_error_statistics


def test_error_kinds_of_one_image():
    true = np.zeros((20, 20), bool)
    true[2:8, 2:8] = True  # found, with one column too many predicted (a boundary error)
    true[14:17, 14:17] = True  # missed
    pred = np.zeros((20, 20), bool)
    pred[2:8, 2:9] = True
    pred[12:14, 2:4] = True  # a false-positive blob, far from every true edge
    errors = _image_errors(pred, true, boundary_width=2)
    assert errors["false_positive_blobs"] == 1 and errors["missed_components"] == 1
    assert errors["false_positive_blob_pixels"] == pytest.approx(4 / 400)
    wrong = 6 + 4 + 9  # the extra column, the blob, the missed square
    assert errors["error_pixels"] == pytest.approx(wrong / 400)
    # Near a true edge: the extra column and the missed square's pixels (all within 2 px of its own edge).
    assert errors["boundary_error_share"] == pytest.approx((6 + 9) / wrong)
    assert errors["dice"] == pytest.approx(2 * 36 / (46 + 45))
    perfect = _image_errors(true, true, 2)
    assert perfect["dice"] == 1 and perfect["error_pixels"] == 0 and np.isnan(perfect["boundary_error_share"])


def test_statistics_of_a_split_and_the_table():
    torch.manual_seed(0)
    segmentor = UNet(3, 1, base_channels=4)
    refiner = BBDM(3, 1, model_channels=32, cond_channels=segmentor.feature_channels)
    model = HiDiff(segmentor, refiner, BernoulliDiffusion(num_steps=3))
    val = build_dataset("synthetic", None, "val", image_size=32, length=5)
    result = prior_error_statistics(model, val, split="val", max_images=3, batch_size=2)
    assert result.num_images == 3 and 0 <= result.dice <= 1 and result.bce > 0
    rows = compare_splits(model, {"train": build_dataset("synthetic", None, "train", image_size=32, length=4), "val": val})
    table = format_prior_errors(rows)
    assert "| train | 4 |" in table and "| val | 5 |" in table
    with pytest.raises(ValueError, match="max_images"):
        prior_error_statistics(model, val, max_images=0)
