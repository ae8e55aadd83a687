"""Second reliability probe: runs and inputs are never lost, bad numbers and paths fail before any work."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import tiny_config

from hidiff import cli
from hidiff.checkpoint import save_checkpoint
from hidiff.comparison import compare
from hidiff.config import TrainingConfig
from hidiff.inference import segment_files
from hidiff.models import RefineSettings
from hidiff.training import run_training

TINY = tiny_config(train={"select_sampling": False})


def _config(output_dir, **data) -> TrainingConfig:
    return TrainingConfig.from_dict({**TINY, "data": {**TINY["data"], **data}, "output_dir": str(output_dir)})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe2") / "run"
    run_training(_config(out), device="cpu")
    return out


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(run_dir, tmp_path):
    before = _files(run_dir)
    bad = _config(run_dir, name="kvasir", root=str(tmp_path / "missing"), kwargs={})
    with pytest.raises(FileNotFoundError):
        run_training(bad, device="cpu", overwrite=True)
    assert _files(run_dir) == before


def test_resume_into_a_folder_holding_another_run_is_refused(run_dir, tmp_path):
    other = tmp_path / "other"
    run_training(_config(other), device="cpu")
    before = _files(other)
    with pytest.raises(FileExistsError, match="holds another run"):
        run_training(_config(other), resume=run_dir / "latest.pt", device="cpu")
    assert _files(other) == before


def test_segment_never_writes_over_an_input(run_dir, tmp_path):
    from hidiff.factory import load_model

    model, _ = load_model(run_dir / "latest.pt")
    image = tmp_path / "case1.jpg"
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(image)
    truth = tmp_path / "case1_mask.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(truth)
    before = truth.read_bytes()
    with pytest.raises(ValueError, match="would replace the input .*case1_mask.png"):
        segment_files(model, [image, truth], tmp_path, 32, RefineSettings(steps=1))
    assert truth.read_bytes() == before


def test_segment_checks_every_input_before_writing(run_dir, tmp_path):
    from hidiff.factory import load_model

    model, _ = load_model(run_dir / "latest.pt")
    good = tmp_path / "ok.png"
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        segment_files(model, [good, corrupt], tmp_path / "out", 32, RefineSettings(steps=1))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_config_errors(value):
    import yaml

    with pytest.raises(ValueError, match="optim.lr must be a finite number"):
        TrainingConfig.from_dict({"optim": {"lr": yaml.safe_load(value)}})


def test_repeated_seeds_are_refused(run_dir):
    from hidiff.factory import load_model

    model, _ = load_model(run_dir / "latest.pt")
    with pytest.raises(ValueError, match="seeds must be distinct"):
        compare(model, [], RefineSettings(steps=1), seeds=[0, 0], progress=False)


def test_checkpoints_follow_the_umask_and_name_a_file_in_the_way(tmp_path):
    previous = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "a.pt", {"x": torch.zeros(1)})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    (tmp_path / "file.pt").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="file.pt is a file"):
        save_checkpoint(tmp_path / "file.pt" / "sub.pt", {})


def test_diagnose_rejects_zero_images_and_a_file_as_output_dir(run_dir, tmp_path, caplog):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["diagnose", "--checkpoint", "x.pt", "--max-images", "0"])
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    code = cli.main(["diagnose", "--checkpoint", str(run_dir / "latest.pt"), "--output-dir", str(blocker)])
    assert code == 2 and "--output-dir" in caplog.text


def test_binary_layers_and_models_pickle_after_a_packed_forward():
    import io
    import pickle

    from hidiff.diffusion import BernoulliDiffusion
    from hidiff.models import BBDM, HiDiff, UNet
    from hidiff_kernels.nn import BinaryConv2d

    layer = BinaryConv2d(8, 8, 3, padding=1).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        expected = layer(x)
        assert torch.equal(pickle.loads(pickle.dumps(layer))(x), expected)
    torch.manual_seed(0)
    segmentor = UNet(3, 1, base_channels=4)
    model = HiDiff(segmentor, BBDM(3, 1, 32, cond_channels=segmentor.feature_channels), BernoulliDiffusion(3)).eval()
    image = torch.rand(1, 3, 64, 64)
    model.refine(image, frozen=False)
    model.refine(image)
    torch.save(model, io.BytesIO())
    assert torch.equal(pickle.loads(pickle.dumps(model)).refine(image), model.refine(image))


def test_binarize_validates_every_layer_before_swapping_any():
    from torch import nn

    from hidiff_kernels.nn import binarize

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 2, padding="same"), nn.Conv2d(8, 1, 1)
    )
    with pytest.raises(ValueError, match="layer '2' cannot be binarised \\(model left unchanged\\)"):
        binarize(model)
    assert all(type(layer) is nn.Conv2d for layer in model)


def _refiner_model():
    from hidiff.diffusion import BernoulliDiffusion
    from hidiff.models import BBDM, HiDiff, UNet

    torch.manual_seed(0)
    diffusion = BernoulliDiffusion(num_steps=4)
    segmentor = UNet(3, 1, base_channels=4)
    refiner = BBDM(3, 1, 32, cond_channels=segmentor.feature_channels, prior_flip_rates=diffusion.flip_scales)
    torch.nn.init.normal_(refiner.head.conv.weight, std=0.5)
    return HiDiff(segmentor, refiner, diffusion).eval()


def _binary_conv(refiner):
    from hidiff_kernels.nn import BinaryConv2d

    return next(m for m in refiner.modules() if isinstance(m, BinaryConv2d))


def _batch_norm(refiner):
    return next(m for m in refiner.modules() if isinstance(m, torch.nn.BatchNorm2d))


WRITES = {
    "data.copy_ + clear_packed_cache": lambda r: (
        _binary_conv(r).weight.data.copy_(torch.randn_like(_binary_conv(r).weight)),
        _binary_conv(r).clear_packed_cache(),
    ),
    "data.mul_": lambda r: r.input_conv.weight.data.mul_(3.0),
    "float layer data.zero_": lambda r: r.head.conv.weight.data.zero_(),
    "numpy view": lambda r: r.input_conv.weight.data.numpy().__imul__(-1.0),
    "data = twice": lambda r: [setattr(r.input_conv.weight, "data", r.input_conv.weight.data * 2) for _ in range(2)],
    "prior_flip_rates": lambda r: setattr(r, "prior_flip_rates", tuple(0.5 * v for v in r.prior_flip_rates)),
    "BatchNorm eps": lambda r: setattr(_batch_norm(r), "eps", 0.5),
    "a submodule in train mode": lambda r: _batch_norm(r).train(),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_the_cached_frozen_refiner_sees_every_change(write):
    model = _refiner_model()
    x = torch.rand(2, 3, 64, 64)
    before = model.refine(x, steps=2, samples=2)  # freezes and caches
    with torch.no_grad():
        WRITES[write](model.refiner)
    frozen = model.refine(x, steps=2, samples=2)
    layer_by_layer = model.refine(x, steps=2, samples=2, frozen=False)
    assert (frozen - layer_by_layer).abs().max() < 1e-4
    assert not torch.equal(frozen, before) or write == "a submodule in train mode"


def test_a_model_loaded_under_inference_mode_refreezes_after_a_write():
    model = _refiner_model()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        state = {k: v.clone() for k, v in model.refiner.state_dict().items()}
        model.refiner.load_state_dict(state)
        model.refine(x, steps=2)
        model.refiner.input_conv.weight.mul_(2.0)
        frozen = model.refine(x, steps=2)
        layer_by_layer = model.refine(x, steps=2, frozen=False)
    assert (frozen - layer_by_layer).abs().max() < 1e-4


def test_save_model_refuses_a_config_that_builds_another_model(tmp_path):
    from hidiff.diffusion import BernoulliDiffusion
    from hidiff.factory import build_model, load_model, save_model
    from hidiff.models import BBDM, HiDiff

    config = TrainingConfig.from_dict({**TINY, "output_dir": str(tmp_path)})
    model = build_model(config, 3, 1)
    # The same architecture without the residual output: the config would reload it as the residual form.
    refiner = BBDM(3, 1, 32, cond_channels=model.segmentor.feature_channels, prior_flip_rates=None)
    direct = HiDiff(model.segmentor, refiner, BernoulliDiffusion(num_steps=4))
    with pytest.raises(ValueError, match="refiner prior_flip_rates: model None"):
        save_model(tmp_path / "direct.pt", direct, config)
    assert not (tmp_path / "direct.pt").exists()
    save_model(tmp_path / "model.pt", model, config)
    assert load_model(tmp_path / "model.pt")[0].refiner.config == model.refiner.config


@pytest.mark.parametrize("shape", [(16,), (9,), (2, 9), (2, 16)])
@pytest.mark.parametrize("training", [False, True])
def test_grouped_binary_conv_rejects_thresholds_of_the_wrong_length(shape, training):
    from hidiff_kernels.nn import BinaryConv2d

    layer = BinaryConv2d(8, 8, 3, padding=1, groups=2).train(training)
    with torch.no_grad(), pytest.raises(ValueError, match=r"threshold must have shape \(8,\) or \(2, 8\)"):
        layer(torch.randn(2, 8, 5, 5), torch.zeros(shape))


CORRUPTIONS = {
    "ema without shadow": lambda s: s["ema"].pop("shadow"),
    "ema of a wrong type": lambda s: s.__setitem__("ema", [1, 2]),
    "refiner of a wrong type": lambda s: s.__setitem__("refiner", "weights"),
    "a weight that is not a tensor": lambda s: s["segmentor"].__setitem__(next(iter(s["segmentor"])), 3.0),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_checkpoint_entries_name_the_file(run_dir, tmp_path, corruption):
    from hidiff.checkpoint import load_checkpoint
    from hidiff.factory import load_model

    state = load_checkpoint(run_dir / "latest.pt")
    CORRUPTIONS[corruption](state)
    path = save_checkpoint(tmp_path / "damaged.pt", state)
    with pytest.raises(ValueError, match="damaged.pt"):
        load_model(path)
    with pytest.raises(ValueError, match="damaged.pt"):
        run_training(_config(tmp_path / "resumed"), resume=path, device="cpu")


def test_sizes_that_are_not_multiples_of_32_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="data.image_size must be null or a positive multiple of 32"):
        TrainingConfig.from_dict({"data": {"image_size": 48}})
    parser = cli.build_parser()
    for argv in (
        ["segment", "x.png", "--checkpoint", "c.pt", "--image-size", "50"],
        ["evaluate", "--checkpoint", "c.pt", "--window", "1000"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    code = cli.main(["train", "--set", "data.image_size=48", "--set", f"output_dir={tmp_path / 'run'}"])
    assert code == 2 and not (tmp_path / "run").exists()


def test_a_model_at_32x32_segments_a_single_image():
    from hidiff.diffusion import BernoulliDiffusion
    from hidiff.models import BBDM, HiDiff, UNet
    from hidiff.models.layers import GroupNorm

    torch.manual_seed(0)
    segmentor = UNet(3, 1, base_channels=4)
    model = HiDiff(segmentor, BBDM(3, 1, 32, cond_channels=segmentor.feature_channels), BernoulliDiffusion(3)).eval()
    pair = torch.rand(2, 3, 32, 32)
    # One image gives what it gives inside a batch (a single-value group normalises to its bias).
    for frozen in (True, False):
        alone = model.refine(pair[:1], steps=2, frozen=frozen)
        together = model.refine(pair, steps=2, frozen=frozen)
        assert (alone - together[:1]).abs().max() < 1e-5
    assert model.segment(pair[:1], steps=1).shape == (1, 1, 32, 32)
    norm = GroupNorm(4, 4)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(1, 4, 1, 1)
    assert torch.equal(norm(x), norm.bias.view(1, 4, 1, 1).expand_as(x))
    assert torch.allclose(norm(torch.cat([x, x]))[:1], norm(x))


def test_float_tiff_images_keep_their_values_or_are_refused(tmp_path):
    from hidiff.inference import read_image

    values = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    path = tmp_path / "float.tif"
    Image.fromarray(values, mode="F").save(path)
    image = read_image(path, channels=3)
    assert image.shape == (3, 20, 30)
    assert torch.allclose(image[0], torch.from_numpy(values)) and torch.equal(image[0], image[2])
    Image.fromarray(values * 300, mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(ValueError, match=r"hdr.tif.*values in \[0, 300\].*expected finite values in \[0, 1\]"):
        read_image(tmp_path / "hdr.tif", channels=1)


@pytest.mark.parametrize("argument", ["y_t", "eps_hat", "prior"])
@pytest.mark.parametrize("implementation", ["op", "reference"])
def test_bernoulli_step_refuses_nan_like_torch_bernoulli(argument, implementation):
    import hidiff_kernels
    from hidiff_kernels import reference

    inputs = {"y_t": torch.ones(2, 1, 4, 4), "eps_hat": torch.full((2, 1, 4, 4), 0.1), "prior": torch.rand(2, 1, 4, 4)}
    inputs[argument][0, 0, 1, 2] = float("nan")
    step = hidiff_kernels.bernoulli_step if implementation == "op" else reference.bernoulli_step
    with pytest.raises(ValueError, match=f"{argument} holds NaN"):
        step(inputs["y_t"], inputs["eps_hat"], inputs["prior"], torch.full((2, 2), 0.5), "ddim", 0, 0)


MEMORY_PROBE = """
import os, torch, hidiff_kernels as hk
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
torch.set_num_threads(1)
w = hk.pack_weight(torch.randn(32, 32, 1, 1))
base = peak = rss()
for width in range(256, 352):  # outputs of 8 to 11 MiB, each width once
    y = hk.binary_conv2d(hk.binarize_pack(torch.randn(1, 32, 256, width), None), w, 32)
    del y
    peak = max(peak, rss())
hk.clear_output_cache()
print(peak - base, rss() - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to read the resident set size")
def test_output_cache_bounds_the_footprint_and_returns_memory_on_clear():
    import subprocess
    import sys

    import hidiff_kernels

    if not hidiff_kernels.COMPILED:
        pytest.skip("the output cache belongs to the compiled extension")
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True)
    growth, after_clear = (float(v) for v in result.stdout.split())
    # At most the 512 MiB cache plus a few live outputs and the inputs; nearly everything back after clear.
    assert growth < 512 + 128, growth
    assert after_clear < 64, after_clear


def test_training_at_batch_1_on_1x1_deepest_features_is_refused_when_configured():
    with pytest.raises(ValueError, match="data.batch_size 1 at data.image_size 32"):
        TrainingConfig.from_dict({"data": {"batch_size": 1, "image_size": 32}})
    assert TrainingConfig.from_dict({"data": {"batch_size": 1, "image_size": 64}}).data.batch_size == 1
