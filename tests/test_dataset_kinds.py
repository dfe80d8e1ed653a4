"""timm's dataset kinds beyond folders: `--dataset wds/NAME` (webdataset shards with timm's
`_info.json`) and `hfds/PATH` (a Hugging Face `datasets` dataset on disk): live KD, resume, the
cache."""

import csv

import pytest
import timm
import torch
from conftest import TINY

from timm_kd.cli.cache import main as cache_main
from timm_kd.cli.train import cli
from timm_kd.cli.train import main as train_main

FAST = ['--dataset', 'wds/tiny', '--model', 'test_resnet', *TINY, '-b', '8', '-j', '2',
        '--epochs', '2', '--mixup', '0.5', '--aa', 'rand-m9-mstd0.5', '--reprob', '0.25',
        '--drop', '0.1', '--num-classes', '3']  # fmt: skip


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp('teacher') / 'resnet.pth'
    torch.save(timm.create_model('test_resnet', num_classes=3).state_dict(), path)
    return ['--teacher', 'test_resnet', '--teacher-checkpoint', str(path)]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _close(a, b):
    assert len(a) == len(b) and [set(r) for r in a] == [set(r) for r in b]
    return all(float(x[k]) == pytest.approx(float(y[k]), abs=1e-5) for x, y in zip(a, b) for k in x)


def test_live_kd_on_shards_resumes_exactly_and_trains_from_the_cache(wds_shards, teacher, tmp_path):
    out = ['--output', str(tmp_path)]
    train_main([wds_shards, *FAST, *teacher, *out, '--experiment', 'live'])
    live = _rows(tmp_path / 'live' / 'summary.csv')
    assert len(live) == 2 and float(live[0]['train_kd_loss']) > 0
    assert float(live[0]['eval_top1']) >= 0  # the validation shard was read

    train_main([wds_shards, *FAST, *teacher, *out, '--experiment', 'cut', '--stop-epoch', '1'])
    train_main([wds_shards, *FAST, *teacher, *out, '--experiment', 'cut', '--resume', 'auto'])
    assert _close(_rows(tmp_path / 'cut' / 'summary.csv'), live)

    cache = tmp_path / 'cache'
    cache_main(['build', wds_shards, *FAST, *teacher, '--top-k', '3', '--out', str(cache)])
    train_main([wds_shards, *FAST, *out, '--teacher-cache', str(cache), '--experiment', 'cached'])
    assert _close(_rows(tmp_path / 'cached' / 'summary.csv'), live)


def test_a_mid_epoch_resume_of_shards_continues_the_epoch_with_the_same_workers(
    wds_shards, teacher, tmp_path, run_cli, caplog
):
    """The loader workers deal the shards' records: a mid-epoch checkpoint resumes exactly with
    the same --workers, and another count is one line (the epoch would repeat some records and
    skip others); at an epoch boundary another count trains on, with a warning."""
    out = ['--output', str(tmp_path)]
    train_main(
        [wds_shards, *FAST, *teacher, *out, '--recovery-interval', '4', '--experiment', 'full']
    )
    recovery = tmp_path / 'full' / 'recovery-1-3.pth.tar'  # epoch 1 after 4 of its 6 batches
    train_main(
        [wds_shards, *FAST, *teacher, *out, '--experiment', 'mid', '--resume', str(recovery)]
    )
    assert _close(
        _rows(tmp_path / 'mid' / 'summary.csv'), _rows(tmp_path / 'full' / 'summary.csv')[1:]
    )

    other = run_cli(cli, wds_shards, *FAST, *teacher, *out, '--experiment', 'other',
                    '--resume', recovery, '-j', '1')  # fmt: skip
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: --resume '{recovery}' was written mid-epoch by a run with --batch-size 8, "
        '--grad-accum-steps 1, 1 process(es) and --workers 2 (streamed input), this run has '
        '--batch-size 8, --grad-accum-steps 1, 1 process(es) and --workers 1 (streamed input); '
        'resume with the same, or from the last epoch boundary (last.pth.tar) to change them'
    )
    boundary = str(tmp_path / 'full' / 'checkpoint-0.pth.tar')
    train_main([wds_shards, *FAST, *teacher, *out, '--experiment', 'j1', '--resume', boundary,
                '-j', '1'])  # fmt: skip
    assert 'trained with --workers 2, this run has 1' in caplog.text


def test_a_streamed_position_counts_workers_and_zero_workers_read_as_one():
    from types import SimpleNamespace

    from torch.utils.data import IterableDataset

    from timm_kd.replay import stream_readers
    from timm_kd.training.student_job import stream_shape

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(())

    def shape(workers, dataset=Stream()):
        run = SimpleNamespace(
            views=SimpleNamespace(batch_size=8), process=SimpleNamespace(grad_accum_steps=1)
        )
        return stream_shape(run, 2, stream_readers(dataset, workers))

    assert shape(0) == shape(1) != shape(2)  # the main process reads the stream as one worker
    assert shape(0, dataset=[]) == shape(4, dataset=[])  # map-style: any --workers


