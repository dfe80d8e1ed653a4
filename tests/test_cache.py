"""Teacher-output cache: a cached run equals the live one with K = C; bad use is one line."""

import csv
import json
import logging
import os
import re

import pytest
import timm
import torch
from conftest import TINY

from timm_kd.cache import rebuild_logits, top_k_loss_error
from timm_kd.cli.cache import main as cache_main
from timm_kd.cli.train import cli
from timm_kd.cli.train import main as train_main

FAST = ['--model', 'test_resnet', *TINY, '-b', '8', '--log-interval', '1', '--epochs', '2']
VIEWS = [
    '--mixup',
    '0.5',
    '--cutmix',
    '1.0',
    '--aa',
    'rand-m9-mstd0.5',
    '--reprob',
    '0.25',
    '--drop',
    '0.1',
]


@pytest.fixture(scope='module')
def built(image_folder, vit_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp('cache')
    cache_main(
        ['build', image_folder, *FAST, *VIEWS, *vit_teacher, '--top-k', '3', '--out', str(out)]
    )
    return out


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_rebuild_is_exact_with_every_class_and_keeps_tail_mass_otherwise():
    logits = torch.randn(4, 10) * 3
    top = logits.topk(10, dim=1)
    assert torch.equal(
        rebuild_logits(top.values, top.indices, torch.full((4,), float('-inf')), 10), logits
    )
    top = logits.topk(4, dim=1)
    tail = logits.scatter(1, top.indices, float('-inf')).logsumexp(1)
    approx = rebuild_logits(top.values, top.indices, tail, 10)
    assert torch.allclose(
        approx.softmax(1).gather(1, top.indices), logits.softmax(1).gather(1, top.indices)
    )


def _step_losses(caplog):
    """The running loss means logged after every step (--log-interval 1)."""
    lines = [r.getMessage() for r in caplog.records if 'kd_loss:' in r.getMessage()]
    caplog.clear()
    return [[float(v) for v in re.findall(r'loss: ([0-9.]+)', line)] for line in lines]


ACCEPTED = ['--grad-accum-steps', '2', '--smoothing', '0.2', '--crop-pct', '0.8',
            '--interpolation', 'bicubic']  # fmt: skip


@pytest.mark.parametrize(
    'live, cached',
    [
        ([], []),
        (  # the loader's workers, the step, the targets, validation
            ['-j', '1', *ACCEPTED],
            ['-j', '2', *ACCEPTED],
        ),
    ],
)
def test_a_cached_run_equals_the_live_run(
    image_folder, vit_teacher, built, tmp_path, caplog, live, cached
):
    """K = C (3 classes): every step's losses, the evaluation and the final weights of the cached
    run are the live run's (kd and dkd losses, deep supervision, mixup/cutmix, RandAugment, random
    erasing, dropout), in both epochs, with a cache built with 0 loader workers and without the
    flags the cache accepts: other workers, accumulation, smoothing, validation's preprocessing."""
    kd = ['--kd-loss', 'kd', 'dkd', '--kd-deep-supervision', '2', '--output', str(tmp_path)]
    with caplog.at_level(logging.INFO, logger='timm_kd.engine'):
        train_main([image_folder, *FAST, *VIEWS, *vit_teacher, *kd, '--experiment', 'live', *live])
        live_steps = _step_losses(caplog)
        train_main(
            [
                image_folder,
                *FAST,
                *VIEWS,
                *vit_teacher,
                *kd,
                '--teacher-cache',
                str(built),
                '--experiment',
                'cached',
                *cached,
            ]
        )
        cached_steps = _step_losses(caplog)
    assert len(live_steps) == len(cached_steps) == 12
    assert all(a == pytest.approx(b, abs=1e-5) for a, b in zip(live_steps, cached_steps))
    live, cached = (
        _rows(tmp_path / 'live' / 'summary.csv'),
        _rows(tmp_path / 'cached' / 'summary.csv'),
    )
    assert len(live) == len(cached) == 2
    for a, b in zip(live, cached):
        assert set(a) == set(b) and all(
            float(a[k]) == pytest.approx(float(b[k]), abs=1e-5) for k in a
        )
    weights = [
        torch.load(tmp_path / name / 'last.pth.tar', weights_only=False)['state_dict']
        for name in ('live', 'cached')
    ]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[0])


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--mixup', '0.2'], 'other views (mixup: the cache has 0.5, this run 0.2)'),
        # erasing moves
        (
            ['--no-prefetcher'],
            'other views (prefetcher: the cache has True, this run False)',
        ),
        (
            ['--epochs', '3'],
            'lacks epoch 2 (it covers 2 epochs); build more with --epochs 3, '
            'train fewer epochs, or cycle its views with --view-cycle 2',
        ),
        (['--view-cycle', '3', '--epochs', '4'], 'lacks epoch 2'),
        (['--view-cycle', '2', '--mixup-off-epoch', '1'], 'mixing cannot stop at an epoch'),
        (['--view-cycle', '-1'], '--view-cycle -1: pass the number of epochs'),
        (['--mixup-off-epoch', '1'], 'views (mixup_off_epoch: the cache has None, this run 1)'),
        (['--kd-loss', 'fitnet'], 'is a feature loss'),
        # a teacher's settings without its name: compared with the cache's teacher
        (['--teacher-mean', '0.4', '0.4', '0.4'], 'whose teacher ran with its own default'),
        (['--teacher-input-size', '64', '64'], '--teacher-input-size (64, 64) beside'),
        (['--teacher-dtype', 'bfloat16'], "whose teacher ran with 'float32'"),
        (['--teacher-kwargs', 'img_size=64'], "ran with [['img_size', 32]]"),
        (['--teacher', 'test_resnet'], 'other teacher (teacher: the cache has'),
    ],
)
def test_a_run_the_cache_does_not_fit_is_one_line(
    image_folder, built, tmp_path, capsys, extra, message
):
    with pytest.raises(SystemExit) as info:  # a flag given twice: argparse keeps the later value
        cli(
            [
                image_folder,
                *FAST,
                *VIEWS,
                *extra,
                '--teacher-cache',
                str(built),
                '--output',
                str(tmp_path),
            ]
        )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and line.startswith('error: ') and message in line, line


