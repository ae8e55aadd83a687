"""FLOPs / BOPs / storage counting: hand-counted toy model, Bi-Real ResNet-18 golden, adapters, guard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hidiff_kernels as hk
from hidiff.models import BBDM
from hidiff_kernels import ops
from hidiff_kernels.counting import (
    OP_RULES,
    Matmul,
    binary_matmul,
    count,
    flop_count_analysis,
    flop_counter_mode,
    flop_formulas,
    fvcore_handles,
    op_units,
    packed_state_dict,
    register_flop_formulas,
    split_counts,
    state_dict_bytes,
    thop_profile,
)
from hidiff_kernels.counting.core import NAMESPACES
from hidiff_kernels.nn import BinaryConv2d, BinaryLinear, TimeActivation, TimeBinarize
from hidiff_kernels.reference import packed_words

# ---------------------------------------------------------------------------------------------
# Toy model with every op, counted by hand


class Toy(nn.Module):
    """Every kind of op once. Hand counts (batch 2, x 3x8x8, emb width 6):

    op                                  MACs     BOPs     elementwise
    conv_in 3->32 3x3 pad 1, 8x8        2*32*8*8 * 3*9 = 110,592;  bias 2*32*8*8 = 4,096
    tb.threshold: silu(emb)                                        12
                  shift 6->32 (addmm)   2*6*32 = 384;              bias 64
                  negation                                         64
    bconv 32->64 3x3 s2 pad 1 -> 4x4             2*64*4*4 * 32*9 = 589,824
                  TB + packing of its input 2*32*8*8 = 4,096; alpha 2*64*4*4 = 2,048; bias 2,048
    ta: silu(emb)                                                  12
        shifts 6->128 (addmm)           2*6*128 = 1,536;           bias 256
        time_activation                                            2*64*4*4 = 2,048
    sign of the 2x16x64 tokens                                     2,048
    scores = q @ q^T (binary Matmul)             2*16*16 * 64 = 32,768
    blinear 64->32 no bias on 2x16 tokens        2*16*32 * 64 = 65,536
                  TB + packing 2*16*64 = 2,048; alpha 2*16*32 = 1,024
    linear 32->8 on 2x16 tokens         2*16*32*8 = 8,192;         bias 2*16*8 = 256
    sigmoid                                                        256
    bernoulli_step                                                 256

    FLOPs (MACs) = 110,592 + 384 + 1,536 + 8,192 = 120,704
    BOPs = 589,824 + 32,768 + 65,536 = 688,128
    elementwise = 4,096 + 140 + 8,192 + 2,316 + 2,048 + 3,072 + 256 + 256 + 256 = 20,632
    OPs = 120,704 + 688,128 / 64 = 120,704 + 10,752 = 131,456

    Parameters: conv_in 864 + 32, tb.shift 192 + 32, bconv 18,432 (binary) + 64, ta.shifts 768 + 128,
    ta.beta 64, blinear 2,048 (binary), linear 256 + 8: 22,888 in all, 20,480 of them binary.
    Storage: 20,480 * 1 + 2,408 * 32 = 97,536 bits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, 32, 3, padding=1)
        self.tb = TimeBinarize(32, 6)
        self.bconv = BinaryConv2d(32, 64, 3, stride=2, padding=1)
        self.ta = TimeActivation(64, 6)
        self.scores = Matmul(binary=True)
        self.blinear = BinaryLinear(64, 32, bias=False)
        self.linear = nn.Linear(32, 8)

    def forward(self, x, emb, y_t, prior, coef):
        h = self.conv_in(x)
        h = self.bconv(h, self.tb.threshold(emb))
        h = self.ta(h, emb)
        tokens = h.flatten(2).transpose(1, 2)
        q = torch.sign(tokens)
        scores = self.scores(q, q.transpose(-1, -2))
        eps_hat = torch.sigmoid(self.linear(self.blinear(tokens)))
        return hk.bernoulli_step(y_t, eps_hat, prior, coef, "ddim", 0, 0), scores


TOY_FLOPS = 120_704
TOY_BOPS = 688_128
TOY_ELEMENTWISE = 20_632
TOY_OPS = 131_456
TOY_PARAMS = 22_888
TOY_STORAGE_BITS = 97_536


def toy_inputs():
    y_t = torch.bernoulli(torch.full((2, 16, 8), 0.5))
    return torch.randn(2, 3, 8, 8), torch.randn(2, 6), y_t, torch.rand(2, 16, 8), torch.rand(2, 2)


