"""Tests of hidiff.models.baselines: the Table XI baselines (MERIT, BerDiff, PD-DDPM, MedSegDiff-V2)."""

from __future__ import annotations

import pytest
import torch

from hidiff.models.baselines import (
    BASELINES,
    MERIT,
    ROLE_DENOISER,
    ROLE_SEGMENTOR,
    BerDiff,
    ConditionUNet,
    MedSegDiffV2,
    build_baseline,
    maxvit_rmlp_small,
    maxxvit_rmlp_small,
)
from hidiff.models.baselines.maxvit import RelPosMlp, _partition, _unpartition

SMALL = 64


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread: the forwards are small and the machine is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Parameter counts of the public code at its configuration (see each module's docstring), obtained
# by instantiating the reference repositories at the commits named there:
# - MERIT_Cascaded(n_class=K, img_size_s1=(256, 256), img_size_s2=(224, 224), model_scale='small',
#   decoder_aggregation='additive') of SLDGroup/MERIT; for a 3-channel image the public count
#   minus the 12 parameters of its unused 1 -> 3 input adapter;
# - BerDiff create_model(image_size, img_channels, num_channels=128, num_res_blocks=2, num_heads=1,
#   attention_resolutions="16", use_scale_shift_norm=False) of takimailto/BerDiff;
# - PD-DDPM UNetModel(in_channels=5 (4 BraTS modalities + mask), out_channels=1, run.sh flags) of
#   Guoxt/ADDPM;
# - MedSegDiff UNetModel_newpreview(in_ch=image channels + 1, out_channels=2, README flags) of
#   MedicineToken/MedSegDiff.
PUBLIC_PARAMETER_COUNTS = [
    ("merit", 1, 1, 256, 147_848_404),
    ("merit", 1, 9, 256, 147_859_956),
    ("merit", 3, 1, 256, 147_848_392),
    ("berdiff", 1, 1, 256, 113_669_761),
    ("berdiff", 3, 1, 256, 113_672_065),
    ("berdiff", 1, 1, 64, 82_955_521),
    ("pd_ddpm", 4, 1, 256, 113_673_217),
    ("pd_ddpm", 1, 1, 256, 113_669_761),
    ("medsegdiff_v2", 3, 1, 256, 129_400_450),
    ("medsegdiff_v2", 1, 1, 256, 129_397_570),
]


@pytest.mark.parametrize(("name", "channels", "classes", "size", "expected"), PUBLIC_PARAMETER_COUNTS)
def test_parameter_counts_match_public_code(name, channels, classes, size, expected):
    with torch.device("meta"):  # shapes only: no weight initialisation
        model = build_baseline(name, channels, classes, size)
    assert num_params(model) == expected


def test_backbone_parameter_counts_match_timm_definitions():
    # MERIT's lib/maxxvit_4out.py (timm 0.6 maxxvit) without the classifier head; timm's model
    # cards list these plus the 768 x 1000 classifier: 64.9 M and 66.0 M.
    with torch.device("meta"):
        assert num_params(maxvit_rmlp_small(224)) == 64_126_044
        assert num_params(maxxvit_rmlp_small(256)) == 65_241_516
        # MedSegDiff's condition model (Generic_UNet(3, 32, 1, 5, anchor_out=True, upscale_logits=True)).
        assert num_params(ConditionUNet(3)) == 15_727_232


@pytest.mark.parametrize(
    ("variant", "name", "size"),
    [(maxvit_rmlp_small, "maxvit_rmlp_small_rw_224", 224), (maxxvit_rmlp_small, "maxxvit_rmlp_small_rw_256", 256)],
)
def test_backbone_parameter_counts_match_installed_timm(variant, name, size):
    try:
        import timm
    except Exception as error:  # timm needs a torchvision build matching torch, often absent
        pytest.skip(
            f"timm is not importable here ({type(error).__name__}: {error}); "
            "test_backbone_parameter_counts_match_timm_definitions checks the counts of MERIT's vendored timm"
        )
    reference = timm.create_model(name, pretrained=False, num_classes=0, img_size=size)
    with torch.device("meta"):
        assert num_params(variant(size)) == num_params(reference)


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize(("channels", "classes"), [(1, 2), (3, 1)])
def test_forward_shapes_at_small_resolution(name, channels, classes):
    spec = BASELINES[name]
    model = spec.build(channels, classes, SMALL).eval()
    args = spec.example_inputs(channels, classes, SMALL)
    with torch.no_grad():
        out = model(*args)
    if name == "medsegdiff_v2":
        prediction, calibration = out
        assert prediction.shape == (1, 2 * classes, SMALL, SMALL)
        assert calibration.shape == (1, 1, SMALL, SMALL)
        out = prediction
    else:
        assert out.shape == (1, classes, SMALL, SMALL)
    assert torch.isfinite(out).all()
    if name == "berdiff":
        assert ((out > 0) & (out < 1)).all()


def test_registry_describes_table_xi():
    assert set(BASELINES) == {"merit", "berdiff", "pd_ddpm", "medsegdiff_v2"}
    assert BASELINES["merit"].role == ROLE_SEGMENTOR and BASELINES["merit"].sampling_steps == 1
    for name in ("berdiff", "pd_ddpm", "medsegdiff_v2"):
        assert BASELINES[name].role == ROLE_DENOISER
        assert BASELINES[name].sampling_steps == 10
    assert [n for n, s in BASELINES.items() if s.integrated_with_segmentor] == ["pd_ddpm"]
    assert all(spec.source for spec in BASELINES.values())
    mask, t, image = BASELINES["berdiff"].example_inputs(2, 3, 32, batch_size=2)
    assert mask.shape == (2, 3, 32, 32) and image.shape == (2, 2, 32, 32)
    assert t.dtype == torch.int64 and t.shape == (2,)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert BASELINES["pd_ddpm"].example_inputs(1, 1, 32)[1].item() == 299  # starts at step 300 of 1000


def test_maxvit_features():
    backbone = maxvit_rmlp_small(SMALL).eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, SMALL, SMALL))
    assert [tuple(f.shape) for f in features] == [(2, 96, 16, 16), (2, 192, 8, 8), (2, 384, 4, 4), (2, 768, 2, 2)]


