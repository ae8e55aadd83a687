"""``hidiff flops`` (hidiff.profiling): Table XI rows, their arithmetic against independent counts, timing."""

from __future__ import annotations

import contextlib
import csv
import io

import pytest
import torch

from hidiff import cli, profiling
from hidiff.models import BBDM
from hidiff.models.baselines import BASELINES, MERIT, PDDDPM
from hidiff.profiling import CSV_COLUMNS, METHOD_NAMES, METHODS, ProfileSettings, profile_methods
from hidiff_kernels.counting import count

SIZE = 64
STEPS = 2
CHANNELS = 3
CLASSES = 1


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread: the machine is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """``hidiff flops`` at 64x64, 2 steps, timed once: (stdout, Markdown text, CSV rows by method name)."""
    root = tmp_path_factory.mktemp("flops")
    markdown, csv_path = root / "table.md", root / "table.csv"
    stdout = io.StringIO()
    argv = ["flops", "--image-size", str(SIZE), "--steps", str(STEPS), "--threads", "1"]
    argv += ["--time", "--repeats", "1", "--markdown", str(markdown), "--csv", str(csv_path)]
    with contextlib.redirect_stdout(stdout):
        assert cli.main(argv) == 0
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        rows = {row["method"]: row for row in reader}
    assert tuple(header) == CSV_COLUMNS
    return stdout.getvalue(), markdown.read_text(), rows


def test_help_lists_flops():
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit_info:
        cli.main(["flops", "--help"])
    assert exit_info.value.code == 0
    for option in ("--image-size", "--num-classes", "--steps", "--segmentor", "--image-channels", "--time"):
        assert option in stdout.getvalue()


def test_markdown_and_csv_have_all_six_rows(table):
    stdout, markdown, rows = table
    assert stdout == markdown
    assert list(rows) == [METHOD_NAMES[m] for m in METHODS]
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    for column in ("parts", "FLOPs (×10^10)", "BOPs (×10^10)", "OPs (×10^10)", "storage (MB)", "CPU time (s)"):
        assert f" {column} |" in header
    for method in METHODS:
        assert sum(line.startswith(f"| {METHOD_NAMES[method]} |") for line in lines) == 1
    assert "| 22x |" in markdown and "| 10x |" in markdown and markdown.count("| about 3x |") == 2
    assert rows["PD-DDPM"]["segmentor"] == "MERIT" and rows["BerDiff"]["segmentor"] == ""
    assert all(int(row["steps"]) == (0 if name == "MERIT" else STEPS) for name, row in rows.items())