@pytest.mark.parametrize("train", [True, False])
def test_toy_model_counts_match_hand_numbers(train):
    model = Toy()
    counts = count(model, toy_inputs(), train=train)
    assert (counts.flops, counts.bops, counts.elementwise) == (TOY_FLOPS, TOY_BOPS, TOY_ELEMENTWISE)
    assert counts.ops == TOY_OPS
    assert (counts.params, counts.storage_bits, counts.storage_bytes) == (TOY_PARAMS, TOY_STORAGE_BITS, 12_192)
    assert model.training  # the model's mode is restored
    layers = counts.by_module
    assert (layers["bconv"].flops, layers["bconv"].bops, layers["bconv"].elementwise) == (0, 589_824, 8_192)
    assert (layers["blinear"].flops, layers["blinear"].bops) == (0, 65_536)
    assert (layers["scores"].flops, layers["scores"].bops) == (0, 32_768)
    assert (layers["conv_in"].flops, layers["conv_in"].params) == (110_592, 896)
    assert (layers["bconv"].params, layers["bconv"].storage_bits) == (18_496, 18_432 + 64 * 32)


def test_toy_model_flop_counter_mode():
    model = Toy().eval()
    with flop_counter_mode() as counter, torch.no_grad():
        model(*toy_inputs())
    # 2 FLOPs per MAC, a BOP 1/64 of a MAC: 2 * OPs.
    assert counter.get_total_flops() == 2 * TOY_OPS == 262_912


def test_toy_model_fvcore():
    model = Toy().eval()
    analysis = flop_count_analysis(model, toy_inputs())
    assert analysis.total() == TOY_OPS
    assert split_counts(analysis.by_operator()) == (TOY_FLOPS, TOY_BOPS)
    assert split_counts(analysis.by_module_and_operator()["bconv"]) == (0, 589_824)


def test_toy_model_thop():
    model = Toy()
    keys = set(model.state_dict())
    # thop sees modules: conv_in, the Linear children of tb / ta, linear (MACs), the binary layers and
    # the binary Matmul (BOPs / 64); bernoulli_step and the element-wise ops are 0 in its unit.
    assert thop_profile(model, toy_inputs()) == TOY_OPS
    assert set(model.state_dict()) == keys  # thop's buffers are gone
    assert model.training


def test_count_accepts_tensor_and_kwargs_and_rejects_bad_inputs():
    conv = nn.Conv2d(2, 4, 1, bias=False)
    assert count(conv, torch.randn(1, 2, 3, 3)).flops == 9 * 4 * 2
    model = Toy()
    x, emb, y_t, prior, coef = toy_inputs()
    by_keyword = count(model, (x, emb), {"y_t": y_t, "prior": prior, "coef": coef})
    assert (by_keyword.flops, by_keyword.bops, by_keyword.elementwise) == (TOY_FLOPS, TOY_BOPS, TOY_ELEMENTWISE)
    with pytest.raises(TypeError, match="inputs must be a tensor or a tuple"):
        count(conv, 3.0)
    with pytest.raises(TypeError, match="kwargs must be a mapping"):
        count(conv, torch.randn(1, 2, 3, 3), [1])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        count(lambda x: x, torch.randn(1))
    with pytest.raises(TypeError, match="train must be True, False or None"):
        count(conv, torch.randn(1, 2, 3, 3), train="yes")


def test_table_lists_modules_by_depth():
    counts = count(Toy(), toy_inputs())
    table = counts.table()
    assert "(model)" in table and "131,456" in table and "    shift" in table
    assert "shift" not in counts.table(max_depth=1) and "bconv" in counts.table(max_depth=1)


# ---------------------------------------------------------------------------------------------
# Golden: Bi-Real ResNet-18 (ImageNet, 224x224)