@pytest.mark.parametrize("grid", [False, True])
def test_partition_round_trip_and_layout(grid):
    x = torch.arange(2 * 8 * 4 * 3, dtype=torch.float32).reshape(2, 8, 4, 3)
    windows = _partition(x, 2, grid)
    assert windows.shape == (16, 4, 3)
    assert torch.equal(_unpartition(windows, 2, grid, 8, 4), x)
    # First window: the top-left 2x2 block, or the 2x2 grid of pixels H/2 and W/2 apart.
    rows, cols = ([0, 4], [0, 2]) if grid else ([0, 1], [0, 1])
    expected = torch.stack([x[0, r, c] for r in rows for c in cols])
    assert torch.equal(windows[0], expected)


def test_relative_position_bias_depends_only_on_offsets():
    rel = RelPosMlp(window=3, num_heads=2, hidden=8)
    bias = rel()
    assert bias.shape == (2, 9, 9)
    positions = [(i, j) for i in range(3) for j in range(3)]
    seen = {}
    for a, (ya, xa) in enumerate(positions):
        for b, (yb, xb) in enumerate(positions):
            key = (ya - yb, xa - xb)
            if key in seen:
                assert torch.equal(bias[:, a, b], seen[key])
            seen[key] = bias[:, a, b]
    assert len(seen) == 25


def test_medsegdiff_anchor_condition_is_detached():
    model = MedSegDiffV2(1, 1, SMALL)  # training mode: BatchNorm needs the 2x2 bottleneck of 64x64
    mask, t, image = BASELINES["medsegdiff_v2"].example_inputs(1, 1, SMALL)
    prediction, calibration = model(mask, t, image)
    prediction.sum().backward()
    assert all(p.grad is None for p in model.condition.parameters())
    calibration.sum().backward()
    assert model.condition.encoder[0][0][0].weight.grad is not None


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="image_size"):
        MERIT(1, 1, image_size=48)
    with pytest.raises(ValueError, match="image_size"):
        BerDiff(1, 1, image_size=100)
    with pytest.raises(ValueError, match="image_channels"):
        BerDiff(0, 1, image_size=32)
    with pytest.raises(ValueError, match="name"):
        build_baseline("unet", 1, 1)
    with pytest.raises(ValueError, match="batch_size"):
        BASELINES["merit"].example_inputs(1, 1, 64, batch_size=0)
    model = BerDiff(1, 1, image_size=32)
    mask, t, image = BASELINES["berdiff"].example_inputs(1, 1, 32)
    with pytest.raises(ValueError, match="t must be"):
        model(mask, t.float(), image)
    with pytest.raises(ValueError, match="image must be"):
        model(mask, t, image[:, :, :16])
    with pytest.raises(ValueError, match="x must be"):
        maxvit_rmlp_small(SMALL)(torch.randn(1, 3, 32, 32))
