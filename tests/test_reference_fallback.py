"""Without the compiled extension every op runs on the reference and gives the same results."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

import hidiff_kernels as hk

SCRIPT = """
import torch, hidiff_kernels as hk
from hidiff_kernels import info
assert not hk.COMPILED
assert all(row["CPU"] == "reference" for row in info.kernel_table().values())
g = torch.Generator().manual_seed(3)
x, w = torch.randn(2, 45, 9, 7, generator=g), torch.randn(6, 45, 3, 3, generator=g)
t, s, b = torch.randn(2, 45, generator=g), torch.rand(6, generator=g), torch.randn(6, generator=g)
y = hk.binary_conv2d(hk.binarize_pack(x, t), hk.pack_weight(w), 45, 2, 1, 2, s, b)
z = hk.time_activation(y, torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g), torch.rand(6, generator=g))
e, p, c = torch.rand(z.shape, generator=g), torch.rand(z.shape, generator=g), torch.rand(2, 2, generator=g)
s = [hk.bernoulli_step((z > 0).float(), e, p, c, mode, -7, 11) for mode in ("posterior", "ddim")]
torch.save({"y": y, "z": z, "s": s}, OUT)
"""


def test_reference_only_mode_matches_compiled_kernels(tmp_path):
    out = tmp_path / "reference.pt"
    env = dict(os.environ, HIDIFF_KERNELS_REFERENCE_ONLY="1")
    subprocess.run([sys.executable, "-c", f"OUT = {str(out)!r}\n" + SCRIPT], env=env, check=True)
    expected = torch.load(out, weights_only=True)
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 45, 9, 7, generator=g), torch.randn(6, 45, 3, 3, generator=g)
    t, s, b = torch.randn(2, 45, generator=g), torch.rand(6, generator=g), torch.randn(6, generator=g)
    y = hk.binary_conv2d(hk.binarize_pack(x, t), hk.pack_weight(w), 45, 2, 1, 2, s, b)
    z = hk.time_activation(
        y, torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g), torch.rand(6, generator=g)
    )
    e, p, c = torch.rand(z.shape, generator=g), torch.rand(z.shape, generator=g), torch.rand(2, 2, generator=g)
    s = [hk.bernoulli_step((z > 0).float(), e, p, c, mode, -7, 11) for mode in ("posterior", "ddim")]
    assert torch.equal(y, expected["y"])
    assert torch.equal(z, expected["z"])
    for ours, theirs in zip(s, expected["s"], strict=True):
        assert torch.equal(ours, theirs)