def test_a_cache_of_shards_refuses_another_worker_count(wds_shards, teacher, tmp_path, run_cli):
    cache = tmp_path / 'cache'
    cache_main(['build', wds_shards, *FAST, *teacher, '--epochs', '1', '--top-k', '3',
                '--out', str(cache)])  # fmt: skip
    fast = [*FAST, '--epochs', '1', '-j', '0', '--output', str(tmp_path)]
    result = run_cli(cli, wds_shards, *fast, '--teacher-cache', str(cache))
    assert result.returncode != 0 and 'workers (streamed input)' in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith('error')]) == 1


@pytest.fixture(scope='module')
def hf_dataset(tmp_path_factory):
    """A Hugging Face `datasets` dataset on disk (parquet, train and validation splits), as
    `load_dataset(PATH)` reads it: 48 and 24 32px images of 3 classes."""
    datasets = pytest.importorskip('datasets')
    import io

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp('hfds')
    rng = np.random.default_rng(2)
    features = datasets.Features(
        image=datasets.Image(), label=datasets.ClassLabel(names=['a', 'b', 'c'])
    )
    for split, n in (('train', 48), ('validation', 24)):
        images = []
        for i in range(n):
            buffer = io.BytesIO()
            pixels = (rng.random((32, 32, 3)) * 80 + i % 3 * 60).astype('uint8')
            Image.fromarray(pixels).save(buffer, format='PNG')
            images.append({'bytes': buffer.getvalue(), 'path': None})
        table = datasets.Dataset.from_dict({'image': images, 'label': [i % 3 for i in range(n)]},
                                           features=features)  # fmt: skip
        table.to_parquet(str(root / 'data' / f'{split}-00000-of-00001.parquet'))
    return str(root)


def test_a_hugging_face_dataset_on_disk_trains_and_caches_as_the_live_run(
    hf_dataset, teacher, tmp_path
):
    flags = [hf_dataset, *FAST, '--dataset', f'hfds/{hf_dataset}', '-j', '0', '--epochs', '1',
             '--output', str(tmp_path)]  # fmt: skip
    train_main([*flags, *teacher, '--experiment', 'live'])
    cache = tmp_path / 'cache'
    cache_main(['build', *flags, *teacher, '--top-k', '3', '--out', str(cache)])
    train_main([*flags, '--teacher-cache', str(cache), '--experiment', 'cached'])
    live = _rows(tmp_path / 'live' / 'summary.csv')
    assert float(live[0]['train_kd_loss']) > 0
    assert _close(_rows(tmp_path / 'cached' / 'summary.csv'), live)


def test_a_streamed_hugging_face_dataset_trains_live_and_its_cache_is_one_line(
    hf_dataset, teacher, tmp_path, run_cli, caplog
):
    """hfids/: timm's own (not replayed) views: a mid-epoch resume says it is not exact, and the
    cache names what works instead."""
    from timm_kd.cli.cache import main

    flags = [hf_dataset, *FAST, '--dataset', f'hfids/{hf_dataset}', '-j', '0', '--epochs', '1',
             '--train-num-samples', '48', '--val-num-samples', '24',
             '--output', str(tmp_path)]  # fmt: skip
    train_main([*flags, *teacher, '--experiment', 'live', '--recovery-interval', '4'])
    assert float(_rows(tmp_path / 'live' / 'summary.csv')[0]['train_kd_loss']) > 0
    recovery = str(tmp_path / 'live' / 'recovery-0-3.pth.tar')
    train_main([*flags, *teacher, '--experiment', 'resumed', '--resume', recovery])
    assert (
        'after its first 4 batches of a new pass, so it is not the uninterrupted run' in caplog.text
    )
    refused = run_cli(main, 'build', *flags, *teacher, '--top-k', '3', '--out', tmp_path / 'c')
    errors = [line for line in refused.stderr.splitlines() if line.startswith('error')]
    assert refused.returncode == 2 and len(errors) == 1 and 'hfds/, wds/' in errors[0]


def test_each_kind_is_told_by_what_it_can_do(image_folder, wds_shards):
    """`timm_kd.dataset_kinds`: a folder replays by index and decodes its files; a subclass that
    keeps ImageDataset's reading decodes too, one with its own `__getitem__` does not (its reading
    is its own); webdataset shards stream; another stream (hfids/, tfds/) does neither."""
    from timm.data import ImageDataset, create_dataset
    from torch.utils.data import IterableDataset

    from timm_kd.dataset_kinds import decodes_files, replays_by_index, streams_shards

    class Renamed(ImageDataset):
        pass

    class OwnReading(ImageDataset):
        def __getitem__(self, index):
            return super().__getitem__(index)

    class OtherStream(IterableDataset):
        reader = object()

        def __iter__(self):
            return iter(())

    folder = f'{image_folder}/train'
    for dataset, kinds in (
        (ImageDataset(folder), (True, False, True)),
        (Renamed(folder), (True, False, True)),
        (OwnReading(folder), (True, False, False)),
        (ImageDataset(folder, load_bytes=True), (True, False, False)),
        (
            create_dataset('wds/tiny', wds_shards, split='train', is_training=True),
            (False, True, False),
        ),
        (OtherStream(), (False, False, False)),
    ):
        found = (replays_by_index(dataset), streams_shards(dataset), decodes_files(dataset))
        assert found == kinds, type(dataset).__name__