def test_the_build_feeds_the_teacher_the_batches_training_feeds_it(
    image_folder, vit_teacher, tmp_path, monkeypatch
):
    """Epoch by epoch, with mixing switched off from epoch 1 (--mixup-off-epoch): the teacher of
    the build sees the batches the live teacher sees, and the cached run equals the live one."""
    from timm_kd.teacher import Teacher

    seen = []
    forward = Teacher.forward

    def recording(self, images, stages=None):
        seen.append(images.detach().clone())
        return forward(self, images, stages)

    monkeypatch.setattr(Teacher, 'forward', recording)
    flags = [image_folder, *FAST, *VIEWS, '--epochs', '3', '--mixup-off-epoch', '1']
    out = tmp_path / 'cache'
    cache_main(['build', *flags, *vit_teacher, '--top-k', '3', '--out', str(out)])
    built = seen[1:]  # the first: the card's loss error on epoch 0's first batch
    seen.clear()
    train_main([*flags, *vit_teacher, '--output', str(tmp_path), '--experiment', 'live'])
    live = seen[-len(built) :]  # after the start-up shape probes
    assert len(built) == 18  # 3 epochs of 6 batches
    for i, (a, b) in enumerate(zip(built, live)):
        assert torch.equal(a, b), f'epoch {i // 6}, batch {i % 6}'
    train_main([*flags, '--teacher-cache', str(out), '--output', str(tmp_path),
                '--experiment', 'cached'])  # fmt: skip
    rows = [_rows(tmp_path / name / 'summary.csv') for name in ('live', 'cached')]
    assert len(rows[0]) == 3
    for a, b in zip(*rows):
        assert all(float(a[k]) == pytest.approx(float(b[k]), abs=1e-5) for k in a)


