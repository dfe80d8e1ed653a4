"""Datasets, loaders and mixup/cutmix for distillation, all built by timm.data.

The options are plain dataclasses whose fields carry timm train.py's flag names, so `timm_kd.train`
fills them from its flags and library users fill them by hand.
"""

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from timm.data import Mixup, create_dataset, create_loader

from .dataset_kinds import decodes_files
from .dataset_views import DatasetView, StratifiedSubset
from .decoding import DecodedImages
from .errors import KDError, flat
from .identity import IF_SET, NOT_IDENTITY
from .runtime import Process
from .unlabeled import ImageFiles, WithUnlabeled


@dataclass(frozen=True)
class DatasetOptions:
    """Where the images come from (timm's `create_dataset`
    arguments) and which fraction of them to train on."""

    # the dataset's files are identified relative to it
    data_dir: str = field(metadata=NOT_IDENTITY)
    dataset: str = ''
    train_split: str = 'train'
    val_split: str = field(default='validation', metadata=NOT_IDENTITY)
    class_map: str = ''
    dataset_download: bool = field(default=False, metadata=NOT_IDENTITY)
    train_num_samples: Optional[int] = None
    val_num_samples: Optional[int] = field(default=None, metadata=NOT_IDENTITY)
    input_img_mode: Optional[str] = None
    input_key: Optional[str] = None
    target_key: Optional[str] = None
    dataset_trust_remote_code: bool = field(default=False, metadata=NOT_IDENTITY)
    epoch_repeats: float = 0.0
    train_fraction: float = 1.0
    batch_size: int = 128
    seed: int = 42
    # a folder of images or a timm dataset spec: KD terms only (timm_kd.unlabeled)
    unlabeled_data: str = ''
    unlabeled_ratio: Optional[float] = None


@dataclass(frozen=True)
class LoaderOptions:
    """Batching, augmentation and mixup/cutmix of the training stream; the validation batch size."""

    batch_size: int = 128
    validation_batch_size: Optional[int] = field(default=None, metadata=NOT_IDENTITY)
    workers: int = field(default=4, metadata=NOT_IDENTITY)
    pin_mem: bool = field(default=False, metadata=NOT_IDENTITY)
    # each sample is seeded by its slot (`timm_kd.replay`), whatever seeded the worker
    worker_seeding: str = field(default='all', metadata=NOT_IDENTITY)
    # its views are timm's (not replayed; `timm_kd.replay.make_replayable`)
    use_multi_epochs_loader: bool = field(default=False, metadata=IF_SET)
    no_aug: bool = False
    train_crop_mode: Optional[str] = None
    scale: Sequence[float] = (0.08, 1.0)
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.4
    color_jitter_prob: Optional[float] = None
    grayscale_prob: Optional[float] = None
    gaussian_blur_prob: Optional[float] = None
    aa: Optional[str] = None
    aug_repeats: float = 0
    aug_splits: int = field(default=0, metadata=IF_SET)  # AugMix: views per image, in one batch
    reprob: float = 0.0
    remode: str = 'pixel'
    recount: int = 1
    resplit: bool = False
    train_interpolation: str = 'random'
    mixup: float = 0.0
    cutmix: float = 0.0
    cutmix_minmax: Optional[Sequence[float]] = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = 'batch'
    mixup_off_epoch: int = field(default=0, metadata=IF_SET)  # from this epoch on, no mixing
    smoothing: float = field(default=0.1, metadata=NOT_IDENTITY)  # the targets, not the images
    train_img_sizes: Optional[Sequence[int]] = None
    train_batch_sizes: Optional[Sequence[int]] = None
    train_size_probs: Optional[Sequence[float]] = None
    train_size_schedule: str = 'constant'
    train_size_schedule_spread: float = 0.65
    train_size_random_mix: float = 0.1
    train_batches_per_epoch: Optional[int] = None
    seed: int = 42
    epochs: int = field(default=300, metadata=NOT_IDENTITY)
    # epoch e replays epoch e mod N's views; each view epoch's views are the same without it
    view_cycle: int = field(default=0, metadata=NOT_IDENTITY)


