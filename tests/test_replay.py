"""Replayable views: the same batches, augmentation included, whatever the number of loader workers."""

import random

import torch

from timm_kd.cli.train.build import dataset_options, loader_options
from timm_kd.cli.train.config import parse_args
from timm_kd.data import create_datasets, create_loaders, set_loader_epoch
from timm_kd.reliability import reseed
from timm_kd.replay import ReplayableViews, make_replayable

AUG = [
    '--aa',
    'rand-m9-mstd0.5',
    '--reprob',
    '0.5',
    '--color-jitter',
    '0.4',
    '--scale',
    '0.2',
    '1.0',
    '-b',
    '8',
]


def _epoch_batches(image_folder, workers, epoch, extra=(), prefetcher=False, between=0):
    args, _ = parse_args([image_folder, *AUG, '-j', str(workers), *extra])
    train, _ = create_datasets(dataset_options(args))
    cfg = dict(
        input_size=(3, 32, 32),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        interpolation='bilinear',
        crop_pct=1.0,
    )
    loader, _, _ = create_loaders(
        loader_options(args),
        ReplayableViews(train, seed=7),
        None,
        cfg,
        3,
        torch.device('cpu'),
        prefetcher=prefetcher,
    )
    assert make_replayable(loader)
    torch.rand(workers + 1)  # what the process drew before the epoch does not matter
    reseed(7, epoch)  # as the training loop does at each epoch start: it fixes the sampler's order
    set_loader_epoch(loader, epoch)
    batches = []
    for x, y in loader:
        batches.append((x.clone(), y.clone()))
        (
            random.random(),
            torch.rand(between),
        )  # what a training step draws (dropout, ...) between batches
    return batches


def test_views_do_not_depend_on_the_number_of_workers(image_folder):
    serial = _epoch_batches(image_folder, 0, epoch=2)
    parallel = _epoch_batches(image_folder, 2, epoch=2)
    assert len(serial) == len(parallel) == 6
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        assert torch.equal(xs, xp) and torch.equal(ys, yp)


def test_the_prefetchers_batch_erasing_replays_too(image_folder):
    """timm's prefetcher (CUDA; it runs on the CPU too) erases whole batches in the training process."""
    plain = _epoch_batches(image_folder, 0, epoch=1, prefetcher=True)
    other = _epoch_batches(image_folder, 2, epoch=1, prefetcher=True, between=5)
    unerased = _epoch_batches(image_folder, 0, epoch=1, prefetcher=True, extra=['--reprob', '0'])
    for (xa, ya), (xb, yb) in zip(plain, other):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    erased = torch.cat([(a != b).flatten(1).any(1) for (a, _), (b, _) in zip(plain, unerased)])
    assert (
        0.2 < erased.float().mean() < 0.8
    )  # --reprob 0.5: about half the images have an erased patch


def test_views_change_with_the_epoch_and_the_seed(image_folder):
    a, b = _epoch_batches(image_folder, 0, epoch=2), _epoch_batches(image_folder, 0, epoch=3)
    assert not torch.equal(a[0][0], b[0][0])


def test_a_plain_index_is_the_unseeded_dataset(image_folder):
    args, _ = parse_args([image_folder])
    train, _ = create_datasets(dataset_options(args))
    views = ReplayableViews(train, seed=0)
    assert len(views) == len(train) and views[3][1] == train[3][1] and views.reader is train.reader