def test_teacher_settings_equal_to_the_caches_and_amp_are_accepted(
    image_folder, built, tmp_path, caplog
):
    """--amp is the student's precision; a teacher setting the cache's teacher ran with is
    consistent with it. A live teacher of this run would answer under the autocast: one line says
    that the cached answers are the build's float32 ones."""
    flags = ['--teacher-kwargs', 'img_size=32', '--amp', '--epochs', '1', '--output', str(tmp_path)]
    with caplog.at_level(logging.WARNING, logger='timm_kd.cache'):
        train_main([image_folder, *FAST, *VIEWS, *flags, '--teacher-cache', str(built)])
    assert _rows(next(tmp_path.glob('*/summary.csv')))
    said = [r.getMessage() for r in caplog.records if 'holds the teacher' in r.getMessage()]
    assert len(said) == 1, said
    live = 'a live teacher would answer at float32 under float16 autocast in this run'
    assert 'answers at float32; ' + live in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='timm_kd.cache'):
        train_main([image_folder, *FAST, *VIEWS, '--epochs', '1', '--output', str(tmp_path),
                    '--experiment', 'plain', '--teacher-cache', str(built)])  # fmt: skip
    assert 'holds the teacher' not in caplog.text


def test_the_build_compiles_the_teacher_as_training_does(
    image_folder, vit_teacher, tmp_path, monkeypatch
):
    """--teacher-fast (or --teacher-compile) compiles the teacher of the build too."""
    from timm_kd.teacher import Teacher

    compiled = []
    monkeypatch.setattr(Teacher, 'compile', lambda self, **kw: compiled.append(kw) or self)
    out = tmp_path / 'c'
    cache_main(['build', image_folder, *FAST, *vit_teacher, '--epochs', '1', '--top-k', '2',
                '--teacher-compile', 'eager', '--out', str(out)])  # fmt: skip
    assert compiled == [dict(backend='eager', mode=None)]


def test_a_killed_build_resumes_at_the_first_missing_epoch(
    image_folder, vit_teacher, built, tmp_path
):
    out = tmp_path / 'c'
    cache_main(
        ['build', image_folder, *FAST, *VIEWS, *vit_teacher, '--top-k', '2', '--out', str(out)]
    )
    first = (out / 'epoch-0000-rank-0.values.npy').stat().st_mtime_ns
    os.remove(out / 'epoch-0001-rank-0.values.npy')  # as if killed during epoch 1
    cache_main(
        ['build', image_folder, *FAST, *VIEWS, *vit_teacher, '--top-k', '2', '--out', str(out)]
    )
    assert (
        out / 'epoch-0000-rank-0.values.npy'
    ).stat().st_mtime_ns == first  # epoch 0 was not redone
    assert (out / 'epoch-0001-rank-0.values.npy').is_file() and not list(out.glob('*.tmp'))


def test_cached_runs_resume_exactly_and_serve_several_students(image_folder, built, tmp_path):
    common = [image_folder, *FAST, *VIEWS, '--teacher-cache', str(built), '--output', str(tmp_path)]
    train_main([*common, '--experiment', 'whole'])
    train_main([*common, '--experiment', 'cut', '--stop-epoch', '1'])
    train_main([*common, '--experiment', 'cut', '--resume', 'auto'])
    assert _rows(tmp_path / 'cut' / 'summary.csv') == _rows(tmp_path / 'whole' / 'summary.csv')
    train_main(
        [
            *common,
            '--experiment',
            'two',
            '--student',
            '--experiment a',
            '--student',
            '--kd-loss dkd --experiment b',
        ]
    )
    for name, loss in (('a', 'train_kd_loss'), ('b', 'train_dkd_loss')):
        rows = _rows(tmp_path / 'two' / name / 'summary.csv')
        assert len(rows) == 2 and float(rows[0][loss]) > 0


