"""Replayable training views: epoch e's batch b is the same tensors in
every run with the same data flags, whatever the number of loader workers.

timm's loader draws each image's augmentation (crop, flip, RandAugment ops and magnitudes, color
jitter, random erasing) from the random state of whichever worker happens to load it, so the views
depend on the worker count and on everything that ran before. Here the sampler tags every index
with its slot, (epoch, position in this process's epoch stream), and the dataset seeds that
sample's augmentation from (seed, epoch, rank, position) just before loading it. Mixup/cutmix runs
in the training process after the per-batch reseed (`timm_kd.stream`), so its mode, lambda and
pairing are fixed by (seed, epoch, batch) too. Repeated augmentation needs nothing more: each copy
of an image has its own slot. timm's prefetcher (on unless --no-prefetcher) erases whole batches
in the training process, on the device, drawing from Python's `random` and the device's
generator: there each batch's erasing is seeded by (seed, epoch, rank, batch).

A mid-epoch resume starts the sampler at the first untrained batch (`SlotSampler.start_at`): the
skipped positions are counted, never loaded. Webdataset shards (`--dataset wds/`), read as a
stream, replay by their fixed order instead (`ReplayableShards`).

This is what makes a resumed run exact whatever `--workers`, and what the teacher-output cache
(`timm_kd.cache`) relies on: a cached target belongs to a slot, and the live run sees the same view
there.
"""

import hashlib
import multiprocessing
import random
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, RandomSampler, get_worker_info

from .dataset_kinds import replays_by_index, streams_shards
from .dataset_views import DatasetView
from .decoding import decoded_images

_MIX = 1_000_003  # a prime that spreads (seed, epoch, rank, position) over the seed space
_ORDER = -(2**31)  # the position that seeds an epoch's sample order (no batch or worker reaches it)


def slot_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    return (((seed * _MIX + epoch) * _MIX + rank) * _MIX + position) % (2**32)


def seed_all(seed: int, generator: torch.Generator) -> None:
    """Python's, NumPy's and the given torch generator seeded with `seed`, nothing restored.

    In a loader worker nothing else draws from them; in the training process (`--workers 0`,
    timm's prefetcher) the stream reseeds before each batch's mixing and step (`timm_kd.stream`),
    so what loading left behind is never read. Saving and restoring the three states would cost
    ~110 us per sample (NumPy's legacy state ~90 us); seeding them costs ~7 us.
    """
    random.seed(seed)
    np.random.seed(seed)
    generator.manual_seed(seed)


class SlotSampler:
    """Wraps a loader's sampler: yields (epoch, rank, position, index) instead of index. Runs in the
    main process.

    The order itself must be a function of (seed, epoch, rank) too. A `RandomSampler` (one process,
    timm's loader) draws its permutation from the process's default generator when its pass starts,
    and what that generator drew before depends on the worker count: a new `-j 0` iterator draws a
    worker base seed each epoch, a persistent workers' iterator only once. So the sampler gets a
    generator of its own, seeded at every pass. `DistributedSampler` and timm's `RepeatAugSampler`
    order by (their seed, epoch) already.
    """

    def __init__(self, sampler: Any, rank: int = 0, batch_size: int = 1, seed: int = 0):
        self.sampler, self.rank, self.batch_size, self.epoch = sampler, rank, batch_size, 0
        self.seed = seed
        self.passes = 0  # iterations started: a new one restarts the batch count of `BatchErasing`
        self.first_batch = 0  # the batch the current pass starts at
        self._start = 0
        self._generator = None
        if isinstance(sampler, RandomSampler) and sampler.generator is None:
            self._generator = sampler.generator = torch.Generator()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def start_at(self, batch: int) -> None:
        """The next pass starts at `batch`: the positions before it are skipped, not loaded."""
        self._start = batch

    def order(self) -> List[int]:
        """The sample indices of this epoch's pass, in slot order."""
        if self._generator is not None:
            self._generator.manual_seed(slot_seed(self.seed, self.epoch, self.rank, _ORDER))
        return list(self.sampler)

    def __iter__(self) -> Iterator[Tuple[int, int, int, int]]:
        self.passes += 1
        self.first_batch, self._start = self._start, 0
        skip = self.first_batch * self.batch_size
        epoch, rank = self.epoch, self.rank
        for position, index in enumerate(self.order()):
            if position >= skip:
                yield epoch, rank, position, index

    def __len__(self) -> int:
        return len(self.sampler)