# The folder names timm's create_dataset also accepts for a train / an evaluation split.
_SYNONYMS = (('train', 'training'), ('val', 'valid', 'validation', 'eval', 'evaluation'))


def check_split(root: str, split: str, flag: str) -> None:
    """One line when an ImageFolder root has no folder for `split` (nor one of timm's synonyms of
    it): timm would then read every image under the root, the other splits included."""
    if not os.path.isdir(root):
        return  # an ImageTar, or a timm dataset kind: its reader knows its splits
    name = split.split('[')[0]
    names = next((s for s in _SYNONYMS if name in s), (name,))
    if any(os.path.isdir(os.path.join(root, n)) for n in names):
        return
    folders = sorted(f for f in os.listdir(root) if os.path.isdir(os.path.join(root, f)))
    raise KDError(
        f'{flag} {split!r} is not a folder of {root!r} (it has: {", ".join(folders) or "none"}); '
        f'pass the split folder that exists'
    )


def create_datasets(opts: DatasetOptions, in_chans: int = 3) -> Tuple[Any, Optional[Any]]:
    """Train and eval datasets (ImageFolder/ImageTar
    when `dataset` is empty, else timm's `type/name`).

    The eval set is None when `val_split` is empty (timm's train.py then picks the best epoch by
    training loss).
    """
    if not opts.data_dir:
        raise KDError(
            'no dataset given; pass the dataset root as the first argument (or --data-dir DIR)'
        )
    if not opts.dataset and not os.path.isdir(opts.data_dir):
        raise KDError(
            f'dataset folder {opts.data_dir!r} does not exist; pass an ImageFolder root with '
            f'{opts.train_split}/ and {opts.val_split}/ sub-folders'
        )
    if not opts.dataset:
        check_split(opts.data_dir, opts.train_split, '--train-split')
        if opts.val_split:
            check_split(opts.data_dir, opts.val_split, '--val-split')
    common = dict(
        root=opts.data_dir,
        class_map=opts.class_map,
        download=opts.dataset_download,
        batch_size=opts.batch_size,
        input_img_mode=opts.input_img_mode or ('RGB' if in_chans == 3 else 'L'),
        input_key=opts.input_key,
        target_key=opts.target_key,
        trust_remote_code=opts.dataset_trust_remote_code,
    )
    try:
        train = create_dataset(
            opts.dataset,
            split=opts.train_split,
            is_training=True,
            seed=opts.seed,
            repeats=opts.epoch_repeats,
            num_samples=opts.train_num_samples,
            **common,
        )
        evaluation = (
            None
            if not opts.val_split
            else create_dataset(
                opts.dataset,
                split=opts.val_split,
                is_training=False,
                num_samples=opts.val_num_samples,
                **common,
            )
        )
    except (RuntimeError, OSError, AssertionError, ValueError) as e:
        raise KDError(
            f'cannot open dataset {opts.dataset or "ImageFolder"!r} at {opts.data_dir!r} '
            f'({flat(e, 160)}); check the path, --dataset and the split names'
        ) from None
    if len(train) == 0:
        raise KDError(f'the {opts.train_split!r} split at {opts.data_dir!r} holds no images')
    mode = common['input_img_mode']
    train, evaluation = (
        DecodedImages(d, mode) if decodes_files(d) else d for d in (train, evaluation)
    )
    if evaluation is not None and not opts.class_map:
        check_same_classes(train, evaluation, opts.train_split, opts.val_split)
    if opts.unlabeled_data:
        if os.path.isdir(opts.unlabeled_data):
            unlabeled = ImageFiles(opts.unlabeled_data, common['input_img_mode'])
        else:
            unlabeled = create_dataset(
                opts.unlabeled_data, split=opts.train_split, is_training=True, **common
            )
        labeled = (
            None
            if opts.train_fraction == 0
            else train
            if opts.train_fraction == 1
            else StratifiedSubset(train, opts.train_fraction, seed=opts.seed)
        )
        return WithUnlabeled(labeled, unlabeled, opts.unlabeled_ratio, seed=opts.seed), evaluation
    if opts.train_fraction < 1:
        train = StratifiedSubset(train, opts.train_fraction, seed=opts.seed)
    return train, evaluation