class BiRealUnit(nn.Module):
    """``BN(BinaryConv3x3(x)) + shortcut(x)``; a downsampling unit's shortcut is AvgPool, real 1x1 conv, BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = BinaryConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(2), nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x):
        return self.bn(self.conv(x)) + self.shortcut(x)


def bireal_resnet18() -> nn.Sequential:
    """Real 7x7 stem, 4 stages of 4 binary 3x3 convs (64, 128, 256, 512), real fc 512 -> 1000."""
    layers = [nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.MaxPool2d(3, 2, 1)]
    in_channels = 64
    for stage, out_channels in enumerate((64, 128, 256, 512)):
        for unit in range(4):
            layers.append(BiRealUnit(in_channels, out_channels, 2 if stage > 0 and unit == 0 else 1))
            in_channels = out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


# BOPs: stage 1: 4 * 56*56*64*64*9 = 462,422,016; stages 2-4 each: 57,802,752 (first conv) +
# 3 * 115,605,504 = 404,619,264; total 1,676,279,808.
# MACs: stem 112*112*64*3*49 = 118,013,952; 1x1 shortcuts 3 * 6,422,528 = 19,267,584; fc 512,000;
# total 137,793,536 (bias adds, BatchNorm and pooling are element-wise).
# Storage: binary conv weights 10,985,472 bits at 1 bit; at 32 bits: stem 9,408, shortcuts 172,032,
# fc 512,000 + bias 1,000, BatchNorm weight and bias 2 * 4,800 = 9,600 (running statistics, as
# buffers, not counted): 704,040 * 32 = 22,529,280; total 33,514,752 bits.
BIREAL_BOPS = 1_676_279_808
BIREAL_FLOPS = 137_793_536
BIREAL_STORAGE_BITS = 33_514_752


@pytest.fixture(scope="module")
def bireal():
    torch.manual_seed(0)
    return bireal_resnet18().eval(), torch.randn(1, 3, 224, 224)


@pytest.mark.parametrize("train", [False, True])
def test_bireal_resnet18_golden(bireal, train):
    model, x = bireal
    counts = count(model, x, train=train)
    assert (counts.bops, counts.flops, counts.storage_bits) == (BIREAL_BOPS, BIREAL_FLOPS, BIREAL_STORAGE_BITS)
    assert counts.params == 10_985_472 + 704_040
    assert not model.training


def test_bireal_resnet18_adapters(bireal):
    model, x = bireal
    ops_total = BIREAL_FLOPS + BIREAL_BOPS // 64
    assert flop_count_analysis(model, x).total() == ops_total == 163_985_408
    with flop_counter_mode() as counter, torch.no_grad():
        model(x)
    assert counter.get_total_flops() == 2 * ops_total


def payload_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


# torch.save writes each tensor as its own 64-byte aligned zip record plus its pickle entry;
# measured ~290 bytes per tensor (the zip's central directory included).
SAVE_OVERHEAD_PER_TENSOR = 512
SAVE_OVERHEAD_FIXED = 1024


def expected_extra_bytes(model: nn.Module) -> int:
    """What the packed state dict stores beyond the storage convention: alpha (float32 per output
    channel) and the pad bits of the last 32-bit word of each packed row."""
    extra_bits = 0
    for layer in model.modules():
        if isinstance(layer, (BinaryConv2d, BinaryLinear)):
            o, i = layer.weight.shape[:2]
            taps = layer.weight[0, 0].numel()
            extra_bits += 32 * o + o * taps * (32 * packed_words(i) - i)
    assert extra_bits % 8 == 0
    return extra_bits // 8


def check_saved_size(model: nn.Module, storage_bits: int) -> None:
    state = packed_state_dict(model)
    assert payload_bytes(state) == storage_bits // 8 + expected_extra_bytes(model)
    overhead = state_dict_bytes(state) - payload_bytes(state)
    assert 0 < overhead <= SAVE_OVERHEAD_PER_TENSOR * len(state) + SAVE_OVERHEAD_FIXED


def test_packed_state_dict_size_matches_storage(bireal):
    model, _ = bireal
    check_saved_size(model, BIREAL_STORAGE_BITS)
    state = packed_state_dict(model)
    assert state["3.conv.weight_packed"].dtype == torch.int32
    assert state["3.conv.weight_packed"].shape == (64, 3, 3, 2)
    assert state["3.conv.weight_scale"].shape == (64,)
    assert "3.conv.weight" not in state and "1.running_mean" not in state
    assert "1.running_mean" in packed_state_dict(model, include_buffers=True)
    assert torch.equal(state["3.conv.weight_packed"], hk.pack_weight(model[3].conv.weight))


def test_packed_state_dict_of_toy_and_centred_linears():
    check_saved_size(Toy(), TOY_STORAGE_BITS)
    refiner = BBDM(3, 1, model_channels=8, binary=True)
    # Odd widths (24 channels: 8 pad bits per packed row) and the X-Former's centred binary linears.
    check_saved_size(refiner, count(refiner, refiner_inputs(refiner)).storage_bits)
    linear = refiner.fuse.attn1.q.linear
    state = packed_state_dict(refiner)
    centred = linear.weight - linear.weight.mean(dim=1, keepdim=True)
    assert torch.equal(state["fuse.attn1.q.linear.weight_packed"], hk.pack_weight(centred[:, :, None, None]))


# ---------------------------------------------------------------------------------------------
# The real refiner


def refiner_inputs(refiner: BBDM, size: int = 64):
    features = [torch.randn(1, c, size // (4 * 2**i), size // (4 * 2**i)) for i, c in enumerate(refiner.cond_channels)]
    y_t = torch.bernoulli(torch.full((1, 1, size, size), 0.5))
    return torch.randn(1, 3, size, size), y_t, torch.rand(1, 1, size, size), torch.tensor([7]), features


def test_binary_refiner_counts_bops_and_no_float_convs_in_binary_layers():
    counts = {}
    for binary in (True, False):
        torch.manual_seed(0)
        refiner = BBDM(3, 1, model_channels=8, binary=binary)
        inputs = refiner_inputs(refiner)
        bn = refiner.block1.bn
        running = bn.running_mean.clone()
        for train in (True, False):
            counts[binary, train] = count(refiner, inputs, train=train)
        assert refiner.training and torch.equal(bn.running_mean, running)  # mode and buffers restored
        layers = [name for name, m in refiner.named_modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
        for train in (True, False):
            by_module = counts[binary, train].by_module
            assert all(by_module[name].flops == 0 and by_module[name].bops > 0 for name in layers)
            for name in ("fuse.attn1.score_matmul", "fuse.attn2.context_matmul"):
                matmul = by_module[name]
                assert (matmul.flops == 0) == binary and (matmul.bops > 0) == binary
    binary, real = counts[True, False], counts[False, False]
    assert counts[True, True].flops == binary.flops and counts[True, True].bops == binary.bops
    assert binary.bops > 0 and real.bops == 0
    assert binary.flops < real.flops / 2
    # Same shapes: every binary MAC of the binary refiner is a real MAC of the real one.
    assert binary.flops + binary.bops == real.flops
    assert binary.params == real.params and binary.storage_bits < real.storage_bits


def test_binary_refiner_fvcore_matches_count():
    refiner = BBDM(3, 1, model_channels=8, binary=True).eval()
    inputs = refiner_inputs(refiner)
    counts = count(refiner, inputs)
    analysis = flop_count_analysis(refiner, inputs)
    assert split_counts(analysis.by_operator()) == (counts.flops, counts.bops)


# ---------------------------------------------------------------------------------------------
# Rules of single ops


class FusedBlock(nn.Module):
    """``binarize_pack``, ``pack_weight`` and ``binary_conv2d_fused`` with every epilogue step.

    x 2x40x6x6, w 24x40x3x3, stride 1, padding 1: 2*24*6*6 = 1,728 outputs.
    BOPs 1,728 * 40*9 = 622,080. Element-wise: packing x 2*40*6*6 = 2,880, packing w 24*40*9 = 8,640,
    epilogue 1,728 * 5 (scale, bias, residual, TA, packing of the output) = 8,640: 20,160 in all.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(24, 40, 3, 3))
        self.affine = nn.Parameter(torch.rand(4, 24))  # scale, bias, beta, threshold

    def forward(self, x, residual, gamma, zeta):
        scale, bias, beta, threshold = self.affine
        return torch.ops.hidiff.binary_conv2d_fused(
            hk.binarize_pack(x),
            hk.pack_weight(self.weight),
            40,
            [1, 1],
            [1, 1],
            [1, 1],
            scale,
            bias,
            residual,
            gamma,
            zeta,
            beta,
            threshold,
            True,
        )