def test_torchrun_builds_one_shard_per_rank_and_trains_from_them(
    image_folder, vit_teacher, tmp_path
):
    """2 gloo processes build disjoint shards; a build resumed after a kill between the two
    ranks' commits completes; a 2-process run from the cache equals the live 2-process run."""
    import subprocess
    import sys

    from conftest import ROOT

    run = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--nproc_per_node=2',
        '--master_port=29523',
        '-m',
    ]
    flags = [image_folder, *FAST, '-b', '4', *VIEWS, *vit_teacher, '--output', str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    build = [
        *run,
        'timm_kd.cache',
        'build',
        *flags,
        '--top-k',
        '3',
        '--out',
        str(tmp_path / 'cache'),
    ]
    for cmd in (
        build,
        ['rm', str(tmp_path / 'cache' / 'epoch-0001-rank-1.json')],  # killed between the ranks'
        build,  # rank 0 has both epochs, rank 1 lacks epoch 1: they agree, no barrier hangs
        [*run, 'timm_kd.train', *flags, '--experiment', 'live'],
        [
            *run,
            'timm_kd.train',
            *flags,
            '--teacher-cache',
            str(tmp_path / 'cache'),
            '--experiment',
            'cached',
        ],
    ):
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / 'cache' / 'manifest.json').read_text())
    assert manifest['epochs'] == [0, 1]
    assert sorted(p.name for p in (tmp_path / 'cache').glob('*.values.npy')) == [
        f'epoch-000{e}-rank-{r}.values.npy' for e in (0, 1) for r in (0, 1)
    ]
    live, cached = (
        _rows(tmp_path / 'live' / 'summary.csv'),
        _rows(tmp_path / 'cached' / 'summary.csv'),
    )
    assert all(
        float(a[k]) == pytest.approx(float(b[k]), abs=1e-5) for a, b in zip(live, cached) for k in a
    )


def test_top_k_loss_error_is_zero_with_every_class_and_matches_a_hand_computation():
    torch.manual_seed(0)
    teacher, student = torch.randn(6, 5) * 2, torch.randn(6, 5)
    rows = top_k_loss_error(teacher, student, [2, 5], [1.0, 4.0])
    assert [(r['k'], r['temperature']) for r in rows] == [(2, 1.0), (2, 4.0), (5, 1.0), (5, 4.0)]
    assert [r['relative_error'] for r in rows if r['k'] == 5] == [0, 0]
    # K = 2, by hand: the 3 other logits each get log(sum of their exp / 3)
    top = teacher.topk(2, dim=1).indices
    others = torch.ones_like(teacher, dtype=torch.bool).scatter(1, top, False)
    shared = (teacher.exp() * others).sum(1, keepdim=True).div(3).log()
    rebuilt = torch.where(others, shared, teacher)
    for row in rows[:2]:
        t = row['temperature']
        p, q = (rebuilt / t).softmax(1), (student / t).log_softmax(1)
        assert row['top_k'] == pytest.approx(
            ((p * (p.log() - q)).sum(1).mean() * t * t).item(), abs=1e-4
        )


