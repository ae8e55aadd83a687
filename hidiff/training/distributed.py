"""Process-group set-up for data-parallel training (torchrun or torch.multiprocessing launches).

Usage: start N processes with ``torchrun --nproc_per_node N ...`` (it sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT); each calls :func:`init_distributed`, trains, then :func:`cleanup`. A single process
without those variables runs undistributed and every helper here degrades to the one-process answer.

Data sharding follows ``torch.utils.data.DistributedSampler``'s convention (one shared permutation per epoch, padded
to a multiple of the world size, rank r taking every world_size-th index from r); the trainer implements it in its
resumable sampler (:mod:`hidiff.training.sampler`), which can also start at any batch.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistributedInfo",
    "barrier",
    "cleanup",
    "find_free_port",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "unwrap",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands: its global and node-local rank, the world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(backend: str | None = None, device: str | torch.device | None = None) -> DistributedInfo:
    """Joins the process group described by torchrun's environment variables, if any.

    With WORLD_SIZE > 1 (and no group yet) it calls ``init_process_group`` with the ``env://`` method: backend
    ``nccl`` when CUDA is available, else ``gloo`` (unless `backend` says otherwise), and selects ``cuda:LOCAL_RANK``.
    Without those variables it returns rank 0 of a world of 1 and starts nothing.

    Args:
        backend: process-group backend, None to choose from the hardware.
        device: the device to train on, None for ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.

    Returns:
        The :class:`DistributedInfo` of this process.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
        logger.info("joined process group: rank %d of %d (%s, %s)", rank, world_size, backend, device)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistributedInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0: the process that writes files, logs progress and runs validation."""
    return get_rank() == 0


def barrier() -> None:
    """Waits for every process (a no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leaves the process group if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the module itself otherwise)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def find_free_port() -> int:
    """A TCP port free on this host now, for MASTER_PORT of a local multi-process launch."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
