"""Seeds and RNG states: derived seeds, global seeding, and RNG states as checkpoint-safe tensors."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["derive_seed", "get_rng_state", "seed_everything", "set_rng_state"]


def derive_seed(*values: int) -> int:
    """A 63-bit seed hashed from integers (numpy's SeedSequence), e.g. ``derive_seed(seed, rank, step)``.

    Hashing rather than adding keeps nearby tuples (seed 0 step 1, seed 1 step 0) independent streams.
    """
    if not values or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0 for v in values):
        raise ValueError(f"derive_seed needs non-negative integers, got {values!r}")
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def seed_everything(seed: int) -> None:
    """Seeds python's ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU, CUDA), numpy and python as tensors and primitives.

    Returns:
        ``{"torch": uint8 tensor, "cuda": list of uint8 tensors, "numpy": {...}, "python": {...}}``, loadable with
        ``torch.load(weights_only=True)``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores states captured by :func:`get_rng_state` (CUDA states only where CUDA devices exist)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]][: torch.cuda.device_count()])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"].tolist()), python_state["gauss_next"]))
