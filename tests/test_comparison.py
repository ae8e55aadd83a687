"""Paired comparison of HiDiff and its segmentor: bootstrap intervals, per-seed runs, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_diagnostics import _model

from hidiff import cli
from hidiff.comparison import bootstrap_interval, compare, format_comparison
from hidiff.data import build_dataset
from hidiff.models import RefineSettings


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    low_s, high_s = bootstrap_interval(small)
    low_l, high_l = bootstrap_interval(large)
    assert low_s < small.mean() < high_s and low_l < large.mean() < high_l
    assert high_l - low_l < high_s - low_s
    assert bootstrap_interval(np.full(5, 0.25)) == (0.25, 0.25)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval(np.array([]))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(small, confidence=1.5)


def test_comparison_pairs_seeds_and_images():
    dataset = build_dataset("synthetic", None, "val", image_size=32, length=8)
    result = compare(_model(), dataset, RefineSettings(samples=32), seeds=[0, 1], batch_size=4, progress=False)
    assert result.num_images == 8 and result.seeds == [0, 1]
    assert len(result.refined_per_seed["dice"]) == 2
    # The gain is the mean over images of the seed-averaged per-image difference.
    assert result.gain["dice"] == pytest.approx(np.mean(result.refined_per_seed["dice"]) - result.segmentor["dice"])
    low, high = result.interval["dice"]
    assert low <= result.gain["dice"] <= high
    assert "paired gain" in format_comparison(result)


def test_evaluate_command_with_seeds_writes_the_comparison(tmp_path):
    import yaml
    from test_hidiff_cli import TINY_CONFIG  # a tiny run trained by the CLI

    config = dict(TINY_CONFIG, output_dir=str(tmp_path / "run"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["train", "--config", str(tmp_path / "c.yaml"), "--device", "cpu"]) == 0
    output = tmp_path / "cmp.json"
    code = cli.main(
        [
            "evaluate",
            "--checkpoint",
            str(tmp_path / "run" / "latest.pt"),
            "--split",
            "val",
            "--seeds",
            "0",
            "1",
            "--samples",
            "2",
            "--output",
            str(output),
        ]
    )
    assert code == 0
    data = json.loads(output.read_text())
    assert data["seeds"] == [0, 1] and set(data["gain"]) == {"dice", "iou", "hd95"}
