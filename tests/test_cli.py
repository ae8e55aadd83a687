"""The info and demo commands run end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import hidiff_kernels
from hidiff_kernels import demo, info


def test_info_reports_every_op(capsys):
    info.main([])
    out = capsys.readouterr().out
    for name in ("binarize_pack", "pack_weight", "binary_conv2d", "time_activation"):
        assert name in out
    assert "torch running" in out


def test_demo_outputs_agree(capsys):
    demo.main(["--size", "32", "--width", "8", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "max |packed - simulated| on the output   0.00e+00" in out


def test_environment_variable_selects_the_popcount_path():
    if not hidiff_kernels.COMPILED:
        pytest.skip("extension not built")
    code = "import hidiff_kernels; print(hidiff_kernels._C.active_isa())"
    for isa in hidiff_kernels._C.supported_isas():
        env = dict(os.environ, HIDIFF_CPU_ISA=isa)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == isa
