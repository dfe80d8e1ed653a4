"""The training stream: the batches training and `cache build` both read, decoded once.

timm's loader carries one tensor beside the images. Here it means one of three things, and is
decoded in one place (`TrainingStream.prepare`) into the named fields of a `Batch`:

- a class index (the plain case),
- a sample index (`timm_kd.dataset_views.IndexedTargets`, for losses that keep per-sample state:
  CRD), mapped to its label with the dataset's labels,
- -1 for an unlabeled image (`timm_kd.unlabeled`), turned into the `labeled` mask.

Then mixup/cutmix runs, in the training process, in the epochs before `--mixup-off-epoch`. The
random streams are those of `timm_kd.reliability.reseed`: each epoch starts from (seed, epoch,
rank), each batch is mixed and trained after a reseed from (seed, epoch, rank, batch), so a batch's
views and mixing depend on its position only: a resumed run, and the teacher-output cache, see
exactly the uninterrupted stream.
"""

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Tuple

import torch

from .data import LoaderOptions
from .reliability import reseed
from .replay import resumable
from .run import ProcessSpec
from .unlabeled import labeled_mask


@dataclass
class Batch:
    """One training batch as the step sees it."""

    input: torch.Tensor
    target: torch.Tensor  # class indices, or dense rows after mixup/cutmix and smoothing
    index: Optional[torch.Tensor] = None  # sample indices, for losses with `needs_index`
    labeled: Optional[torch.Tensor] = None  # rows whose hard label is known (unlabeled images)

    def __len__(self) -> int:
        return self.input.shape[0]


def to_device(input, target, device, channels_last, dtype=None):
    input = input.to(device, dtype=dtype, non_blocking=True)
    target = target.to(device, non_blocking=True)
    if channels_last:
        input = input.contiguous(memory_format=torch.channels_last)
    return input, target


class TrainingStream:
    """Batches of a training loader over replayable views, on the device, decoded and mixed.

    `process` gives the seed, the accumulation window, the layout and the input dtype; `labels` (a
    device tensor of every sample's class) says the loader yields sample indices; `unlabeled` says
    a -1 marks an unlabeled image; `views` gives the epoch mixing stops at and the view cycle.
    """

    def __init__(
        self,
        loader: Any,
        mixup_fn: Optional[Callable] = None,
        *,
        device: torch.device,
        rank: int = 0,
        process: ProcessSpec = ProcessSpec(),
        labels: Optional[torch.Tensor] = None,
        unlabeled: bool = False,
        views: LoaderOptions = LoaderOptions(),
    ):
        self.loader, self.mixup_fn, self.device, self.rank = loader, mixup_fn, device, rank
        self.seed, self.grad_accum_steps = process.seed, process.grad_accum_steps
        self.channels_last = process.channels_last
        self.input_dtype = getattr(torch, process.model_dtype) if process.model_dtype else None
        self.labels, self.unlabeled = labels, unlabeled
        self.mixup_off_epoch, self.view_cycle = views.mixup_off_epoch, views.view_cycle

    def __len__(self) -> int:
        return len(self.loader)

    def is_update(self, batch_idx: int) -> bool:
        """Whether the optimizer steps after this batch (the end of an accumulation window)."""
        return batch_idx + 1 == len(self.loader) or (batch_idx + 1) % self.grad_accum_steps == 0

    def view_epoch(self, epoch: int) -> int:
        """The epoch whose views `epoch` replays: itself, or epoch mod N under --view-cycle N."""
        return epoch % self.view_cycle if self.view_cycle > 0 else epoch

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[Tuple[int, Batch]]:
        """(batch index, batch) of one epoch; its random streams start from (seed, epoch, rank) now.
        Under --view-cycle N the views (order, augmentation, mixing) are those of epoch mod N; what
        the step draws after (dropout) still follows the epoch itself.

        The first `skip_batches` (trained before a mid-epoch recovery checkpoint) are left out:
        a replayable loader's sampler starts after them (`timm_kd.replay.SlotSampler.start_at`)
        and nothing of them is loaded; any other loader yields them and they are dropped. Each
        batch is mixed after a reseed from (seed, epoch, rank, batch), so what loading drew, and
        what the consumer did between batches (a recovery checkpoint), changes nothing after."""
        views = self.view_epoch(epoch)
        reseed(self.seed, views, self.rank)
        set_loader_epoch(self.loader, views)
        set_mixup_epoch(self.mixup_fn, views, self.mixup_off_epoch)
        slots = resumable(self.loader)
        if slots is not None and skip_batches:
            slots.start_at(skip_batches)
            batches = enumerate(self.loader, start=skip_batches)
        else:
            batches = itertools.islice(enumerate(self.loader), skip_batches, None)
        return self._batches(epoch, views, batches)

    def _batches(self, epoch: int, views: int, batches: Iterator) -> Iterator[Tuple[int, Batch]]:
        for batch_idx, (input, target) in batches:
            reseed(self.seed, views, self.rank, batch_idx)
            batch = self.prepare(input, target)
            if views != epoch:  # the step's own draws are the epoch's, not the replayed one's
                reseed(self.seed, epoch, self.rank, batch_idx)
            yield batch_idx, batch

    def prepare(self, input: torch.Tensor, target: torch.Tensor) -> Batch:
        """Device, dtype and layout; the loader's second tensor decoded; mixup/cutmix."""
        input, target = to_device(input, target, self.device, self.channels_last, self.input_dtype)
        index = labeled = None
        if self.labels is not None:
            index, target = target, self.labels[target]
        if self.unlabeled:
            labeled, target = target >= 0, target.clamp(min=0)
        if self.mixup_fn is not None:
            input, target = self.mixup_fn(input, target)
        if labeled is not None:
            mixed = self.mixup_fn is not None and self.mixup_fn.mixup_enabled
            labeled = labeled_mask(labeled, mixed=mixed)
        return Batch(input, target, index, labeled)


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Tell the dataset and the (batch) sampler which epoch starts: distributed shuffling, repeated
    augmentation and scheduled resolutions draw from it (any other iterable of batches: nothing)."""
    dataset = getattr(loader, 'dataset', None)
    if hasattr(dataset, 'set_epoch'):
        dataset.set_epoch(epoch)
    batch_sampler = getattr(loader, 'batch_sampler', None)
    inner = getattr(batch_sampler, 'sampler', None)  # replay.SlotSampler, or timm's own
    for sampler in (batch_sampler, inner, getattr(loader, 'sampler', None)):
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
            return


def set_mixup_epoch(mixup_fn: Optional[Callable], epoch: int, off_epoch: int = 0) -> None:
    """Mix in `epoch` unless timm's --mixup-off-epoch (`off_epoch` > 0) has come: from then on
    the per-batch function keeps label smoothing only. Set at each epoch's start, so a stream that
    starts at any epoch (a resume, a cache build) mixes exactly where training does."""
    if mixup_fn is not None:
        mixup_fn.mixup_enabled = not (off_epoch and epoch >= off_epoch)
