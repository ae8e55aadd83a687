"""GPU benchmarks (an NVIDIA GPU, e.g. H200): the binary ops and the frozen refiner vs torch bf16.

Targets:

* layer table, batch 8: ``binary_conv2d`` on an already packed input >= 2x over torch bf16
  ``F.conv2d`` on channels-last tensors on the geometric mean (batch 1 is recorded without a target);
* fused elementwise ops (TB ``binarize_pack``, TA ``time_activation``, ``bernoulli_step``): achieved
  bandwidth (bytes read + written / time) >= 75% of a device-to-device copy's;
* a 10-step DDIM refinement (batch 1, 256x256, C = 128): the frozen binary refiner >= 2x over the
  real refiner in bf16 autocast.

The GPU's name (``torch.cuda.get_device_name()``) is recorded in a metric row, with its memory,
the copy bandwidth and the kernels serving the ``hidiff::`` ops on CUDA. Every timed round ends
with ``torch.cuda.synchronize()``, so it measures finished GPU work (one call per round in the
layer and refiner tables, so their smallest rows include a few microseconds of launch and
synchronisation latency in both columns; several calls per round in the bandwidth table); warm-up
rounds absorb the cuDNN algorithm search (``torch.backends.cudnn.benchmark`` is on in this module)
and the kernel compilation. The module is skipped when ``torch.cuda.is_available()`` is False.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import hidiff_kernels as hk
from hidiff.diffusion import BernoulliDiffusion
from hidiff.models import BBDM, HiDiff, UNet
from hidiff.models.frozen import FrozenBBDM
from hidiff_kernels.info import kernel_table

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="GPU benchmarks: torch.cuda.is_available() is False (no CUDA GPU, or a CPU-only torch build)",
)

DEVICE = torch.device("cuda")
WARMUP_ROUNDS = 5

# --- layer table ------------------------------------------------------------------------------

# (in_channels, out_channels, size, stride), as in the CPU layer table
LAYERS = [
    (128, 128, 256, 1),
    (128, 128, 256, 2),
    (256, 256, 64, 1),
    (512, 512, 16, 1),
    (256, 128, 256, 1),
    (512, 512, 8, 1),
]
BATCHES = (1, 8)
LAYER_BASELINE = "torch bf16 channels-last"
LAYER_BINARY = "binary_conv2d (packed input)"
# (column, geometric-mean speed-up over the baseline), per batch; batch 1 has none
LAYER_TARGETS = {8: (LAYER_BINARY, 2.0)}
LAYER_ROUNDS = 50


def layer_table(batch: int) -> tuple[str, str, str]:
    """(table, title, baseline) of the layer table at ``batch``."""
    title = f"GPU binary 3x3 convolution vs torch bf16 channels-last, batch {batch}, padding 1"
    return f"gpu layers b{batch}", title, LAYER_BASELINE


def layer_id(param: tuple[tuple[int, int, int, int], int]) -> str:
    """Row name, e.g. ``128->128 256x256 s2 b8``."""
    (cin, cout, size, stride), batch = param
    return f"{cin}->{cout} {size}x{size}" + (f" s{stride}" if stride != 1 else "") + f" b{batch}"


@pytest.fixture(scope="module", autouse=True)
def cudnn_autotune() -> Iterator[None]:
    """Lets cuDNN pick the fastest algorithm per convolution shape while this module runs."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.benchmark = previous


def synchronized(*calls: Callable[[], object]) -> Callable[[], None]:
    """One timed round: ``calls`` in order, then a wait until the GPU has finished them."""

    def run() -> None:
        for call in calls:
            call()
        torch.cuda.synchronize()

    return run


@pytest.fixture(params=[(layer, batch) for batch in BATCHES for layer in LAYERS], ids=layer_id)
def layer(request) -> tuple[tuple[tuple[int, int, int, int], int], Tensor, Tensor, Tensor, Tensor]:
    """(param, float32 input, weight, per-channel scale, bias) on the GPU."""
    (cin, cout, size, _), batch = request.param
    generator = torch.Generator(DEVICE).manual_seed(0)
    x = torch.randn(batch, cin, size, size, generator=generator, device=DEVICE)
    w = torch.randn(cout, cin, 3, 3, generator=generator, device=DEVICE)
    scale, bias = w.abs().mean((1, 2, 3)), torch.randn(cout, generator=generator, device=DEVICE)
    return request.param, x, w, scale, bias


