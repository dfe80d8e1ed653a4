"""Datasets, loaders and mixup/cutmix from train_kd.py arguments, all built by timm.data."""
import argparse
import os
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader

from .errors import KDError


def create_datasets(args: argparse.Namespace) -> Tuple[Any, Any]:
    """Train and eval datasets (ImageFolder/ImageTar when --dataset is empty, else timm's `type/name`)."""
    if not args.data_dir:
        raise KDError('no dataset given; pass the dataset root as the first argument (or --data-dir DIR)')
    if not args.dataset and not os.path.isdir(args.data_dir):
        raise KDError(f'dataset folder {args.data_dir!r} does not exist; pass an ImageFolder root with '
                      f'{args.train_split}/ and {args.val_split}/ sub-folders')
    common = dict(root=args.data_dir, class_map=args.class_map, download=args.dataset_download,
                  batch_size=args.batch_size, seed=args.seed)
    try:
        train = create_dataset(args.dataset, split=args.train_split, is_training=True,
                               repeats=args.epoch_repeats, num_samples=args.train_num_samples, **common)
        evaluation = create_dataset(args.dataset, split=args.val_split, is_training=False,
                                    num_samples=args.val_num_samples, **common)
    except (RuntimeError, OSError, AssertionError, ValueError) as e:
        raise KDError(f'cannot open dataset {args.dataset or "ImageFolder"!r} at {args.data_dir!r} '
                      f'({" ".join(str(e).split())[:160]}); check the path, --dataset and the split names') from None
    if len(train) == 0:
        raise KDError(f'the {args.train_split!r} split at {args.data_dir!r} holds no images')
    if args.train_fraction < 1:
        train = StratifiedSubset(train, args.train_fraction, seed=args.seed)
    return train, evaluation


def dataset_num_classes(dataset: Any) -> Optional[int]:
    """Number of classes a dataset declares (ImageFolder readers and torchvision datasets), None if unknown."""
    while isinstance(dataset, _DatasetView):
        dataset = dataset.dataset
    reader = getattr(dataset, 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None) or getattr(dataset, 'class_to_idx', None)
    if class_to_idx:
        return len(class_to_idx)
    classes = getattr(dataset, 'classes', None)
    return len(classes) if classes else None


def mixup_args(args: argparse.Namespace, num_classes: int) -> Optional[Dict[str, Any]]:
    """timm Mixup/FastCollateMixup arguments, or None when neither mixup nor cutmix is on."""
    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    return dict(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                label_smoothing=args.smoothing, num_classes=num_classes)


def create_loaders(
        args: argparse.Namespace,
        train_set: Any,
        eval_set: Any,
        data_config: Dict[str, Any],
        num_classes: int,
        device: torch.device,
) -> Tuple[Any, Any, Optional[Callable]]:
    """Train loader, eval loader, and the mixup function to apply per batch (None when the collate mixes).

    Mixing happens in the training loop, not in the collate, when the train set yields sample indices.
    """
    mix = mixup_args(args, num_classes)
    collate_fn, mixup_fn = None, None
    if mix is not None:
        if args.prefetcher and not isinstance(train_set, IndexedTargets):
            collate_fn = FastCollateMixup(**mix)
        else:
            mixup_fn = Mixup(**mix)
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    common = dict(input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
                  num_workers=args.workers, distributed=args.distributed, pin_memory=args.pin_mem,
                  device=device, use_prefetcher=args.prefetcher)
    train_loader = create_loader(
        train_set, batch_size=args.batch_size, is_training=True, no_aug=args.no_aug,
        re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        num_aug_repeats=int(args.aug_repeats), interpolation=train_interpolation, collate_fn=collate_fn,
        worker_seeding=args.worker_seeding, **common)
    eval_loader = create_loader(
        eval_set, batch_size=args.validation_batch_size or args.batch_size, is_training=False,
        interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'], **common)
    return train_loader, eval_loader, mixup_fn


def dataset_targets(dataset: Any) -> torch.Tensor:
    """The class index of every sample, read from the dataset's metadata (no image is decoded).

    Knows timm's ImageDataset (reader.samples / reader.targets) and torchvision datasets (.targets).
    """
    reader = getattr(dataset, 'reader', None)
    for source in (getattr(dataset, 'targets', None), getattr(reader, 'targets', None)):
        if source is not None:
            return torch.as_tensor(list(source), dtype=torch.long)
    samples = getattr(reader, 'samples', None) or getattr(dataset, 'samples', None)
    if samples is not None:
        return torch.as_tensor([s[1] for s in samples], dtype=torch.long)
    raise KDError(f'cannot read the labels of {type(dataset).__name__} without loading it; this needs an '
                  f'ImageFolder or a torchvision dataset')


class _DatasetView(torch.utils.data.Dataset):
    """A wrapper over a dataset; the transform timm's loader assigns to it goes to the wrapped dataset."""
    dataset: Any

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value) -> None:
        self.dataset.transform = value


class IndexedTargets(_DatasetView):
    """Yields (image, sample index) instead of (image, label), so losses that keep per-sample state (CRD's
    memory bank) know which images are in the batch; the training loop maps the index back to its label with
    `targets` before mixup."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.targets = dataset_targets(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], index


class StratifiedSubset(_DatasetView):
    """A seeded, class-stratified fraction of a dataset (VanillaKD's 30% / 60% ImageNet-1k subsets, Table 13).

    Each class keeps round(fraction * its size) samples (at least one), drawn with `seed`, so the subset has the
    full set's class balance and is the same on every rank and every run.
    """

    def __init__(self, dataset: Any, fraction: float, seed: int = 0):
        if not 0 < fraction <= 1:
            raise KDError(f'--train-fraction must be in (0, 1], got {fraction}')
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
