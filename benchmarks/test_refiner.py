"""The whole refiner: frozen binary BBDM on the packed kernels vs the real BBDM in torch fp32.

Both refiners have the same topology (``BBDM(binary=True)`` and ``BBDM(binary=False)``, width
C = 128, the paper's default), batch 1, K = 1 class, one image and its segmentor features.
Two tables: one refiner forward (for the frozen refiner: ``prepare`` + ``step``, the cost of a
single evaluation), and a full 10-step DDIM refinement (``HiDiff.refine_from_prior``, which for
the frozen refiner computes the condition cache once and reuses it in every step), the
deployment case, which carries the 5x target.
Columns: the real refiner in torch fp32 (baseline), the binary refiner in its training form
(eval mode, packed kernels layer by layer) and the frozen binary refiner (``HiDiff.freeze``).
With OpenVINO installed (the optional peer, ``pip install .[peers]``), one more: the same real
refiner converted by ``openvino.convert_model`` and compiled for OpenVINO's CPU plugin in fp32
with as many threads as torch (what a user who wants a fast real-valued refiner on a CPU would
pick), checked against torch before it is timed, with the frozen binary refiner's speed-up over
it; the refinement runs the same sampler with OpenVINO computing each refiner evaluation. The
real refiner's zero-initialised parameters are filled with random values (a trained refiner has
none at zero) so that this check sees every layer; values do not change what a dense fp32
layer costs.

With ``--benchmark-disable`` (the test suite's smoke run) the models are built at a small width
and resolution, since nothing is measured then.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import openvino_peer as peer
import pytest
import torch

from hidiff.diffusion import BernoulliDiffusion
from hidiff.models import BBDM, HiDiff, UNet
from hidiff.profiling import time_breakdown

FORWARD_TABLE = ("refiner-forward", "Binary vs real refiner: one forward, batch 1, K = 1", "real refiner torch fp32")
REFINEMENT_TABLE = (
    "refiner-refinement",
    "Binary vs real refiner: a 10-step DDIM refinement, batch 1, K = 1",
    "real refiner torch fp32",
)
TARGET = ("frozen binary refiner", 5.0)
STEPS = 10
COLUMNS = ("real refiner torch fp32", "binary refiner (training form)", "frozen binary refiner")
OPENVINO_COLUMN = "real refiner OpenVINO fp32"
VERSUS = ((COLUMNS[2], OPENVINO_COLUMN),)


def _config(request) -> tuple[int, int]:
    """(width C, resolution): the paper's setting, or a small one for the untimed smoke run."""
    return (16, 64) if request.config.getoption("benchmark_disable") else (128, 256)