@pytest.mark.benchmark(group="gpu-layers")
@pytest.mark.parametrize("column", [LAYER_BASELINE, LAYER_BINARY])
def test_layer(benchmark, record, layer, column: str) -> None:
    """One 3x3 convolution (with bias; the binary one with its scale too) per timed round."""
    param, x, w, scale, bias = layer
    (cin, _, _, stride), batch = param
    record(*layer_table(batch), layer_id(param), column, LAYER_TARGETS.get(batch))
    with torch.inference_mode():
        if column == LAYER_BASELINE:
            x_bf16 = x.to(torch.bfloat16, memory_format=torch.channels_last)
            w_bf16 = w.to(torch.bfloat16, memory_format=torch.channels_last)
            call = partial(F.conv2d, x_bf16, w_bf16, bias.to(torch.bfloat16), stride, 1)
        else:
            x_packed, w_packed = hk.binarize_pack(x), hk.pack_weight(w)
            call = partial(hk.binary_conv2d, x_packed, w_packed, cin, stride, 1, 1, scale, bias)
        benchmark.pedantic(synchronized(call), rounds=LAYER_ROUNDS, warmup_rounds=WARMUP_ROUNDS)


# --- fused elementwise ops vs copy bandwidth ----------------------------------------------------

COPY_FRACTION_TARGET = 0.75
BANDWIDTH_TABLE = (
    "gpu bandwidth",
    "GPU fused elementwise ops: bandwidth (bytes read + written / time) vs a device-to-device copy, "
    f"target >= {COPY_FRACTION_TARGET:.0%} of the copy's",
    "GB/s",
)
ELEMENTWISE_SHAPES = [(1, 128, 256, 256), (8, 128, 256, 256)]
COPY_ELEMENTS = 2**28  # float32: 1 GiB read and 1 GiB written per copy
# Calls per timed round, so that one synchronisation is spread over several kernels.
CALLS_PER_ROUND = 8
ELEMENTWISE_ROUNDS = 20
# A round cycles through enough input sets to span this many times the L2 cache, so the inputs
# come from device memory as the copy's do.
L2_MULTIPLE = 2


def shape_id(shape: tuple[int, int, int, int]) -> str:
    """``NxCxHxW``."""
    return "x".join(map(str, shape))


