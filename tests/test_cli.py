"""The info and demo commands run end to end."""

from __future__ import annotations

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