def fill_zero_initialised(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Fills every parameter of ``module`` that is all zeros (heads, LayerScales, time shifts, the
    condition ResBlocks' last convs, BatchNorm biases) with N(0, std^2) values, in place, from its
    own generator (the global torch RNG is left as it was)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def build(width: int, size: int, seed: int = 0):
    """Real and binary HiDiff models with the same random refiner weights layout, and their inputs.

    The real refiner's zero-initialised parameters are filled (:func:`fill_zero_initialised`), so
    that its output depends on every layer (the OpenVINO check compares it).
    """
    torch.manual_seed(seed)
    segmentor = UNet(3, 1, base_channels=width // 4)
    diffusion = BernoulliDiffusion(num_steps=STEPS)
    models = {}
    for binary in (False, True):
        refiner = BBDM(3, 1, model_channels=width, cond_channels=segmentor.feature_channels, binary=binary)
        if not binary:
            fill_zero_initialised(refiner, seed)
        models[binary] = HiDiff(segmentor, refiner, diffusion).eval()
    image = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        prior, features = models[True].prior(image)
    return models, image, prior, features


@pytest.fixture(scope="module")
def setting(request):
    width, size = _config(request)
    models, image, prior, features = build(width, size)
    with torch.inference_mode():
        frozen = models[True].freeze(STEPS)
    return width, size, models, frozen, image, prior, features


def _runner(column, models, frozen, image, prior, features, full_chain: bool):
    model = models[column != COLUMNS[0]]
    use_frozen = frozen if column == COLUMNS[2] else False
    if full_chain:
        return lambda: model.refine_from_prior(image, prior, features, steps=STEPS, seed=0, frozen=use_frozen)
    t = torch.full((1,), model.diffusion.timesteps(STEPS)[0], dtype=torch.long)
    y_t = (prior > 0.5).float()
    if use_frozen is not False:
        return lambda: use_frozen(image, y_t, prior, t, features)
    return lambda: model.refiner(image, y_t, prior, t, features)


@pytest.mark.benchmark(group="refiner")
@pytest.mark.parametrize("full_chain", [False, True], ids=["forward", "refinement"])
@pytest.mark.parametrize("column", COLUMNS)
def test_refiner(benchmark, record, setting, column, full_chain):
    width, size, models, frozen, image, prior, features = setting
    what = f"{STEPS}-step DDIM refinement" if full_chain else "one refiner forward"
    if full_chain:
        record(*REFINEMENT_TABLE, f"{what}, C={width}, {size}x{size}", column, TARGET)
    else:
        record(*FORWARD_TABLE, f"{what}, C={width}, {size}x{size}", column)
    fn = _runner(column, models, frozen, image, prior, features, full_chain)
    with torch.inference_mode():
        fn()  # warm-up: first-call allocations and the packed-weight caches
        benchmark.pedantic(fn, rounds=3, iterations=1)


@pytest.fixture(scope="module")
def openvino_refiner(setting) -> peer.Runner:
    """The real refiner converted by ``openvino.convert_model`` and compiled for the CPU in fp32,
    checked against the torch module at the first, a middle and the last visited timestep."""
    _, _, models, _, image, prior, features = setting
    refiner, timesteps = models[False].refiner, models[False].diffusion.timesteps(STEPS)
    # Tracing cannot use inference tensors (the setting's are): ordinary copies as example inputs.
    t = torch.full((1,), timesteps[0], dtype=torch.long)
    example = (image.clone(), (prior > 0.5).float(), prior.clone(), t, [f.clone() for f in features])
    runner = peer.Runner(peer.compile_for_cpu(peer.convert_refiner(refiner, *example)), copy_output=True)
    checked = (timesteps[0], timesteps[len(timesteps) // 2], timesteps[-1])
    peer.check_refiner(runner, refiner, image, prior, features, checked)
    return runner


@peer.requires_openvino
@pytest.mark.benchmark(group="refiner")
@pytest.mark.parametrize("full_chain", [False, True], ids=["forward", "refinement"])
def test_refiner_openvino(benchmark, record, setting, openvino_refiner, full_chain):
    width, size, models, _, image, prior, features = setting
    what = f"{STEPS}-step DDIM refinement" if full_chain else "one refiner forward"
    table = REFINEMENT_TABLE if full_chain else FORWARD_TABLE
    record(*table, f"{what}, C={width}, {size}x{size}", OPENVINO_COLUMN, versus=VERSUS)

    def denoise(y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(openvino_refiner(*peer.flat_inputs(image, y_t, prior, t, features)))

    if full_chain:
        # The call HiDiff.refine_from_prior makes for a refiner that runs as it is (frozen=False).
        def fn() -> torch.Tensor:
            return models[False].diffusion.sample(denoise, prior, steps=STEPS, sampler="ddim", samples=1, seed=0)
    else:
        t = torch.full((1,), models[False].diffusion.timesteps(STEPS)[0], dtype=torch.long)
        y_t = (prior > 0.5).float()

        def fn() -> torch.Tensor:
            return denoise(y_t, t)

    with torch.inference_mode():
        fn()  # warm-up: OpenVINO's first inference allocates its buffers
        benchmark.pedantic(fn, rounds=3, iterations=1)


def _peak_rss_mib(variant: str, width: int, size: int) -> float:
    """Peak resident memory (MiB) of a 10-step refinement, in a fresh process per variant.

    The process builds the model (the frozen variant then drops the training-form refiner),
    resets its resident-set high-water mark (Linux ``/proc/self/clear_refs``), refines once and
    reads the high-water mark back: weights plus everything the refinement allocates.
    """
    script = f"""
import torch
from hidiff.diffusion import BernoulliDiffusion
from hidiff.models import BBDM, HiDiff, UNet
from hidiff.profiling import time_breakdown
torch.set_num_threads({torch.get_num_threads()})
torch.manual_seed(0)
segmentor = UNet(3, 1, base_channels={width} // 4)
binary = {variant != COLUMNS[0]!r}
refiner = BBDM(3, 1, model_channels={width}, cond_channels=segmentor.feature_channels, binary=binary)
model = HiDiff(segmentor, refiner, BernoulliDiffusion(num_steps={STEPS})).eval()
image = torch.randn(1, 3, {size}, {size})
with torch.inference_mode():
    prior, features = model.prior(image)
    frozen = model.freeze({STEPS}) if {variant == COLUMNS[2]!r} else False
    if frozen is not False:
        del model.refiner, refiner
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    model.refine_from_prior(image, prior, features, steps={STEPS}, frozen=frozen)
with open("/proc/self/status") as f:
    peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(peak_kib / 1024)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def _state_dict_mib(module: torch.nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 2**20


@pytest.mark.benchmark(group="refiner-memory")
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_memory_and_size(benchmark, record_metric, setting):
    width, size, models, frozen, *_ = setting
    table = ("memory", f"Memory of a {STEPS}-step refinement and size on disk, C={width}, {size}x{size}", "MiB")
    peaks = benchmark.pedantic(
        lambda: {column: _peak_rss_mib(column, width, size) for column in (COLUMNS[0], COLUMNS[2])},
        rounds=1,
        iterations=1,
    )
    row = "peak resident memory during the refinement (weights + activations)"
    record_metric(*table, row, "real refiner", peaks[COLUMNS[0]])
    record_metric(*table, row, "frozen binary refiner", peaks[COLUMNS[2]])
    record_metric(*table, "refiner state_dict (torch.save)", "real refiner", _state_dict_mib(models[False].refiner))
    record_metric(*table, "refiner state_dict (torch.save)", "frozen binary refiner", _state_dict_mib(frozen))


SEGMENT_TABLE = (
    "segment-path",
    "HiDiff.segment end to end (segmentor + 10-step DDIM refinement + mask), batch 1, K = 1",
    "real refiner torch fp32",
)
SEGMENT_COLUMNS = {
    "real refiner torch fp32": (False, False),
    "binary, segment(frozen=False)": (True, False),
    "binary, segment() default": (True, True),
}


@pytest.mark.benchmark(group="segment-path")
@pytest.mark.parametrize("column", SEGMENT_COLUMNS)
def test_segment_default_runs_at_frozen_speed(benchmark, record, setting, column):
    """``HiDiff.segment`` with its defaults runs the frozen refiner (frozen once, on the first call), so
    it runs at the frozen refiner's speed; ``frozen=False`` is the layer-by-layer form."""
    width, size, models, _, image, *_ = setting
    binary, frozen = SEGMENT_COLUMNS[column]
    record(*SEGMENT_TABLE, f"HiDiff.segment, C={width}, {size}x{size}", column, ("binary, segment() default", 5.0))
    model = models[binary]

    def segment() -> torch.Tensor:
        return model.segment(image, steps=STEPS, frozen=frozen)

    with torch.inference_mode():
        segment()  # warm-up: the default path freezes the refiner here, once
        benchmark.pedantic(segment, rounds=3, iterations=1)


@pytest.mark.benchmark(group="refinement-profile")
def test_frozen_refinement_profile(benchmark, record_metric, setting):
    """Where a 10-step refinement of the frozen binary refiner spends its time, by operator group
    (:func:`hidiff.profiling.time_breakdown`; one profiled run after a warm-up)."""
    width, size, models, frozen, image, prior, features = setting
    model = models[True]

    def refine() -> torch.Tensor:
        return model.refine_from_prior(image, prior, features, steps=STEPS, seed=0, frozen=frozen)

    with torch.inference_mode():
        refine()
        breakdown = benchmark.pedantic(lambda: time_breakdown(refine), rounds=1, iterations=1)
    table = (
        "refinement-profile",
        f"Where a {STEPS}-step DDIM refinement of the frozen binary refiner spends its time, C={width}, "
        f"{size}x{size}, batch 1 (self time of the operators, one profiled run)",
        "",
    )
    for group, seconds in breakdown.seconds.items():
        record_metric(*table, group, "ms", seconds * 1e3)
        record_metric(*table, group, "share of the operator time (%)", breakdown.shares()[group] * 100)
    assert breakdown.seconds[next(iter(breakdown.seconds))] > 0
