"""A whole model side by side: a float CNN and the same CNN after ``binarize()``, batch 1.

The model is a plain stack of 3x3 conv + BatchNorm + Hardtanh blocks (first and last layers
stay real, as binarize() keeps them); the binary copy runs the packed kernels in eval mode
under inference_mode, so the time includes packing the activations of every layer and the
float BatchNorm/activation work between them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hidiff_kernels.nn import binarize

TABLE = ("models", "Float CNN vs the same CNN after binarize(), batch 1, eval", "torch fp32")

# (width, resolution, inner blocks)
MODELS = [(128, 64, 6), (256, 32, 6)]


def model_id(config) -> str:
    width, size, blocks = config
    return f"{blocks}x conv{width} {size}x{size}"


def make_cnn(width: int, blocks: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1)]
    for _ in range(blocks):
        layers += [nn.BatchNorm2d(width), nn.Conv2d(width, width, 3, padding=1), nn.Hardtanh()]
    layers += [nn.BatchNorm2d(width), nn.Conv2d(width, 1, 3, padding=1)]
    return nn.Sequential(*layers).eval()


@pytest.fixture(params=MODELS, ids=model_id, scope="module")
def models(request):
    width, size, blocks = request.param
    torch.manual_seed(0)
    float_model = make_cnn(width, blocks)
    binary_model = binarize(copy.deepcopy(float_model)).eval()
    return request.param, float_model, binary_model, torch.randn(1, 3, size, size)


@pytest.mark.benchmark(group="models")
@pytest.mark.parametrize("variant", ["torch fp32", "binarize() packed"])
def test_model_forward(benchmark, record, models, variant):
    config, float_model, binary_model, x = models
    record(*TABLE, model_id(config), variant)
    model = float_model if variant == "torch fp32" else binary_model
    with torch.inference_mode():
        benchmark(model, x)
