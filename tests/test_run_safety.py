"""Issue 13: no lost runs, no silent wrong inputs, one-line CLI errors (training, segmentation, readers, CLI)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hidiff import cli, inference
from hidiff.checkpoint import load_checkpoint, save_checkpoint
from hidiff.config import TrainingConfig
from hidiff.data import KvasirSEG
from hidiff.data.base import read_image as read_data_image
from hidiff.data.base import to_binary
from hidiff.data.transforms import to_image_tensor
from hidiff.models import RefineSettings
from hidiff.factory import load_model
from hidiff.inference import read_image, segment_files
from hidiff.training import run_training

TINY = {
    "data": {"name": "synthetic", "image_size": 32, "batch_size": 2, "num_workers": 0, "kwargs": {"length": 4}},
    "model": {"segmentor_kwargs": {"base_channels": 4}, "refiner_channels": 32},
    "diffusion": {"num_steps": 4},
    "train": {"pretrain_iterations": 1, "alternate_iterations": 1, "eval_interval": 0, "checkpoint_interval": 0},
}


def _config(output_dir, **model) -> TrainingConfig:
    data = {**TINY, "output_dir": str(output_dir)}
    data["model"] = {**TINY["model"], **model}
    return TrainingConfig.from_dict(data)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run."""
    out = tmp_path_factory.mktemp("safety") / "run"
    run_training(_config(out), device="cpu")
    return out


# --- 1. training into an existing run ---------------------------------------------------------


def test_train_refuses_an_existing_run_without_resume_or_overwrite(run_dir):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(_config(run_dir), device="cpu")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_train_overwrite_replaces_the_run(tmp_path):
    out = tmp_path / "run"
    run_training(_config(out), device="cpu")
    (out / "best.pt").write_bytes(b"stale")  # a file the new run would not rewrite
    run_training(_config(out), device="cpu", overwrite=True)
    assert (out / "latest.pt").is_file()
    assert (out / "best.pt").read_bytes() != b"stale"


def test_cli_train_into_an_existing_run_is_one_line_error(run_dir, tmp_path, caplog):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**TINY, "output_dir": str(run_dir)}))
    with caplog.at_level(logging.ERROR):
        assert cli.main(["train", "--config", str(config), "--device", "cpu"]) == 2
    assert "--overwrite" in caplog.text and "Traceback" not in caplog.text


# --- 3. a failed resume writes nothing ---------------------------------------------------------


def test_failed_resume_leaves_the_run_untouched(run_dir):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    wider = _config(run_dir, refiner_channels=64)  # weights of another shape
    with pytest.raises(ValueError, match="do not fit"):
        run_training(wider, resume=run_dir / "latest.pt", device="cpu")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


# --- 4. stale temporaries of killed saves ------------------------------------------------------


def test_stale_checkpoint_temporaries_are_removed_on_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".latest.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = out / "notes.tmp"
    other.write_text("keep")
    run_training(_config(out), device="cpu")
    assert not stale.exists()
    assert other.exists()
    save_checkpoint(out / "x.pt", {"a": torch.zeros(1)})
    assert load_checkpoint(out / "x.pt")["a"].shape == (1,)


# --- 2. output names never collide -------------------------------------------------------------


