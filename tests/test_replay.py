"""Replayable views: the same batches, augmentation
included, whatever the number of loader workers."""

import random

import pytest
import torch

from timm_kd.cli.train.config import parse_args
from timm_kd.cli.train.parse import dataset_options, loader_options
from timm_kd.data import create_datasets, create_loaders
from timm_kd.dataset_views import DatasetView
from timm_kd.reliability import reseed
from timm_kd.replay import ReplayableViews, make_replayable, replayable_views
from timm_kd.run import ProcessSpec
from timm_kd.runtime import Process
from timm_kd.stream import TrainingStream, set_loader_epoch

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


def _stream(root, flags, workers=0, prefetcher=True, wrap=lambda dataset: dataset):
    """A training stream over replayable views of `root`, as training builds it (32 px)."""
    args, _ = parse_args([root, *AUG, '-j', str(workers), *flags])
    train, _ = create_datasets(dataset_options(args))
    cfg = dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3,
               interpolation='bilinear', crop_pct=1.0)  # fmt: skip
    loader, _, mixup = create_loaders(
        loader_options(args), replayable_views(wrap(train), seed=7), None, cfg, 3,
        Process(torch.device('cpu')), prefetcher,
    )  # fmt: skip
    assert make_replayable(loader)
    return TrainingStream(
        loader, mixup, device=torch.device('cpu'), process=ProcessSpec(seed=7),
        views=loader_options(args),
    ), train  # fmt: skip


def _epoch_batches(image_folder, workers, epoch, extra=(), prefetcher=False, between=0):
    loader = _stream(image_folder, extra, workers, prefetcher)[0].loader
    torch.rand(workers + 1)  # what the process drew before the epoch does not matter
    reseed(7, epoch)  # as the training loop does at each epoch start: it fixes the sampler's order
    set_loader_epoch(loader, epoch)
    batches = []
    for x, y in loader:
        batches.append((x.clone(), y.clone()))
        # what a training step draws (dropout, ...) between batches
        (
            random.random(),
            torch.rand(between),
        )
    return batches


def test_views_do_not_depend_on_the_number_of_workers(image_folder):
    serial = _epoch_batches(image_folder, 0, epoch=2)
    parallel = _epoch_batches(image_folder, 2, epoch=2)
    assert len(serial) == len(parallel) == 6
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        assert torch.equal(xs, xp) and torch.equal(ys, yp)


def _run_epochs(stream, epochs, skip=0):
    """Consecutive epochs on one stream, as training reads them (one loader, persistent workers,
    a step's random draws between batches); the first epoch resumes after `skip` batches."""
    out = []
    for n, epoch in enumerate(epochs):
        for i, batch in stream.epoch(epoch, skip if n == 0 else 0):
            out.append((epoch, i, batch.input.clone(), batch.target.clone()))
            random.random(), torch.rand(3)  # dropout, drop-path, ...
    return out


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (ea, ia, xa, ya), (eb, ib, xb, yb) in zip(a, b):
        assert (ea, ia) == (eb, ib)
        assert torch.equal(xa, xb) and torch.equal(ya, yb), f'epoch {ea} batch {ia} differs'


MIXED = ['--mixup', '0.4', '--cutmix', '1.0']


@pytest.mark.parametrize('prefetcher', [False, True])
def test_consecutive_epochs_replay_whatever_the_workers(image_folder, prefetcher):
    """Epoch after epoch on one loader, with persistent workers: every batch of epochs 0-2 (views,
    erasing, order, mixing) is the same with 0, 1, 2 and 3 loader workers."""
    runs = {w: _run_epochs(_stream(image_folder, MIXED, w, prefetcher)[0], range(3))
            for w in (0, 1, 2, 3)}  # fmt: skip
    assert len(runs[0]) == 18
    for workers in (1, 2, 3):
        _assert_same_batches(runs[0], runs[workers])
    assert not torch.equal(runs[0][0][2], runs[0][6][2])  # epoch 1 is not epoch 0 again


@pytest.mark.parametrize('workers,resumed_workers', [(2, 0), (0, 3), (2, 2)])
def test_a_resume_mid_epoch_with_other_workers_is_the_uninterrupted_run(
    image_folder, workers, resumed_workers
):
    """A run killed in epoch 1 after 2 batches resumes in a new process (a new loader) with any
    `-j`, and its epochs 1 and 2 are the uninterrupted run's."""
    full = _run_epochs(_stream(image_folder, MIXED, workers)[0], range(3))
    resumed = _run_epochs(_stream(image_folder, MIXED, resumed_workers)[0], (1, 2), skip=2)
    _assert_same_batches(full[6 + 2 :], resumed)


def test_the_prefetchers_batch_erasing_replays_too(image_folder):
    """timm's prefetcher (CUDA; it runs on the CPU too)
    erases whole batches in the training process."""
    plain = _epoch_batches(image_folder, 0, epoch=1, prefetcher=True)
    other = _epoch_batches(image_folder, 2, epoch=1, prefetcher=True, between=5)
    unerased = _epoch_batches(image_folder, 0, epoch=1, prefetcher=True, extra=['--reprob', '0'])
    for (xa, ya), (xb, yb) in zip(plain, other):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    erased = torch.cat([(a != b).flatten(1).any(1) for (a, _), (b, _) in zip(plain, unerased)])
    # --reprob 0.5: about half the images have an erased patch
    assert 0.2 < erased.float().mean() < 0.8


def test_views_change_with_the_epoch_and_the_seed(image_folder):
    a, b = _epoch_batches(image_folder, 0, epoch=2), _epoch_batches(image_folder, 0, epoch=3)
    assert not torch.equal(a[0][0], b[0][0])