def _refusal(image_folder, cache, tmp_path, capsys) -> str:
    """The one line (exit 2) of a run from `cache` with the flags it was built with."""
    with pytest.raises(SystemExit) as info:
        cli([image_folder, *FAST, *VIEWS, '--teacher-cache', str(cache), '--output', str(tmp_path)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2, line
    return line


def test_training_from_a_damaged_shard_is_one_line_before_it_trains(
    image_folder, built, tmp_path, capsys
):
    import shutil

    damaged = tmp_path / 'cache'
    shutil.copytree(built, damaged)
    path = damaged / 'epoch-0001-rank-0.values.npy'
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    line = _refusal(image_folder, damaged, tmp_path, capsys)
    assert f'shard {path} is damaged' in line, line


def test_shards_swapped_between_epochs_are_one_line_naming_both(
    image_folder, built, tmp_path, capsys
):
    """A copy or merge script that renumbers shards (epoch 0's files, sidecar included, under
    epoch 1's names and back) is caught before training: each sidecar binds its epoch and rank."""
    import shutil

    swapped = tmp_path / 'cache'
    shutil.copytree(built, swapped)
    for part in ('values.npy', 'indices.npy', 'tail.npy', 'json'):
        a, b = (swapped / f'epoch-000{e}-rank-0.{part}' for e in (0, 1))
        a.rename(tmp_path / 'held')
        b.rename(a)
        (tmp_path / 'held').rename(b)
    line = _refusal(image_folder, swapped, tmp_path, capsys)
    assert 'epoch-0000-rank-0.json' in line and 'belong at epoch-0001-rank-0.json' in line, line


def test_a_cached_run_whose_sample_order_differs_from_the_builds_is_one_line(
    image_folder, built, tmp_path, capsys, monkeypatch
):
    """Same flags, but the sampler orders the epoch otherwise (as another torch's randperm would):
    the answers would belong to other images, so the run stops before its first step."""
    from timm_kd.replay import SlotSampler

    order = SlotSampler.order
    monkeypatch.setattr(SlotSampler, 'order', lambda self: order(self)[::-1])
    line = _refusal(image_folder, built, tmp_path, capsys)
    assert 'reads its samples in another order' in line, line


def test_a_build_killed_between_renames_is_repaired_by_the_rerun(
    image_folder, vit_teacher, tmp_path
):
    out = tmp_path / 'c'
    build = ['build', image_folder, *FAST, *VIEWS, *vit_teacher, '--top-k', '2', '--out', str(out)]
    cache_main(build)
    os.remove(out / 'epoch-0001-rank-0.json')  # killed after renaming values, before the rest
    os.remove(out / 'epoch-0001-rank-0.indices.npy')
    first = (out / 'epoch-0000-rank-0.values.npy').stat().st_mtime_ns
    cache_main(build)
    assert (out / 'epoch-0000-rank-0.values.npy').stat().st_mtime_ns == first
    assert (out / 'epoch-0001-rank-0.json').is_file() and (
        out / 'epoch-0001-rank-0.indices.npy'
    ).is_file()


@pytest.mark.parametrize('strict', [False, True])
def test_a_replaced_training_image_makes_the_cache_stale(
    image_folder, vit_teacher, tmp_path, capsys, strict
):
    import shutil

    data = tmp_path / 'data'
    shutil.copytree(image_folder, data)
    flags = [str(data), *FAST, '--epochs', '1', *vit_teacher]
    out = tmp_path / 'cache'
    cache_main(
        [
            'build',
            *flags,
            '--top-k',
            '3',
            '--out',
            str(out),
            *(['--strict-files'] if strict else []),
        ]
    )
    image = data / 'train' / 'class0' / '0.png'
    if strict:  # same size, new time: seen only with --strict-files
        os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    else:  # another image under the same name (and of another size)
        before = image.stat().st_size
        shutil.copy(data / 'train' / 'class2' / '5.png', image)
        assert image.stat().st_size != before
    with pytest.raises(SystemExit):
        cli([*flags, '--teacher-cache', str(out), '--output', str(tmp_path)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'was built for other views (dataset files:' in line, line


def test_a_same_size_change_to_an_image_stops_the_cached_run_at_that_file(
    image_folder, vit_teacher, tmp_path, capsys
):
    """Other pixels, the same size and time: the dataset signature cannot see it, the per-sample
    checksum the build recorded does, when the loader reads the file."""
    import io
    import shutil

    import numpy as np
    from PIL import Image

    data = tmp_path / 'data'
    shutil.copytree(image_folder, data)
    flags = [str(data), *FAST, '--epochs', '2', *vit_teacher]
    out = tmp_path / 'cache'
    cache_main(['build', *flags, '--top-k', '3', '--out', str(out)])
    assert (np.load(out / 'samples-rank-0.npy') != 0).sum() == 48  # every sample read was recorded
    image = data / 'train' / 'class1' / '3.png'
    stat, pixels = image.stat(), np.asarray(Image.open(image))
    for y, x in np.ndindex(*pixels.shape[:2]):  # one pixel's low bit where the PNG keeps its size
        other = pixels.copy()
        other[y, x, 0] ^= 1
        encoded = io.BytesIO()
        Image.fromarray(other).save(encoded, format='PNG')
        if len(encoded.getvalue()) == stat.st_size:
            image.write_bytes(encoded.getvalue())
            break
    assert image.stat().st_size == stat.st_size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(SystemExit):
        cli([*flags, '--teacher-cache', str(out), '--output', str(tmp_path)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith('error: training file ') and 'class1/3.png (sample ' in line, line
    assert 'epoch 0) is not the one --teacher-cache' in line and 'rebuild the cache' in line


def test_bad_build_targets_are_one_line(image_folder, vit_teacher, tmp_path, capsys):
    from timm_kd.locks import FolderLock

    flags = ['build', image_folder, *FAST, '--epochs', '1', *vit_teacher, '--top-k', '2']
    (tmp_path / 'file').write_text('x')
    with pytest.raises(SystemExit):
        cache_main([*flags, '--out', str(tmp_path / 'file')])
    assert 'is a file; pass a folder for the cache' in capsys.readouterr().err
    busy = tmp_path / 'busy'
    busy.mkdir()
    with FolderLock(str(busy), 'build-rank-0.lock', 'the cache folder --out'):  # another build
        with pytest.raises(SystemExit):
            cache_main([*flags, '--out', str(busy)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"the cache folder --out '{busy}' is in use by another run (pid {os.getpid()}" in line
    broken = tmp_path / 'nan.pth'
    state = timm.create_model('test_vit', num_classes=3, img_size=32).state_dict()
    torch.save(
        {k: v.fill_(float('nan')) if v.is_floating_point() else v for k, v in state.items()}, broken
    )
    nan_teacher = [*vit_teacher[:-1], str(broken)]
    with pytest.raises(SystemExit):
        cache_main(['build', image_folder, *FAST, '--epochs', '1', *nan_teacher, '--top-k', '2',
                    '--out', str(tmp_path / 'nan')])  # fmt: skip
    assert 'the teacher answered NaN or infinity in epoch 0' in capsys.readouterr().err
    assert not list((tmp_path / 'nan').glob('*.npy*'))
    for layout, line in (
        (['--layout', 'dense', '--top-k', '2'], 'dense stores all 3 classes; drop --top-k 2'),
        ([], 'pass --top-k K, the logits to keep per sample, or --layout dense (all)'),
        (['--top-k', '0'], '--top-k 0: keep at least one logit per sample'),
        (['--layout', 'dense', '--value-dtype', 'float16'], "--value-dtype is the exact layout's"),
    ):
        with pytest.raises(SystemExit):
            cache_main([*flags[:-2], *layout, '--out', str(tmp_path / 'bad')])
        assert line in capsys.readouterr().err


def test_a_compact_cache_trains_within_its_rounding_of_the_live_run(
    image_folder, vit_teacher, tmp_path, caplog
):
    one = [*FAST, *VIEWS, '--epochs', '1', '--output', str(tmp_path)]
    out = tmp_path / 'compact'
    cache_main(['build', image_folder, *one, *vit_teacher, '--top-k', '3', '--layout', 'compact',
                '--out', str(out)])  # fmt: skip
    shards = [f for f in out.glob('*.npy') if not f.name.startswith('samples-')]
    data = sum(f.stat().st_size - 128 for f in shards)  # .npy headers: 128 B
    assert data == 48 * (2 * 3 + 1 + 8)  # 48 slots of 2K + ceil(K 2 bits / 8) + 8 bytes
    with caplog.at_level(logging.INFO, logger='timm_kd.engine'):
        train_main([image_folder, *one, *vit_teacher, '--experiment', 'live'])
        live = _step_losses(caplog)
        train_main([image_folder, *one, '--teacher-cache', str(out), '--experiment', 'cached'])
        cached = _step_losses(caplog)
    assert len(live) == len(cached) == 6
    assert all(a == pytest.approx(b, rel=1e-3) for a, b in zip(live, cached))


def test_a_dense_cache_of_two_epochs_serves_four_within_its_rounding_of_the_live_teacher(
    image_folder, vit_teacher, tmp_path, caplog
):
    """--layout dense with --view-cycle 2: every class at 12 bits, no indices, and in each of the 4
    epochs it serves, every step's KD loss is the live teacher's to the log's 4 decimals (at lr 0,
    so that the student stays the same and the losses differ by the targets alone)."""
    flags = [*FAST, *VIEWS, '--epochs', '4', '--view-cycle', '2', '--output', str(tmp_path)]
    out = tmp_path / 'dense'
    cache_main(['build', image_folder, *flags, *vit_teacher, '--layout', 'dense',
                '--out', str(out)])  # fmt: skip
    assert not list(out.glob('*.indices.npy'))
    shards = [f for f in out.glob('*.npy') if not f.name.startswith('samples-')]
    assert sum(f.stat().st_size - 128 for f in shards) == 2 * 48 * (3 * 2 + 8)  # 3 classes
    with caplog.at_level(logging.INFO, logger='timm_kd.engine'):
        train_main([image_folder, *flags, '--lr', '0', *vit_teacher, '--experiment', 'live'])
        live = _step_losses(caplog)
        train_main([image_folder, *flags, '--lr', '0', '--teacher-cache', str(out),
                    '--experiment', 'cached'])  # fmt: skip
        cached = _step_losses(caplog)
    assert len(live) == len(cached) == 24
    assert all(a == pytest.approx(b, abs=2e-4) for a, b in zip(live, cached))
    assert len({tuple(a) for a in live}) > 12  # the steps differ: each is its own check


def test_a_short_cache_serves_a_long_schedule_by_its_view_cycle(
    image_folder, vit_teacher, built, tmp_path, caplog
):
    """4 epochs from the 2-epoch cache with --view-cycle 2 are the live run with the same flag:
    every step's losses, the evaluation and the weights; the log says which epoch each replays."""
    flags = [image_folder, *FAST, *VIEWS, '--epochs', '4', '--view-cycle', '2', '--kd-loss', 'kd',
             'dkd', '--output', str(tmp_path)]  # fmt: skip
    with caplog.at_level(logging.INFO):
        train_main([*flags, *vit_teacher, '--experiment', 'live'])
        assert 'Epoch 3 replays the views of epoch 1 (--view-cycle 2)' in caplog.text
        live_steps = _step_losses(caplog)
        train_main([*flags, '--teacher-cache', str(built), '--experiment', 'cached'])
        cached_steps = _step_losses(caplog)
    assert len(live_steps) == len(cached_steps) == 24
    assert all(a == pytest.approx(b, abs=1e-5) for a, b in zip(live_steps, cached_steps))
    live, cached = (_rows(tmp_path / n / 'summary.csv') for n in ('live', 'cached'))
    assert len(live) == len(cached) == 4
    for a, b in zip(live, cached):
        assert all(float(a[k]) == pytest.approx(float(b[k]), abs=1e-5) for k in a)
    weights = [
        torch.load(tmp_path / name / 'last.pth.tar', weights_only=False)['state_dict']
        for name in ('live', 'cached')
    ]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[0])


def test_a_build_with_a_view_cycle_builds_its_distinct_views_only(
    image_folder, vit_teacher, tmp_path
):
    out = tmp_path / 'c'
    cache_main(['build', image_folder, *FAST, '--epochs', '5', '--view-cycle', '2', *vit_teacher,
                '--top-k', '3', '--out', str(out)])  # fmt: skip
    assert json.loads((out / 'manifest.json').read_text())['epochs'] == [0, 1]
