"""Shared fixtures: the CPU popcount paths to exercise and deterministic seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import hidiff_kernels


def supported_isas() -> list[str]:
    """Every popcount path the CPU supports (only the reference when the extension is absent)."""
    if not hidiff_kernels.COMPILED:
        return ["reference"]
    return list(hidiff_kernels._C.supported_isas())


@pytest.fixture(params=supported_isas())
def isa(request):
    """Runs the test once per CPU popcount path, restoring the best one afterwards."""
    if request.param != "reference":
        previous = hidiff_kernels._C.active_isa()
        hidiff_kernels._C.set_isa(request.param)
        yield request.param
        hidiff_kernels._C.set_isa(previous)
    else:
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (restored afterwards): the tests share a small machine, where OpenMP threads
    fighting for its cores are far slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def train_tiny_run():
    """``train_tiny_run(root, config, *options)`` trains ``config`` (a tiny TrainingConfig dict) through
    ``hidiff train`` into ``root / "out"`` and returns that folder."""
    from hidiff import cli

    def train(root: Path, config: dict, *options: str) -> Path:
        path = root / "tiny.yaml"
        path.write_text(yaml.safe_dump(dict(config, output_dir=str(root / "out"))))
        assert cli.main(["train", "--config", str(path), "--device", "cpu", *options]) == 0
        return root / "out"

    return train