def test_a_plain_index_is_the_unseeded_dataset(image_folder):
    args, _ = parse_args([image_folder])
    train, _ = create_datasets(dataset_options(args))
    views = ReplayableViews(train, seed=0)
    assert len(views) == len(train) and views[3][1] == train[3][1] and views.reader is train.reader


class _CountingLoads(DatasetView):
    """Records which sample indices are loaded."""

    def __init__(self, dataset, loaded):
        self.dataset, self.loaded = dataset, loaded

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.loaded.append(index)
        return self.dataset[index]


def test_a_mid_epoch_resume_loads_no_skipped_image_and_replays_the_rest(image_folder):
    loaded = []
    stream, train = _stream(
        image_folder, ['--mixup', '0.8'], wrap=lambda d: _CountingLoads(d, loaded)
    )
    full = _batches(stream, 1)
    loaded.clear()
    resumed = _batches(stream, 1, skip=4)
    skipped = [index for index in range(len(train)) if index not in loaded]
    assert len(skipped) == 4 * 8 and len(loaded) == len(train) - 4 * 8
    assert [i for i, *_ in resumed] == [4, 5]
    for (i, x, y), (j, xr, yr) in zip(full[4:], resumed):
        assert i == j and torch.equal(x, xr) and torch.equal(y, yr)


def _wds_stream(wds_shards, workers, prefetcher=True):
    return _stream(wds_shards, ['--dataset', 'wds/tiny'], workers, prefetcher)[0]


def _batches(stream, epoch, skip=0):
    return [(i, b.input.clone(), b.target.clone()) for i, b in stream.epoch(epoch, skip)]


def test_webdataset_shards_replay_and_resume_mid_epoch(wds_shards):
    """`--dataset wds/`: the same stream in a new process-like loader, and from any batch on."""
    full = _batches(_wds_stream(wds_shards, 2), epoch=1)
    again = _wds_stream(wds_shards, 2)
    assert len(full) == 6
    for skip in (0, 3):  # 3: the first batch comes from the second worker
        resumed = _batches(again, 1, skip)
        assert [i for i, *_ in resumed] == list(range(skip, 6))
        for (_, x, y), (_, xr, yr) in zip(full[skip:], resumed):
            assert torch.equal(x, xr) and torch.equal(y, yr)
    assert not torch.equal(_batches(again, 2)[0][1], full[0][1])  # another epoch, other views


def test_webdataset_epoch_holds_the_samples_timms_loader_reads(wds_shards):
    from timm.data import create_dataset, create_loader

    ours = torch.cat([y for _, _, y in _batches(_wds_stream(wds_shards, 2, False), epoch=0)])
    timms = create_dataset('wds/tiny', wds_shards, split='train', is_training=True, batch_size=8)
    loader = create_loader(timms, (3, 32, 32), 8, is_training=True, num_workers=2,
                           use_prefetcher=False)  # fmt: skip
    theirs = torch.cat([y for _, y in loader])
    assert len(ours) == len(theirs) == 48 and torch.equal(ours.bincount(), theirs.bincount())


def test_other_streams_keep_timms_views_and_say_they_do_not_replay():
    """hfids/, tfds/: iterable input without webdataset's fixed order."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ((torch.zeros(3), 0) for _ in range(4))

    stream = Stream()
    assert replayable_views(stream, seed=0) is stream
    loader = torch.utils.data.DataLoader(stream, batch_size=2)
    assert not make_replayable(loader)


def test_the_prefetchers_erasing_draws_the_same_noise_for_any_device(image_folder):
    """timm's prefetcher erases on its device, drawing the noise from that device's generator,
    whose stream differs between the CPU and CUDA: a cache built on one would answer for other
    pixels on the other. The noise is drawn on the CPU, whatever the loader's device."""
    from timm.data.random_erasing import RandomErasing

    from timm_kd.replay import BatchErasing, resumable

    slots = resumable(_stream(image_folder, [])[0].loader)
    slots.set_epoch(1)
    erased = []
    for device in ('cpu', 'cuda'):  # a CUDA loader's erasing is only built here: nothing runs
        erasing = BatchErasing(RandomErasing(1.0, mode='pixel', device=device), slots, seed=7)
        erased.append(erasing(torch.zeros(4, 3, 32, 32)))
    assert torch.equal(erased[0], erased[1]) and erased[0].abs().sum() > 0


def test_a_view_cycle_replays_the_views_of_epoch_e_mod_n(image_folder):
    """--view-cycle 2: epochs 2 and 3 are the batches of 0 and 1 (order, augmentation, mixing),
    which are the uncycled run's; what a step draws after a batch still follows its own epoch.
    A cycle at least as long as the run changes nothing."""

    def epochs(flags, count):
        stream = _stream(image_folder, ['--mixup', '0.5', '--cutmix', '1.0', *flags])[0]
        out = []
        for epoch in range(count):
            drawn = [(b.input, b.target, torch.rand(1)) for _, b in stream.epoch(epoch)]
            out.append(drawn)
        return out

    def same(a, b):
        return all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p[:2], q[:2]))

    plain, cycled = epochs([], 4), epochs(['--view-cycle', '2'], 4)
    assert same(cycled[0], plain[0]) and same(cycled[1], plain[1])
    assert same(cycled[2], cycled[0]) and same(cycled[3], cycled[1])
    assert not same(cycled[2], plain[2]) and not same(cycled[1], cycled[0])
    # the step's draws (dropout) are the epoch's own
    assert not torch.equal(cycled[2][0][2], cycled[0][0][2])
    assert torch.equal(cycled[2][0][2], plain[2][0][2])
    long = epochs(['--view-cycle', '3'], 3)
    assert all(same(a, b) for a, b in zip(long, plain[:3]))