def _features(channels, size=SIZE):
    return [torch.randn(1, c, size // s, size // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)]


def test_totals_are_segmentor_plus_refiner_times_steps(table):
    _, _, rows = table
    merit = count(MERIT(CHANNELS, CLASSES, SIZE).eval(), BASELINES["merit"].example_inputs(CHANNELS, CLASSES, SIZE))
    denoiser = count(
        PDDDPM(CHANNELS, CLASSES, SIZE).eval(), BASELINES["pd_ddpm"].example_inputs(CHANNELS, CLASSES, SIZE)
    )
    refiner = BBDM(CHANNELS, CLASSES).eval()
    image, prior = torch.randn(1, CHANNELS, SIZE, SIZE), torch.rand(1, CLASSES, SIZE, SIZE)
    binary = count(refiner, (image, prior.round(), prior, torch.tensor([1]), _features(refiner.cond_channels)))

    pd = rows["PD-DDPM"]
    assert int(pd["segmentor_flops"]) == merit.flops
    assert int(pd["refiner_flops_per_step"]) == denoiser.flops
    assert int(pd["total_flops"]) == merit.flops + STEPS * denoiser.flops
    assert float(pd["total_storage_mb"]) == pytest.approx((merit.storage_bytes + denoiser.storage_bytes) / 1e6)
    assert int(rows["MERIT"]["total_flops"]) == merit.flops

    hidiff = rows["HiDiff (binary refiner)"]
    assert int(hidiff["total_flops"]) == merit.flops + STEPS * binary.flops
    assert int(hidiff["total_bops"]) == STEPS * binary.bops
    assert float(hidiff["total_ops"]) == pytest.approx(merit.ops + STEPS * binary.ops)
    assert float(hidiff["refiner_storage_mb"]) == pytest.approx(binary.storage_bits / 8 / 1e6)


def test_binary_refiner_has_bops_and_fewer_ops_than_the_real_one(table):
    _, _, rows = table
    real, binary = rows["HiDiff (real refiner)"], rows["HiDiff (binary refiner)"]
    assert int(binary["total_bops"]) > 0 and int(real["total_bops"]) == 0
    assert float(binary["refiner_ops_per_step"]) < float(real["refiner_ops_per_step"])
    assert float(binary["total_ops"]) < float(real["total_ops"])
    assert float(binary["refiner_storage_mb"]) < float(real["refiner_storage_mb"])
    # Same module tree, same parameter count: only the bits per weight differ.
    assert binary["refiner_params"] == real["refiner_params"]


def test_timing_columns_are_filled(table):
    _, markdown, rows = table
    for row in rows.values():
        assert float(row["time_total_s"]) > 0
        assert row["timed_as"]
    assert float(rows["HiDiff (binary refiner)"]["time_refinement_float_simulation_s"]) > 0
    assert rows["HiDiff (real refiner)"]["time_refinement_float_simulation_s"] == ""
    assert "float simulation" in markdown


def test_each_network_is_counted_once(monkeypatch):
    calls = []

    def counting(model, *args, **kwargs):
        calls.append(type(model).__name__)
        return count(model, *args, **kwargs)

    monkeypatch.setattr(profiling.table, "count", counting)
    steps = 3
    settings = ProfileSettings(image_size=SIZE, steps=steps, segmentor="unet", refiner_channels=32)
    costs = profile_methods(settings, ["hidiff_binary", "hidiff_real"], progress=False)
    assert calls == ["UNet", "BBDM", "BBDM"]
    assert [c.key for c in costs] == ["hidiff_real", "hidiff_binary"]
    for cost in costs:
        assert cost.segmentor_name == "U-Net"
        assert cost.total_flops == cost.segmentor.flops + steps * cost.refiner.flops
        assert cost.refinement_ops == pytest.approx(steps * cost.refiner.ops)
    ratios = profiling.claimed_ratios(costs)
    assert [r.paper for r in ratios] == ["22x", "–", "10x"]
    assert all(r.measured is None for r in ratios)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 48}, "image_size"),
        ({"steps": 0}, "steps"),
        ({"segmentor": "resnet"}, "segmentor"),
        ({"num_classes": True}, "num_classes"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProfileSettings(**kwargs)


def test_bad_profile_arguments_name_the_argument():
    with pytest.raises(ValueError, match="methods"):
        profile_methods(ProfileSettings(image_size=SIZE), ["merit", "unknown"])
    with pytest.raises(ValueError, match="repeats"):
        profile_methods(ProfileSettings(image_size=SIZE), ["merit"], timed=True, repeats=0)
    assert cli.main(["flops", "--image-size", "48"]) == 2


def test_time_breakdown_groups_a_frozen_refinement():
    import torch

    from hidiff.diffusion import BernoulliDiffusion
    from hidiff.models import BBDM, HiDiff, UNet
    from hidiff.profiling import OPERATOR_GROUPS, time_breakdown

    segmentor = UNet(3, 1, base_channels=4)
    refiner = BBDM(3, 1, model_channels=32, cond_channels=segmentor.feature_channels)
    model = HiDiff(segmentor, refiner, BernoulliDiffusion(num_steps=4)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        prior, features = model.prior(x)
        model.refine_from_prior(x, prior, features, steps=2)
        breakdown = time_breakdown(lambda: model.refine_from_prior(x, prior, features, steps=2))
    assert list(breakdown.seconds) == [group for group, _ in OPERATOR_GROUPS] + ["other"]
    binary_blocks, packing = (breakdown.seconds[group] for group, _ in OPERATOR_GROUPS[:2])
    assert binary_blocks > 0 and packing > 0  # the frozen refiner's fused blocks ran
    assert breakdown.seconds["sampler (Bernoulli steps)"] > 0
    assert abs(sum(breakdown.shares().values()) - 1) < 1e-9
    assert 0 < breakdown.total_seconds