class ReplayableViews(DatasetView):
    """A dataset whose item (epoch, rank, position, index) is `dataset[index]` with its
    augmentation seeded by the slot; a plain index (validation, tools) passes through unseeded."""

    def __init__(self, dataset: Any, seed: int):
        self.dataset, self.seed = dataset, seed
        self.images = decoded_images(dataset)  # told the epoch, for its checks' messages

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # targets, reader, filenames(): the wrapped dataset's
        if name in ('dataset', 'seed', 'images'):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        epoch, rank, position, index = key
        seed_all(slot_seed(self.seed, epoch, rank, position), torch.default_generator)
        if self.images is not None:
            self.images.epoch = epoch
        return self.dataset[index]


class ReplayableShards(DatasetView, IterableDataset):
    """timm's iterable webdataset input (`--dataset wds/NAME`) with its stream and each sample's
    augmentation fixed by (seed, epoch, rank, position).

    A webdataset is read in order, shard by shard, by each loader worker: there is no
    `dataset[index]` to seed by slot. The stream is fixed instead. timm's reader shuffles the
    shard list from (seed, epoch) and deals the shards to the global workers (rank x loader
    worker); here its sample-shuffle buffer, which timm seeds once per worker process, is rebuilt
    at every pass from (seed, epoch, rank, worker). The DataLoader takes one batch from each worker
    in turn, so sample k of worker w of W sits at position ((k // B) * W + w) * B + k % B of this
    rank's epoch stream (batch size B): its augmentation is seeded from that slot just before it
    is transformed. Epoch e's batch b is therefore the same tensors in every run with the same
    data flags, world size and `--workers` (for this input the cache's fingerprint holds all
    three). A mid-epoch resume at batch S renumbers the workers so that the loader's first batch
    is batch S: each worker reads and decodes its records before that point (a stream cannot seek)
    but does not augment them.
    """

    def __init__(self, dataset: Any, seed: int, rank: int = 0):
        self.dataset, self.seed, self.rank = dataset, seed, rank
        self.batch_size = 1  # the loader's, set by `timm_kd.replay.make_replayable`
        self.epoch, self.passes = 0, 0
        self._start = multiprocessing.Value('q', 0)  # shared with persistent loader workers

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # reader, set_loader_cfg, ...: the wrapped dataset's
        if name in ('dataset', 'seed', 'rank'):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def set_epoch(self, epoch: int) -> None:
        """A new pass starts at batch 0 of `epoch` (unless `start_at` follows)."""
        self.epoch, self.passes = epoch, self.passes + 1
        self._start.value = 0
        self.dataset.set_epoch(epoch)  # timm's reader shares it with its workers

    def start_at(self, batch: int) -> None:
        self._start.value = batch

    @property
    def first_batch(self) -> int:
        return self._start.value

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        reader = self.dataset.reader
        info = get_worker_info()
        workers, physical = (info.num_workers, info.id) if info is not None else (1, 0)
        epoch, start = reader.epoch_count.value, self._start.value
        # renumbered: the worker whose batch the loader asks for first holds batch `start`
        worker = (physical + start) % workers
        skip = (physical + start) // workers * self.batch_size
        self._rebuild_reader(reader, info, workers, worker, epoch)
        transform, target_transform = self.dataset.transform, self.dataset.target_transform
        for k, (image, target) in enumerate(reader):
            if k < skip:
                continue
            batch, offset = divmod(k, self.batch_size)
            position = (batch * workers + worker) * self.batch_size + offset
            seed_all(slot_seed(self.seed, epoch, self.rank, position), torch.default_generator)
            if transform is not None:
                image = transform(image)
            if target_transform is not None:
                target = target_transform(target)
            yield image, target

    def _rebuild_reader(
        self, reader: Any, info: Any, workers: int, worker: int, epoch: int
    ) -> None:
        """timm's reader pipeline for global worker (rank, `worker`), its sample shuffle seeded from
        (seed, epoch, rank, worker) instead of once per worker process."""
        reader.worker_info = info if info is not None else 'main process'  # skips timm's own setup
        reader.worker_id, reader.num_workers = worker, workers
        reader.worker_seed = slot_seed(self.seed, epoch, self.rank, -1 - worker)
        reader.global_num_workers = reader.dist_num_replicas * workers
        reader.global_worker_id = reader.dist_rank * workers + worker
        reader.ds = None
        reader._lazy_init()