def dataset_class_names(dataset: Any) -> Optional[List[str]]:
    """The class names a dataset declares, in class-index order (ImageFolder readers and torchvision
    datasets), None if unknown."""
    while isinstance(dataset, DatasetView) and dataset.dataset is not None:
        dataset = dataset.dataset
    reader = getattr(dataset, 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None) or getattr(dataset, 'class_to_idx', None)
    if class_to_idx:
        return [str(name) for name, _ in sorted(class_to_idx.items(), key=lambda item: item[1])]
    classes = getattr(dataset, 'classes', None)
    return [str(c) for c in classes] if classes else None


def check_same_classes(train: Any, evaluation: Any, train_split: str, val_split: str) -> None:
    """One line when the training and validation splits name other classes (a class folder emptied
    or missing in one of them): their labels would then mean other classes. timm trains on; a
    `--class-map` that fixes the labels for both is the way to mean it."""
    names = dataset_class_names(train), dataset_class_names(evaluation)
    if None in names or names[0] == names[1]:
        return
    only = [sorted(set(a) - set(b)) for a, b in (names, names[::-1])]
    missing = '; '.join(
        f'missing from {split!r}: {", ".join(classes)}'
        for split, classes in ((train_split, only[1]), (val_split, only[0]))
        if classes
    )
    raise KDError(
        f'the training and validation splits have other classes ({missing or "in another order"}), '
        'so their labels would mean other classes; restore the missing images, or pass '
        '--class-map FILE to fix the labels of both'
    )


def dataset_num_classes(dataset: Any) -> Optional[int]:
    """Number of classes a dataset declares (ImageFolder
    readers and torchvision datasets), None if unknown."""
    names = dataset_class_names(dataset)
    return len(names) if names else None


def mixup_args(opts: LoaderOptions, num_classes: int) -> Optional[Dict[str, Any]]:
    """timm Mixup arguments, or None when neither mixup nor cutmix is on."""
    if not (opts.mixup > 0 or opts.cutmix > 0 or opts.cutmix_minmax is not None):
        return None
    return dict(
        mixup_alpha=opts.mixup,
        cutmix_alpha=opts.cutmix,
        cutmix_minmax=opts.cutmix_minmax,
        prob=opts.mixup_prob,
        switch_prob=opts.mixup_switch_prob,
        mode=opts.mixup_mode,
        label_smoothing=opts.smoothing,
        num_classes=num_classes,
    )


def _check_aug_splits(opts: LoaderOptions, mixing: bool, prefetcher: bool) -> None:
    """What timm's train.py asserts of AugMix splits (`--aug-splits N`: N views of each image in one
    batch, split-major, which timm's prefetcher collates), as one line each."""
    if opts.aug_splits == 1:
        raise KDError('--aug-splits 1 makes no sense (one view is no split); pass 2 or more, or 0')
    if opts.aug_splits > 1 and not prefetcher:
        raise KDError(
            f'--aug-splits {opts.aug_splits} needs the prefetcher, whose collate concatenates the '
            'views (as in timm); drop --no-prefetcher'
        )
    if opts.aug_splits > 1 and mixing:
        raise KDError(
            f'--aug-splits {opts.aug_splits} with mixup/cutmix: timm cannot mix AugMix splits '
            '(its collate would interleave them); drop --mixup/--cutmix or --aug-splits'
        )