def fused_inputs():
    return torch.randn(2, 40, 6, 6), torch.randn(2, 24, 6, 6), torch.randn(2, 24), torch.randn(2, 24)


@pytest.mark.skipif(not hasattr(torch.ops.hidiff, "binary_conv2d_fused"), reason="no hidiff::binary_conv2d_fused")
def test_fused_binary_conv_is_counted_by_every_counter():
    block = FusedBlock()
    counts = count(block, fused_inputs())
    assert (counts.flops, counts.bops, counts.elementwise) == (0, 622_080, 20_160)
    with flop_counter_mode() as counter, torch.no_grad():
        block(*fused_inputs())
    assert counter.get_total_flops() == 622_080 // 32
    assert flop_count_analysis(block, fused_inputs()).total() == 622_080 / 64
    # thop cannot see a functional call; op_units prices it in thop's unit.
    units = op_units()["hidiff::binary_conv2d_fused"](
        (2, 6, 6, 2),
        (24, 3, 3, 2),
        40,
        [1, 1],
        [1, 1],
        [1, 1],
        (24,),
        (24,),
        (2, 24, 6, 6),
        (2, 24),
        (2, 24),
        (24,),
        (24,),
        True,
        out_shape=((2, 24, 6, 6), (2, 6, 6, 1)),
    )
    assert units == 622_080 / 64