def tb_args(shape: tuple[int, int, int, int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``binarize_pack`` inputs: x and a per-sample threshold, as in the refiner."""
    n, c, _, _ = shape
    return (
        torch.randn(shape, generator=generator, device=DEVICE),
        torch.randn(n, c, generator=generator, device=DEVICE),
    )


def ta_args(shape: tuple[int, int, int, int], generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``time_activation`` inputs: u, per-sample gamma and zeta, per-channel beta."""
    n, c, _, _ = shape
    return (
        torch.randn(shape, generator=generator, device=DEVICE),
        torch.randn(n, c, generator=generator, device=DEVICE),
        torch.randn(n, c, generator=generator, device=DEVICE),
        torch.rand(c, generator=generator, device=DEVICE),
    )


def bernoulli_args(
    shape: tuple[int, int, int, int], generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor, str, int, int]:
    """``bernoulli_step`` inputs of a DDIM step: y_t, eps_hat, prior, coef, mode, seed, offset."""
    prior = torch.rand(shape, generator=generator, device=DEVICE)
    y_t = torch.bernoulli(prior, generator=generator)
    eps_hat = torch.rand(shape, generator=generator, device=DEVICE)
    coef = torch.tensor([[0.8, 0.3]], device=DEVICE).expand(shape[0], 2).contiguous()
    return y_t, eps_hat, prior, coef, "ddim", 0, 0


ELEMENTWISE_OPS: dict[str, tuple[Callable[..., Tensor], Callable[..., tuple]]] = {
    "TB binarize_pack": (hk.binarize_pack, tb_args),
    "TA time_activation": (hk.time_activation, ta_args),
    "bernoulli_step ddim": (hk.bernoulli_step, bernoulli_args),
}


def tensor_bytes(args: tuple) -> int:
    """Bytes of the tensors among ``args``."""
    return sum(a.nbytes for a in args if isinstance(a, Tensor))


def median_seconds(run: Callable[[], None], rounds: int, warmup_rounds: int) -> float:
    """Median wall time of a synchronised round, measured as ``benchmark.pedantic`` measures it."""
    for _ in range(warmup_rounds):
        run()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture(scope="module")
def copy_bandwidth() -> float:
    """GB/s of ``y.copy_(x)`` between two 1 GiB float32 device tensors (bytes read + written / time)."""
    generator = torch.Generator(DEVICE).manual_seed(0)
    x = torch.rand(COPY_ELEMENTS, generator=generator, device=DEVICE)
    y = torch.empty_like(x)
    run = synchronized(*[partial(y.copy_, x)] * CALLS_PER_ROUND)
    seconds = median_seconds(run, ELEMENTWISE_ROUNDS, WARMUP_ROUNDS)
    return 2 * x.nbytes * CALLS_PER_ROUND / seconds / 1e9


@pytest.mark.benchmark(group="gpu-bandwidth")
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=shape_id)
@pytest.mark.parametrize("op", list(ELEMENTWISE_OPS))
def test_elementwise_bandwidth(
    benchmark, record_metric, copy_bandwidth: float, op: str, shape: tuple[int, int, int, int]
) -> None:
    """Achieved bandwidth of one fused op next to the copy's; a round is ``CALLS_PER_ROUND`` calls."""
    fn, make_args = ELEMENTWISE_OPS[op]
    generator = torch.Generator(DEVICE).manual_seed(0)
    with torch.inference_mode():
        first = make_args(shape, generator)
        l2_bytes = torch.cuda.get_device_properties(DEVICE).L2_cache_size
        sets = max(1, math.ceil(L2_MULTIPLE * l2_bytes / tensor_bytes(first)))
        arg_sets = [first] + [make_args(shape, generator) for _ in range(sets - 1)]
        moved = tensor_bytes(first) + fn(*first).nbytes
        calls = max(CALLS_PER_ROUND, sets)
        run = synchronized(*(partial(fn, *arg_sets[i % sets]) for i in range(calls)))
        benchmark.pedantic(run, rounds=ELEMENTWISE_ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    if benchmark.disabled:
        return
    row = f"{op} {shape_id(shape)}"
    record_metric(*BANDWIDTH_TABLE, row, "achieved", moved * calls / benchmark.stats.stats.median / 1e9)
    record_metric(*BANDWIDTH_TABLE, row, "device-to-device copy", copy_bandwidth)


@pytest.mark.benchmark(group="gpu-device")
def test_device(benchmark, record_metric, copy_bandwidth: float) -> None:
    """The GPU's name (the row), memory, copy bandwidth and the kernels serving the ops on CUDA."""
    # Through benchmark.pedantic so that --benchmark-only keeps this test.
    props = benchmark.pedantic(torch.cuda.get_device_properties, args=(DEVICE,), rounds=1, iterations=1)
    kernels = ", ".join(sorted({row["CUDA"] for row in kernel_table().values()}))
    row = f"{torch.cuda.get_device_name(DEVICE)} (hidiff ops on CUDA: {kernels})"
    table = ("gpu device", "GPU of these benchmarks", "")
    record_metric(*table, row, "memory (GiB)", props.total_memory / 2**30)
    record_metric(*table, row, "device-to-device copy (GB/s)", copy_bandwidth)


# --- the whole refiner --------------------------------------------------------------------------

STEPS = 10
WIDTH, SIZE = 128, 256
REFINER_BASELINE = "real refiner torch bf16 autocast"
REFINER_FROZEN = "frozen binary refiner"
REFINER_TABLE = (
    "gpu refiner",
    f"GPU binary vs real refiner, batch 1, K = 1, {STEPS} DDIM steps",
    REFINER_BASELINE,
)
REFINER_TARGET = (REFINER_FROZEN, 2.0)
REFINER_ROUNDS = 10


@pytest.fixture(scope="module")
def refiners() -> tuple[dict[bool, HiDiff], FrozenBBDM, Tensor, Tensor, list[Tensor]]:
    """Real and binary HiDiff models (same segmentor, same refiner topology) on the GPU, the frozen
    binary refiner for ``STEPS`` steps, one image and its prior and features."""
    torch.manual_seed(0)
    segmentor = UNet(3, 1, base_channels=WIDTH // 4)
    diffusion = BernoulliDiffusion(num_steps=STEPS)
    models = {}
    for binary in (False, True):
        refiner = BBDM(3, 1, model_channels=WIDTH, cond_channels=segmentor.feature_channels, binary=binary)
        models[binary] = HiDiff(segmentor, refiner, diffusion).to(DEVICE).eval()
    image = torch.randn(1, 3, SIZE, SIZE, device=DEVICE)
    with torch.inference_mode():
        prior, features = models[True].prior(image)
        frozen = models[True].freeze(STEPS)
    return models, frozen, image, prior, features


@pytest.mark.benchmark(group="gpu-refiner")
@pytest.mark.parametrize("column", [REFINER_BASELINE, REFINER_FROZEN])
def test_refinement(benchmark, record, refiners, column: str) -> None:
    """A full ``STEPS``-step DDIM refinement (``HiDiff.refine_from_prior``) per timed round."""
    models, frozen, image, prior, features = refiners
    record(*REFINER_TABLE, f"{STEPS}-step DDIM refinement, C={WIDTH}, {SIZE}x{SIZE}", column, REFINER_TARGET)

    def refine() -> Tensor:
        if column == REFINER_BASELINE:
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
                return models[False].refine_from_prior(image, prior, features, steps=STEPS, seed=0, frozen=False)
        return models[True].refine_from_prior(image, prior, features, steps=STEPS, seed=0, frozen=frozen)

    with torch.inference_mode():
        benchmark.pedantic(synchronized(refine), rounds=REFINER_ROUNDS, warmup_rounds=WARMUP_ROUNDS)
