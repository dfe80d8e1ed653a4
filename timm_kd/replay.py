"""Replayable training views: epoch e's batch b is the same tensors in every run with the same data flags,
whatever the number of loader workers.

timm's loader draws each image's augmentation (crop, flip, RandAugment ops and magnitudes, color jitter, random
erasing) from the random state of whichever worker happens to load it, so the views depend on the worker count
and on everything that ran before. Here the sampler tags every index with its slot, (epoch, position in this
process's epoch stream), and the dataset draws that sample's augmentation from generators seeded by
(seed, epoch, rank, position), inside a fork of the random state so nothing else is disturbed. Mixup/cutmix runs
in the training process after the per-update reseed (`timm_kd.train.reliability.reseed`), so its mode, lambda
and pairing are fixed by (seed, epoch, update) too. Repeated augmentation needs nothing more: each copy of an
image has its own slot.

This is what makes a resumed run exact whatever `--workers`, and what the teacher-output cache
(`timm_kd.cache`) relies on: a cached target belongs to a slot, and the live run sees the same view there.
"""
import random
from typing import Any, Iterator, Tuple

import numpy as np
import torch

from .data import _DatasetView

_MIX = 1_000_003  # a prime that spreads (seed, epoch, rank, position) over the seed space


def slot_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    return (((seed * _MIX + epoch) * _MIX + rank) * _MIX + position) % (2 ** 32)


class SlotSampler:
    """Wraps a loader's sampler: yields (epoch, position, index) instead of index. Runs in the main process."""

    def __init__(self, sampler: Any, rank: int = 0):
        self.sampler, self.rank, self.epoch = sampler, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Tuple[int, int, int, int]]:
        for position, index in enumerate(self.sampler):
            yield self.epoch, self.rank, position, index

    def __len__(self) -> int:
        return len(self.sampler)


class ReplayableViews(_DatasetView):
    """A dataset whose item (epoch, rank, position, index) is `dataset[index]` with its augmentation seeded by the
    slot; a plain index (validation, tools) passes through unseeded."""

    def __init__(self, dataset: Any, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # targets, reader, filenames(): the wrapped dataset's
        if name in ('dataset', 'seed'):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        epoch, rank, position, index = key
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        seed = slot_seed(self.seed, epoch, rank, position)
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's stays the training loop's
        try:
            return self.dataset[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


def make_replayable(loader: Any, rank: int = 0) -> bool:
    """Tag the indices of a training loader built over a `ReplayableViews` dataset with their slots; returns False
    (views stay timm's) for loaders without a plain batch sampler (scheduled batch sizes)."""
    inner = getattr(loader, 'loader', loader)  # timm's PrefetchLoader wraps the DataLoader
    batch_sampler = inner.batch_sampler
    if not isinstance(inner.dataset, ReplayableViews) or type(batch_sampler) is not torch.utils.data.BatchSampler:
        return False
    batch_sampler.sampler = SlotSampler(batch_sampler.sampler, rank)
    return True
