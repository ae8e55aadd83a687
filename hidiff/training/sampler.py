"""Resumable, rank-sharded data order: batch n of a run is a pure function of (seed, n, rank, world size).

The trainer counts the micro-batches it has consumed; resuming from a checkpoint restarts the stream at that count,
so an interrupted and resumed run sees exactly the batches of an uninterrupted one, whatever the number of DataLoader
workers and however many batches they had prefetched when the run stopped.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .seeding import derive_seed

__all__ = ["EpochSeededDataset", "ResumableBatchSampler"]

SampleKey = tuple[int, int]


class ResumableBatchSampler(Sampler[list[SampleKey]]):
    """An endless stream of batches of ``(epoch, index)`` keys, sharded over ranks, startable at any batch.

    Each epoch draws one permutation of the dataset from ``derive_seed(seed, epoch)`` (shared by every rank), pads
    it to a multiple of the world size by repeating its head and gives rank r the indices at r, r + world_size, ...
    (the convention of ``torch.utils.data.DistributedSampler``). Batches are consecutive slices of a rank's share;
    an incomplete last batch is dropped, so all batches have ``batch_size`` samples and every rank makes the same
    number of steps per epoch.

    Args:
        num_samples: the dataset length.
        batch_size: samples per batch (per rank).
        seed: seed of the permutations.
        rank, world_size: this process's shard.
        shuffle: permute each epoch (False: the order 0, 1, 2, ... every epoch).
        start: the first batch number to produce (the number of batches already consumed).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start: int = 0,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} and world_size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.num_samples = int(num_samples)
        self.per_rank = -(-self.num_samples // world_size)
        if self.per_rank < batch_size:
            raise ValueError(
                f"a dataset of {num_samples} samples over {world_size} process(es) gives {self.per_rank} per process, "
                f"fewer than batch_size={batch_size}"
            )
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle = shuffle
        self.start = start
        self.batches_per_epoch = self.per_rank // batch_size
        self._cached_epoch = -1
        self._shard: list[int] = []

    def _shard_of(self, epoch: int) -> list[int]:
        if epoch != self._cached_epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
                order = torch.randperm(self.num_samples, generator=generator).tolist()
            else:
                order = list(range(self.num_samples))
            padded = order + order[: self.per_rank * self.world_size - self.num_samples]
            self._shard = padded[self.rank :: self.world_size]
            self._cached_epoch = epoch
        return self._shard

    def batch(self, number: int) -> list[SampleKey]:
        """The keys of batch `number` (0-based over the whole run)."""
        epoch, position = divmod(number, self.batches_per_epoch)
        shard = self._shard_of(epoch)
        return [(epoch, index) for index in shard[position * self.batch_size : (position + 1) * self.batch_size]]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        number = self.start
        while True:
            yield self.batch(number)
            number += 1


class EpochSeededDataset(Dataset):
    """Wraps a dataset so that sample ``(epoch, index)`` is reproducible in any worker process and order.

    Before reading ``dataset[index]`` it calls ``dataset.set_epoch(epoch)`` when the dataset has that method (the
    hidiff.data readers derive their augmentation generators from it), and it runs the read with torch's CPU, numpy's
    and python's global generators temporarily seeded from ``(seed, epoch, index)`` for datasets that draw from
    global state. The global states are restored afterwards, so reading a sample never disturbs the caller's streams.

    Args:
        dataset: a map-style dataset.
        seed: base seed of the per-sample global seeding.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> Any:
        epoch, index = key
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        sample_seed = derive_seed(self.seed, epoch, index)
        numpy_state, python_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed)  # CPU only: fork_rng restores only the CPU state here
            np.random.seed(sample_seed % 2**32)
            random.seed(sample_seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(numpy_state)
                random.setstate(python_state)
