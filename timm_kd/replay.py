"""Replayable training views: epoch e's batch b is the same tensors in every run with the same data flags,
whatever the number of loader workers.

timm's loader draws each image's augmentation (crop, flip, RandAugment ops and magnitudes, color
jitter, random erasing) from the random state of whichever worker happens to load it, so the views
depend on the worker count and on everything that ran before. Here the sampler tags every index with
its slot, (epoch, position in this process's epoch stream), and the dataset draws that sample's
augmentation from generators seeded by (seed, epoch, rank, position), inside a fork of the random
state so nothing else is disturbed. Mixup/cutmix runs in the training process after the per-update
reseed (`timm_kd.reliability.reseed`), so its mode, lambda and pairing are fixed by (seed,
epoch, update) too. Repeated augmentation needs nothing more: each copy of an image has its own
slot. timm's prefetcher (on unless --no-prefetcher) erases whole batches in the training process, on
the device, drawing from Python's `random` and the device's generator: there each batch's erasing is
seeded by (seed, epoch, rank, batch).

This is what makes a resumed run exact whatever `--workers`, and what the teacher-output cache
(`timm_kd.cache`) relies on: a cached target belongs to a slot, and the live run sees the same view
there.
"""

import contextlib
import random
from typing import Any, Iterator, Sequence, Tuple

import numpy as np
import torch

from .dataset_views import DatasetView

_MIX = 1_000_003  # a prime that spreads (seed, epoch, rank, position) over the seed space


def slot_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    return (((seed * _MIX + epoch) * _MIX + rank) * _MIX + position) % (2**32)


@contextlib.contextmanager
def seeded(seed: int, generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Python's, NumPy's and the given torch generators seeded with `seed`, and restored on exit."""
    states = random.getstate(), np.random.get_state(), [g.get_state() for g in generators]
    random.seed(seed)
    np.random.seed(seed)
    for g in generators:
        g.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        for g, state in zip(generators, states[2]):
            g.set_state(state)


class SlotSampler:
    """Wraps a loader's sampler: yields (epoch, position, index) instead of index. Runs in the main process."""

    def __init__(self, sampler: Any, rank: int = 0):
        self.sampler, self.rank, self.epoch = sampler, rank, 0
        self.passes = 0  # iterations started: a new one restarts the batch count of `BatchErasing`

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Tuple[int, int, int, int]]:
        self.passes += 1
        for position, index in enumerate(self.sampler):
            yield self.epoch, self.rank, position, index

    def __len__(self) -> int:
        return len(self.sampler)


class ReplayableViews(DatasetView):
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
        with seeded(
            slot_seed(self.seed, epoch, rank, position), [torch.default_generator]
        ):  # CUDA's: untouched
            return self.dataset[index]


class BatchErasing:
    """timm's prefetcher random erasing, seeded per batch by (seed, epoch, rank, batch index in the pass)."""

    def __init__(self, erasing: Any, slots: SlotSampler, seed: int, device: torch.device):
        self.erasing, self.slots, self.seed = erasing, slots, seed
        if device.type == 'cuda':
            self.generator = torch.cuda.default_generators[
                device.index if device.index is not None else torch.cuda.current_device()
            ]
        else:
            self.generator = torch.default_generator
        self.pass_, self.batch = None, 0

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        if self.pass_ != (self.slots.epoch, self.slots.passes):  # a new pass over the loader
            self.pass_, self.batch = (self.slots.epoch, self.slots.passes), 0
        seed = slot_seed(
            self.seed, self.slots.epoch, self.slots.rank, -1 - self.batch
        )  # apart from the samples'
        self.batch += 1
        with seeded(seed, [self.generator]):
            return self.erasing(input)


def make_replayable(loader: Any, rank: int = 0) -> bool:
    """Tag the indices of a training loader built over a `ReplayableViews` dataset with their slots; returns False
    (views stay timm's) for loaders without a plain batch sampler (scheduled batch sizes)."""
    inner = getattr(loader, 'loader', loader)  # timm's PrefetchLoader wraps the DataLoader
    batch_sampler = inner.batch_sampler
    if (
        not isinstance(inner.dataset, ReplayableViews)
        or type(batch_sampler) is not torch.utils.data.BatchSampler
    ):
        return False
    slots = batch_sampler.sampler = SlotSampler(batch_sampler.sampler, rank)
    if (
        getattr(loader, 'random_erasing', None) is not None
    ):  # timm's prefetcher erases batches on the device
        loader.random_erasing = BatchErasing(
            loader.random_erasing, slots, inner.dataset.seed, loader.device
        )
    return True