def create_loaders(
    opts: LoaderOptions,
    train_set: Any,
    eval_set: Optional[Any],
    data_config: Dict[str, Any],
    num_classes: int,
    process: Process,
    prefetcher: bool = False,
    img_dtype: torch.dtype = torch.float32,
) -> Tuple[Any, Optional[Any], Optional[Callable]]:
    """Train loader, eval loader (None without an eval set), and the mixup function to apply per
    batch, for the device and the place among DDP processes of `process`.

    Mixup/cutmix always runs in the training process, after the loader (with the prefetcher too,
    where timm mixes in the workers' collate): there its random draws are fixed by the per-batch
    reseed, so the views replay (`timm_kd.replay`), and sample indices (CRD) can be mapped to labels
    first.
    """
    device, distributed = process.device, process.distributed
    if opts.aug_repeats and not distributed:
        raise KDError(
            f'--aug-repeats {opts.aug_repeats:g} needs several processes (torchrun): timm spreads '
            f'the copies of an image over them; pass --aug-repeats 0 to train in one process'
        )
    mix = mixup_args(opts, num_classes)
    _check_aug_splits(opts, mix is not None, prefetcher)
    mixup_fn = Mixup(**mix) if mix is not None else None
    train_interpolation = opts.train_interpolation
    if opts.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    common = dict(
        mean=data_config['mean'],
        std=data_config['std'],
        num_workers=opts.workers,
        distributed=distributed,
        pin_memory=opts.pin_mem,
        device=device,
        use_prefetcher=prefetcher,
        img_dtype=img_dtype,
    )
    train_loader = create_loader(
        train_set,
        input_size=data_config['input_size'],
        batch_size=opts.batch_size,
        is_training=True,
        no_aug=opts.no_aug,
        re_prob=opts.reprob,
        re_mode=opts.remode,
        re_count=opts.recount,
        re_split=opts.resplit,
        train_crop_mode=opts.train_crop_mode,
        scale=opts.scale,
        ratio=opts.ratio,
        hflip=opts.hflip,
        vflip=opts.vflip,
        color_jitter=opts.color_jitter,
        color_jitter_prob=opts.color_jitter_prob,
        grayscale_prob=opts.grayscale_prob,
        gaussian_blur_prob=opts.gaussian_blur_prob,
        auto_augment=opts.aa,
        num_aug_repeats=int(opts.aug_repeats),
        num_aug_splits=opts.aug_splits if opts.aug_splits > 1 else 0,
        interpolation=train_interpolation,
        worker_seeding=opts.worker_seeding,
        use_multi_epochs_loader=opts.use_multi_epochs_loader,
        input_size_choices=opts.train_img_sizes,
        batch_size_choices=opts.train_batch_sizes,
        batch_choice_weights=opts.train_size_probs,
        batch_choice_seed=opts.seed,
        batch_choice_schedule=opts.train_size_schedule,
        batch_schedule_epochs=opts.epochs if opts.train_size_schedule == 'progressive' else None,
        batch_schedule_spread=opts.train_size_schedule_spread,
        batch_schedule_random_mix=opts.train_size_random_mix,
        num_batches=opts.train_batches_per_epoch,
        **common,
    )
    eval_loader = (
        None
        if eval_set is None
        else create_loader(
            eval_set,
            input_size=data_config['input_size'],
            batch_size=opts.validation_batch_size or opts.batch_size,
            is_training=False,
            interpolation=data_config['interpolation'],
            crop_pct=data_config['crop_pct'],
            **common,
        )
    )
    return train_loader, eval_loader, mixup_fn


def create_eval_loader(
    dataset: str,
    root: str,
    split: str,
    data_config: Dict[str, Any],
    batch_size: int = 128,
    workers: int = 2,
) -> Any:
    """An evaluation loader of one split, preprocessed
    as `data_config` (a model's test-time config) says.

    As timm's validate.py: ImageFolder images are read in the model's channel mode ('L' for one
    channel).
    """
    mode = 'RGB' if data_config['input_size'][0] == 3 else 'L'
    if not dataset:
        check_split(root, split, '--split')
    images = create_dataset(dataset, root=root, split=split, is_training=False, input_img_mode=mode)
    return create_loader(
        images,
        input_size=data_config['input_size'],
        batch_size=batch_size,
        interpolation=data_config['interpolation'],
        mean=data_config['mean'],
        std=data_config['std'],
        crop_pct=data_config['crop_pct'],
        crop_mode=data_config.get('crop_mode', 'center'),
        num_workers=workers,
        use_prefetcher=False,
    )