class BatchErasing:
    """timm's prefetcher random erasing, seeded per batch by (seed, epoch, rank, batch index in the
    pass), its noise drawn on the CPU.

    timm draws the erased pixels from the device's generator, whose stream differs between the CPU
    and CUDA for one seed (CUDA's kernels may also split a draw by the GPU's size): a cache built
    on one device would then answer for other pixels on another. Drawn on the CPU and copied
    into the device batch, the views are the same on every device.
    """

    def __init__(self, erasing: Any, slots: SlotSampler, seed: int):
        self.erasing, self.slots, self.seed = erasing, slots, seed
        erasing.device = torch.device('cpu')  # where timm's `_get_pixels` draws the noise
        self.pass_, self.batch = None, 0

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        if self.pass_ != (self.slots.epoch, self.slots.passes):  # a new pass over the loader
            self.pass_ = self.slots.epoch, self.slots.passes
            self.batch = self.slots.first_batch
        # apart from the samples'
        seed = slot_seed(self.seed, self.slots.epoch, self.slots.rank, -1 - self.batch)
        self.batch += 1
        seed_all(seed, torch.default_generator)
        return self.erasing(input)


def stream_readers(dataset: Any, workers: int) -> Optional[int]:
    """How many readers order an epoch of `dataset`: None for map-style input, which replays the
    same whatever `--workers`; for a stream, its loader workers (`ReplayableShards` deals the
    records to them), 0 counting as 1 because the main process then reads as one worker."""
    return None if replays_by_index(dataset) else max(1, workers)


def replayable_views(dataset: Any, seed: int, rank: int = 0) -> Any:
    """The training set as replayable views: `ReplayableViews` over a map-style dataset,
    `ReplayableShards` over webdataset shards, and any other stream (timm's hfids/, tfds/) as it is,
    with timm's views (`make_replayable` then says False)."""
    if replays_by_index(dataset):
        return ReplayableViews(dataset, seed)
    if streams_shards(dataset):
        return ReplayableShards(dataset, seed, rank)
    return dataset


def resumable(loader: Any) -> Optional[Any]:
    """What starts a replayable loader's next pass at a batch (`start_at`): its `SlotSampler` or
    its `ReplayableShards`; None for any other loader."""
    inner = getattr(loader, 'loader', loader)  # timm's PrefetchLoader wraps the DataLoader
    if isinstance(getattr(inner, 'dataset', None), ReplayableShards):
        return inner.dataset
    sampler = getattr(getattr(inner, 'batch_sampler', None), 'sampler', None)
    return sampler if isinstance(sampler, SlotSampler) else None


def order_digest(loader: Any, epoch: int) -> Optional[str]:
    """A digest of the sample indices of `epoch`'s pass, in slot order, for a loader over
    `ReplayableViews` (None for any other): what the teacher cache records per shard and a cached
    run compares, so that answers are never matched to other samples."""
    slots = resumable(loader)
    if not isinstance(slots, SlotSampler):
        return None
    saved = slots.epoch
    slots.set_epoch(epoch)
    order = np.asarray(slots.order(), dtype=np.int64)
    slots.set_epoch(saved)
    return hashlib.sha256(order.tobytes()).hexdigest()[:16]


def make_replayable(loader: Any, rank: int = 0) -> bool:
    """Tag the indices of a training loader built over a `ReplayableViews` dataset with their slots
    (over `ReplayableShards`: tell it the batch size); returns False (views stay timm's) for
    loaders without a plain batch sampler (scheduled batch sizes) and other streams."""
    inner = getattr(loader, 'loader', loader)  # timm's PrefetchLoader wraps the DataLoader
    batch_sampler = inner.batch_sampler
    if isinstance(inner.dataset, ReplayableShards):
        slots = inner.dataset
        slots.batch_size = inner.batch_size
    elif (
        isinstance(inner.dataset, ReplayableViews)
        and type(batch_sampler) is torch.utils.data.BatchSampler
    ):
        slots = SlotSampler(
            batch_sampler.sampler, rank, batch_sampler.batch_size, inner.dataset.seed
        )
        batch_sampler.sampler = slots
    else:
        return False
    if getattr(loader, 'random_erasing', None) is not None:  # the prefetcher erases on the device
        loader.random_erasing = BatchErasing(loader.random_erasing, slots, inner.dataset.seed)
    return True