def test_output_names_are_distinct(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.jpg").touch()
    (tmp_path / "a" / "same.png").touch()
    (tmp_path / "a" / "other.jpg").touch()
    paths = [tmp_path / "a" / "same.jpg", tmp_path / "b" / "same.jpg", tmp_path / "a" / "other.jpg"]
    assert inference.output_names(paths) == ["a__same", "b__same", "other"]
    same_stem = [tmp_path / "a" / "same.jpg", tmp_path / "a" / "same.png"]
    assert inference.output_names(same_stem) == ["same.jpg", "same.png"]
    with pytest.raises(ValueError, match="twice"):
        inference.output_names([tmp_path / "a" / "same.jpg", tmp_path / "a" / ".." / "a" / "same.jpg"])


def test_segment_keeps_both_images_with_the_same_name(run_dir, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "same.png")
        Image.fromarray(rng.integers(0, 255, (20, 30 if folder == "a" else 40, 3), dtype=np.uint8)).save(paths[-1])
    model, _ = load_model(run_dir / "latest.pt")
    written = segment_files(model, paths, tmp_path / "out", 64, RefineSettings(steps=1))
    assert len(set(written)) == 2
    assert [np.asarray(Image.open(p)).shape for p in written] == [(20, 30), (20, 40)]


# --- 10. non-positive image sizes ---------------------------------------------------------------


def test_segment_rejects_non_positive_image_size(run_dir, tmp_path, caplog):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    model, _ = load_model(run_dir / "latest.pt")
    with pytest.raises(ValueError, match="image_size must be a positive int, got 0"):
        segment_files(model, [image], tmp_path / "out", 0, RefineSettings(steps=1))
    for size in ("0", "-3"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["segment", str(image), "--checkpoint", str(run_dir / "latest.pt"), "--image-size", size])
        assert exit_info.value.code == 2
    assert not (tmp_path / "masks").exists()


# --- 7. 16-bit images ---------------------------------------------------------------------------


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    expected = torch.from_numpy(values.astype(np.float32) / 65535.0)
    for channels in (1, 3):
        image = read_image(path, channels)
        assert image.shape == (channels, 64, 64)
        torch.testing.assert_close(image, expected.expand(channels, -1, -1))
    rgb = read_data_image(path, "RGB")
    assert rgb.dtype == np.uint16
    torch.testing.assert_close(to_image_tensor(rgb), expected.expand(3, -1, -1))
    mask = to_binary(read_data_image(path, "L"), path)
    assert np.array_equal(mask, (values > 127 * 257).astype(np.int64))


# --- 9. upper-case extensions --------------------------------------------------------------------


def test_kvasir_reads_upper_case_extensions(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        suffix = ".JPG" if i % 3 == 0 else ".jpg"
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / "images" / f"id{i}{suffix}")
        Image.fromarray(np.full((12, 12), 255, np.uint8)).save(root / "masks" / f"id{i}{suffix}", format="JPEG")
    dataset = KvasirSEG(root, "all", image_size=8)
    assert dataset.ids == [f"id{i}" for i in range(10)]
    assert dataset[0]["image"].shape == (3, 8, 8)
    splits = [KvasirSEG(root, split, image_size=8).ids for split in ("train", "val", "test")]
    assert sorted(sum(splits, [])) == dataset.ids


# --- 13. CLI errors --------------------------------------------------------------------------------


def _error_line(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


def test_cli_checkpoint_that_does_not_match_its_config(run_dir, tmp_path, caplog):
    state = load_checkpoint(run_dir / "latest.pt")
    state["config"]["model"]["refiner_channels"] = 64
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, state)
    assert cli.main(["evaluate", "--checkpoint", str(bad)]) == 2
    assert "do not match" in _error_line(caplog)


def test_cli_validates_paths_before_work(run_dir, tmp_path, caplog, monkeypatch):
    import hidiff.factory

    def fail(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(hidiff.factory, "load_model", fail)
    checkpoint = str(run_dir / "latest.pt")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["evaluate", "--checkpoint", checkpoint, "--output", str(tmp_path)], "is a directory"),
        (["evaluate", "--checkpoint", str(run_dir)], "is a directory"),
        (["segment", str(image), "--checkpoint", checkpoint, "--output-dir", str(a_file)], "is a file"),
        (["segment", str(tmp_path), "--checkpoint", checkpoint], "is a directory"),
    ]
    for argv, message in cases:
        caplog.clear()
        assert cli.main(argv) == 2, argv
        assert message in _error_line(caplog), argv
    for argv in (["segment", str(image), "--checkpoint", checkpoint, "--threads", "-1"],):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2


def test_cli_corrupt_image_during_evaluate_is_one_line(run_dir, tmp_path, caplog, monkeypatch):
    import hidiff.evaluation
    from hidiff.data.base import DataFileError

    def corrupt(*args, **kwargs):
        raise DataFileError("cannot read /x/broken.jpg as an image: UnidentifiedImageError: nope")

    monkeypatch.setattr(hidiff.evaluation, "evaluate", corrupt)
    assert cli.main(["evaluate", "--checkpoint", str(run_dir / "latest.pt")]) == 2
    assert "broken.jpg" in _error_line(caplog)
    with pytest.raises(DataFileError):
        cli.main(["--debug", "evaluate", "--checkpoint", str(run_dir / "latest.pt")])