class RealOps(nn.Module):
    """Aten ops of real models. MACs: einsum (2,3,4)x(2,4,5) 120; scaled-dot-product attention,
    q 1x2x4x8, k and v 1x2x6x8: 2*4*6 * (8 + 8) = 768, once through F.scaled_dot_product_attention
    and once through the fused CPU kernel; transposed conv 4->6 k2 s2 on 3x3: 36 inputs * 6*4 = 864;
    grouped conv 4->6 k3 pad 1 groups 2 on 5x5: 150 outputs * 2*9 = 2,700. Total 5,220.
    """

    def forward(self, a, b, q, k, v, x, w_t, y, w_g):
        out = torch.einsum("bij,bjk->bik", a, b)
        attention = F.scaled_dot_product_attention(q, k, v)
        fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
        return out, attention, fused, F.conv_transpose2d(x, w_t, stride=2), F.conv2d(y, w_g, padding=1, groups=2)


def test_aten_rules_of_real_models():
    inputs = (
        torch.randn(2, 3, 4),
        torch.randn(2, 4, 5),
        torch.randn(1, 2, 4, 8),
        torch.randn(1, 2, 6, 8),
        torch.randn(1, 2, 6, 8),
        torch.randn(1, 4, 3, 3),
        torch.randn(4, 6, 2, 2),
        torch.randn(1, 4, 5, 5),
        torch.randn(6, 2, 3, 3),
    )
    counts = count(RealOps(), inputs)
    assert (counts.flops, counts.bops) == (5_220, 0)


def test_binary_matmul_marker():
    a = torch.randn(2, 3, 4, 5, requires_grad=True)
    b = torch.randn(2, 3, 5, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.hidiff_markers.binary_matmul.default, (a, b))
    out = binary_matmul(a, b)
    assert torch.equal(out, a @ b)
    out.sum().backward()
    assert torch.allclose(a.grad, torch.ones(2, 3, 4, 6) @ b.detach().transpose(-1, -2))
    assert torch.equal(Matmul(binary=False)(a, b), a @ b)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # cast like matmul, so the backward sees one dtype
        out = binary_matmul(a, b)
        assert out.dtype == torch.bfloat16 and torch.equal(out, a @ b)
    out.float().sum().backward()
    with pytest.raises(ValueError, match="same batch dims"):
        binary_matmul(torch.randn(2, 4, 5), torch.randn(3, 5, 6))
    with pytest.raises(ValueError, match="at least 2 dims"):
        binary_matmul(torch.randn(5), torch.randn(5, 6))
    with pytest.raises(TypeError, match="floating"):
        binary_matmul(torch.ones(2, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64))


def test_register_flop_formulas_is_idempotent():
    register_flop_formulas()
    register_flop_formulas()
    model = Toy().eval()
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*toy_inputs())
    assert counter.get_total_flops() == 2 * TOY_OPS


# ---------------------------------------------------------------------------------------------
# Guard: every op of the library has a rule everywhere


def library_ops() -> set[str]:
    registered = {
        name.split(".")[0] for name in torch._C._dispatch_get_all_op_names() if name.split("::")[0] in NAMESPACES
    }
    return registered | {f"{ops.NAMESPACE}::{name}" for name in ops.SCHEMAS}


def test_every_library_op_has_a_rule_in_the_core_and_every_adapter():
    names = library_ops()
    assert {"hidiff::binary_conv2d", "hidiff::bernoulli_step", "hidiff_markers::binary_matmul"} <= names
    formulas = {f"{packet._qualified_op_name}" for packet in flop_formulas()}
    for table, adapter in (
        (OP_RULES, "core"),
        (fvcore_handles(), "fvcore"),
        (formulas, "FlopCounterMode"),
        (op_units(), "thop"),
    ):
        missing = sorted(names - set(table))
        assert not missing, f"ops without a {adapter} rule: {missing}"
