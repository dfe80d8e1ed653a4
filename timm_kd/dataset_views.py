"""Datasets seen through a wrapper: the labels of any dataset read without decoding images, a seeded
class-stratified subset, and sample indices in place of labels (losses that keep per-sample state).

`DatasetView` is the base of every wrapper (here, in `timm_kd.unlabeled` and `timm_kd.replay`): the
transform timm's loader assigns to it goes to the wrapped dataset.
"""

from typing import Any

import torch

from .errors import KDError


def dataset_targets(dataset: Any) -> torch.Tensor:
    """The class index of every sample, read from the dataset's metadata (no image is decoded).

    Knows timm's ImageDataset (reader.samples / reader.targets, a `hfds/` reader's label column)
    and torchvision datasets (.targets).
    """
    reader = getattr(dataset, 'reader', None)
    for source in (getattr(dataset, 'targets', None), getattr(reader, 'targets', None)):
        if source is not None:
            return torch.as_tensor(list(source), dtype=torch.long)
    samples = getattr(reader, 'samples', None) or getattr(dataset, 'samples', None)
    if samples is not None:
        return torch.as_tensor([s[1] for s in samples], dtype=torch.long)
    table, key = getattr(reader, 'dataset', None), getattr(reader, 'label_key', None)
    if table is not None and key and not getattr(reader, 'remap_class', False):  # timm's hfds/
        return torch.as_tensor(table[key], dtype=torch.long)  # one column, no image decoded
    raise KDError(
        f'cannot read the labels of {type(dataset).__name__} without loading it; this needs an '
        f'ImageFolder or a torchvision dataset'
    )


class DatasetView(torch.utils.data.Dataset):
    """A wrapper over a dataset; the transform timm's
    loader assigns to it goes to the wrapped dataset."""

    dataset: Any

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value) -> None:
        self.dataset.transform = value


class IndexedTargets(DatasetView):
    """Yields (image, sample index) instead of (image, label), so losses that keep per-sample state
    (CRD's memory bank) know which images are in the batch; the training loop maps the index back to
    its label with `targets` before mixup."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.targets = dataset_targets(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], index


class StratifiedSubset(DatasetView):
    """A seeded, class-stratified fraction of a dataset
    (VanillaKD's 30% / 60% ImageNet-1k subsets, Table 13).

    Each class keeps round(fraction * its size) samples (at least one), drawn with `seed`, so the
    subset has the full set's class balance and is the same on every rank and every run.
    """

    def __init__(self, dataset: Any, fraction: float, seed: int = 0):
        if not 0 < fraction <= 1:
            raise KDError(
                f'--train-fraction must be in (0, 1] (0 only with --unlabeled-data), got {fraction}'
            )
        self.dataset = dataset
        targets = dataset_targets(dataset)
        g = torch.Generator().manual_seed(seed)
        keep = []
        for c in targets.unique():
            members = (targets == c).nonzero().flatten()
            n = max(1, round(fraction * len(members)))
            keep.append(members[torch.randperm(len(members), generator=g)[:n]])
        self.indices = torch.cat(keep).sort().values
        self.targets = targets[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]
