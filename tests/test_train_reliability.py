"""Reliability of timm-kd-train with real processes:
kill -9 and SIGTERM then resume, non-finite losses."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY

from timm_kd import KDError
from timm_kd.reliability import reseed, truncate_summary

FAST = ['--model', 'test_resnet', *TINY, '--log-interval', '1']


def _start(image_folder, out, name, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            '-m',
            'timm_kd.train',
            image_folder,
            *FAST,
            '--output',
            str(out),
            '--experiment',
            name,
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _train(image_folder, out, name, *extra):
    run = _start(image_folder, out, name, *extra)
    stdout, stderr = run.communicate(timeout=300)
    return run.returncode, stderr


def _wait_for(predicate, process, timeout=120):
    start = time.time()
    while not predicate():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() - start < timeout
        time.sleep(0.05)


def _rows(path):
    return path.read_text().splitlines()


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def test_reseed_gives_the_same_stream_per_position_and_rank():
    draws = []
    for rank in (0, 0, 1):
        reseed(42, epoch=3, rank=rank)
        draws.append(
            (
                torch.rand(2).tolist(),
                __import__('numpy').random.rand(),
                __import__('random').random(),
            )
        )
    assert draws[0] == draws[1] and draws[0] != draws[2]
    reseed(42, epoch=3, rank=0, step=0)
    assert torch.rand(2).tolist() != draws[0][0]


def test_truncate_summary_keeps_rows_before_the_resumed_epoch(tmp_path):
    path = tmp_path / 'summary.csv'
    path.write_text('epoch,train_loss\n0,1.5\n1,1.2\n2,1.1\n')
    truncate_summary(str(path), 2)
    assert _rows(path) == ['epoch,train_loss', '0,1.5', '1,1.2']


def test_kill_9_then_resume_gives_the_uninterrupted_summary(image_folder, tmp_path):
    """Killed as soon as epoch 1's row is written (maybe before its checkpoint): the resumed run's
    summary.csv and weights equal those of a run that was never interrupted (augmentation, mixup,
    dropout included)."""
    flags = [
        '--epochs',
        '4',
        '-b',
        '8',
        '--mixup',
        '0.5',
        '--drop',
        '0.2',
        '--aa',
        'rand-m9-mstd0.5',
        '--reprob',
        '0.25',
    ]
    code, err = _train(image_folder, tmp_path, 'whole', *flags)
    assert code == 0, err[-2000:]
    summary = tmp_path / 'cut' / 'summary.csv'
    process = _start(image_folder, tmp_path, 'cut', *flags)
    _wait_for(lambda: summary.exists() and len(_rows(summary)) >= 3, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    code, err = _train(image_folder, tmp_path, 'cut', *flags, '--resume', 'auto')
    assert code == 0, err[-2000:]
    assert _rows(summary) == _rows(tmp_path / 'whole' / 'summary.csv')
    whole, cut = (
        _weights(tmp_path / 'whole' / 'last.pth.tar'),
        _weights(tmp_path / 'cut' / 'last.pth.tar'),
    )
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_epoch_writes_a_recovery_checkpoint_and_resume_continues_there(
    image_folder, tmp_path, sig
):
    flags = ['--epochs', '2', '-b', '2', '--mixup', '0.5', '--drop', '0.2']
    code, err = _train(image_folder, tmp_path, 'whole', *flags)
    assert code == 0, err[-2000:]
    process = _start(image_folder, tmp_path, 'cut', *flags)
    for line in process.stderr:  # read as the run logs, so the signal lands in epoch 0
        if 'Train: 0 [   5/24]' in line:
            break
    process.send_signal(sig)
    _, rest = process.communicate(timeout=120)
    last = rest.strip().splitlines()[-1]
    assert process.returncode == 128 + sig and 'Traceback' not in rest, rest[-2000:]
    assert (
        last.startswith(f'interrupted: stopped by {sig.name} in epoch 0 after update')
        and '--resume' in last
    )
    recovery = last.split('--resume ')[-1]
    assert os.path.basename(recovery).startswith('recovery-0-')
    code, err = _train(image_folder, tmp_path, 'cut', *flags, '--resume', recovery)
    assert code == 0, err[-2000:]
    whole, cut = (
        _weights(tmp_path / 'whole' / 'last.pth.tar'),
        _weights(tmp_path / 'cut' / 'last.pth.tar'),
    )
    # the same batches, augmentation and dropout
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert _rows(tmp_path / 'cut' / 'summary.csv') == _rows(tmp_path / 'whole' / 'summary.csv')


def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_good_checkpoint(
    image_folder, tmp_path, run_cli
):
    sys.path.insert(0, ROOT)
    import train_kd

    flags = [image_folder, *FAST, '--output', tmp_path, '--experiment', 'nan', '--epochs', '2']
    result = run_cli(train_kd.cli, *flags, '-b', '8', '--stop-epoch', '1')
    assert result.returncode == 0, result.stderr[-2000:]
    last = tmp_path / 'nan' / 'last.pth.tar'
    before = last.read_bytes()
    result = run_cli(
        train_kd.cli, *flags, '-b', '8', '--lr', '1e12', '--no-resume-opt', '--resume', 'auto'
    )
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert (
        line.startswith('error: ')
        and 'in epoch 1 by batch' in line
        and 'lr' in line
        and 'lower --lr' in line
    )
    assert last.read_bytes() == before and not (tmp_path / 'nan' / 'checkpoint-1.pth.tar').exists()
    assert len(_rows(tmp_path / 'nan' / 'summary.csv')) == 2  # epoch 0 only


class _RunsCode:
    def __reduce__(self):
        return (print, ('PWNED',))


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory, image_folder):
    """Checkpoints a user may pass by mistake: truncated,
    of another architecture, with pickled code; a file."""
    import argparse

    import timm

    root = tmp_path_factory.mktemp('bad')
    good = {
        'state_dict': timm.create_model('test_resnet', num_classes=3).state_dict(),
        'epoch': 0,
        'args': argparse.Namespace(model='test_resnet'),
    }
    torch.save(good, root / 'good.pth')
    (root / 'truncated.pth').write_bytes((root / 'good.pth').read_bytes()[:2000])
    torch.save(
        {'state_dict': timm.create_model('test_vit', num_classes=3).state_dict(), 'epoch': 0},
        root / 'vit.pth',
    )
    torch.save({**good, 'payload': _RunsCode()}, root / 'evil.pth')
    (root / 'a_file').write_text('not a folder')
    sys.path.insert(0, ROOT)
    import train_kd

    torch.save(
        timm.create_model('test_vit', num_classes=3, img_size=32).state_dict(), root / 'teacher.pth'
    )
    train_kd.main(
        [
            str(image_folder),
            *FAST,
            '-b',
            '8',
            '--epochs',
            '1',
            *TEACHER.format(root=root).split(),
            '--kd-loss',
            'kd',
            'fitnet',
            '--kd-student-stages',
            '3',
            '--kd-teacher-stages',
            '3',
            '--output',
            str(root),
            '--experiment',
            'kd',
        ]
    )
    return root


TEACHER = '--teacher test_vit --teacher-kwargs img_size=32 --teacher-checkpoint {root}/teacher.pth'
BAD_INPUTS = [  # (flags, what the one line must name, the fix it must give)
    (['--model', 'nope_net'], "unknown --model 'nope_net'", 'list_models'),
    (
        ['--kd-temperature', '0', '--teacher', 'test_resnet'],
        '--kd-temperature 0.0',
        'must be positive',
    ),
    (
        ['--kd-temperature', '-1', '--teacher', 'test_resnet', '--kd-loss', 'dist'],
        "--dist-temperature (or --kd-temperature) -1.0 is not valid for the 'dist' loss",
        'must be positive',
    ),
    (
        ['--teacher', 'test_resnet', '--kd-loss', 'dkd', '--dkd-temperature', '0'],
        '--dkd-temperature (or --kd-temperature) 0.0',
        'must be positive',
    ),
    (
        ['--teacher', 'test_resnet', '--kd-loss', 'dist', '--dist-beta', '-1'],
        "--dist-beta -1.0 is not valid for the 'dist' loss",
        'must be a number >= 0',
    ),
    (
        ['--initial-checkpoint', '{root}/missing.pth'],
        '--initial-checkpoint: checkpoint not found',
        'pass the path',
    ),
    (
        ['--initial-checkpoint', '{root}/truncated.pth'],
        '--initial-checkpoint: checkpoint',
        'corrupt',
    ),
    (
        ['--initial-checkpoint', '{root}/vit.pth'],
        "does not fit --model 'test_resnet'",
        'the --model it was trained',
    ),
    (
        ['--initial-checkpoint', '{root}/evil.pth'],
        'pickled code (builtins.print)',
        '--allow-unsafe-pickle',
    ),
    (['--resume', '{root}/truncated.pth'], '--resume: checkpoint', 'corrupt'),
    (['--resume', '{root}/vit.pth'], '--resume', 'resume with the --model'),
    (['--resume', '{root}/evil.pth'], 'pickled code (builtins.print)', '--allow-unsafe-pickle'),
    (
        ['--resume', '{root}/kd/last.pth.tar', *TEACHER.split(), '--kd-loss', 'kd'],
        'does not fit this run',
        'the --model, --kd-loss and stage flags it was trained with',
    ),
    (
        ['--output', '{root}/a_file'],
        'cannot create the output folder',
        'an --output folder you can write to',
    ),
]


@pytest.mark.parametrize(
    'flags, names, fix', BAD_INPUTS, ids=[' '.join(f[0])[:40] for f in BAD_INPUTS]
)
def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(
    flags, names, fix, bad_files, image_folder, tmp_path, capsys
):
    from timm_kd.cli.train import cli

    flags = [f.replace('{root}', str(bad_files)) for f in flags]
    out = [] if '--output' in flags else ['--output', str(tmp_path / 'out')]
    with pytest.raises(SystemExit) as info:
        cli([image_folder, *FAST, '-b', '8', '--epochs', '1', *out, *flags])
    captured = capsys.readouterr()
    line = captured.err.strip().splitlines()[-1]
    assert info.value.code == 2 and line.startswith('error: ') and names in line and fix in line, (
        line
    )
    assert 'PWNED' not in captured.out
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').rglob('*.pth.tar'))


def test_resuming_into_another_folder_keeps_the_checkpoint_best_metric(image_folder, tmp_path):
    sys.path.insert(0, ROOT)
    import train_kd

    common = [image_folder, *FAST, '-b', '8', '--epochs', '3', '--output', str(tmp_path)]
    train_kd.main(common + ['--experiment', 'a', '--stop-epoch', '2'])
    train_kd.main(common + ['--experiment', 'b', '--resume', str(tmp_path / 'a' / 'last.pth.tar')])
    import csv

    rows = [r for name in 'ab' for r in csv.DictReader(open(tmp_path / name / 'summary.csv'))]
    top1 = [float(r['eval_top1']) for r in rows]
    assert [int(r['epoch']) for r in rows] == [0, 1, 2]
    best = torch.load(tmp_path / 'b' / 'model_best.pth.tar', weights_only=False)
    assert (best['metric'], best['epoch']) == (max(top1), top1.index(max(top1)))  # ties: the
    # earlier epoch, as timm ranks them


def test_sigterm_under_torchrun_every_rank_stops_at_the_same_update_and_resumes(
    image_folder, tmp_path
):
    """torchrun forwards SIGTERM to its workers; they agree (at a log interval) on the update to
    stop after, rank 0 writes the recovery checkpoint, and a torchrun resume from it finishes the
    run."""
    cmd = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--nproc_per_node=2',
        '--master_port=29521',
        '-m',
        'timm_kd.train',
        image_folder,
        *FAST,
        '-b',
        '2',
        '--epochs',
        '3',
        '--output',
        str(tmp_path),
        '--experiment',
        'ddp',
    ]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    process = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    for line in process.stdout:
        if 'Train: 0 [   4/12]' in line:
            break
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    messages = [line for line in output.splitlines() if 'interrupted: stopped by SIGTERM' in line]
    assert (
        len(messages) == 2
        and len({m.split('after update ')[1].split(';')[0] for m in messages}) == 1
    ), output[-3000:]
    recovery = [m for m in messages if '--resume' in m][0].split('--resume ')[-1].strip()
    assert os.path.isfile(recovery)
    resumed = subprocess.run(
        [*cmd, '--resume', recovery], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r.split(',')[0] for r in _rows(tmp_path / 'ddp' / 'summary.csv')[1:]] == ['0', '1', '2']
    # an elastic restart of the finished run: every rank finds nothing to train and all end cleanly
    restart = [cmd[0], *cmd[1:4], '--max-restarts=1', *cmd[4:], '--resume', 'auto']
    finished = subprocess.run(
        restart, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert 'Nothing to train' in finished.stderr


RUN = ['-b', '16', '--epochs', '2', '--recovery-interval', '2', '--checkpoint-hist', '2']


@pytest.fixture
def finished_run(image_folder, tmp_path):
    """A finished two-epoch run with recovery checkpoints, in tmp_path/run."""
    sys.path.insert(0, ROOT)
    import train_kd

    flags = [image_folder, *FAST, *RUN, '--output', str(tmp_path), '--experiment', 'run']
    train_kd.main(flags)
    return train_kd, flags, tmp_path / 'run'


def test_a_run_that_trains_nothing_or_is_refused_changes_nothing(finished_run, tmp_path):
    train_kd, flags, folder = finished_run
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    train_kd.main([*flags, '--resume', str(folder / 'checkpoint-0.pth.tar'), '--epochs', '1'])
    train_kd.main([*flags, '--resume', 'auto'])
    with pytest.raises(KDError, match='holds no manifest.json'):
        train_kd.main([*flags, '--teacher-cache', str(tmp_path / 'nothing')])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_mid_epoch_resume_with_another_batch_size_is_one_line(finished_run, run_cli):
    train_kd, flags, folder = finished_run
    recovery = folder / 'recovery-1-1.pth.tar'
    result = run_cli(train_kd.cli, *flags, '--resume', recovery, '-b', '8')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --resume '{recovery}' was written mid-epoch by a run with --batch-size 16, "
        '--grad-accum-steps 1 and 1 process(es), this run has --batch-size 8, --grad-accum-steps 1 '
        'and 1 process(es); resume with the same, or from the last epoch boundary (last.pth.tar) '
        'to change them'
    )


def test_two_runs_in_one_experiment_folder_is_one_line(finished_run, run_cli):
    from timm_kd.locks import FolderLock

    train_kd, flags, folder = finished_run
    with FolderLock(str(folder), 'run.lock', 'the experiment folder'):  # another run holds it
        result = run_cli(train_kd.cli, *flags, '--epochs', '3', '--resume', 'auto')
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        f"error: the experiment folder '{folder}' is in use by another run (pid {os.getpid()}"
    )


def test_resume_auto_passes_over_a_damaged_checkpoint_to_the_newest_that_loads(
    image_folder, tmp_path, caplog
):
    """last.pth.tar, checkpoint-1 and model_best are one file (hard links): damaged once, all are.
    `--resume auto` names what it passed over and resumes from checkpoint-0; an explicit
    `--resume` of the damaged file is still one line."""
    import logging

    from timm_kd.cli.train import main

    flags = [image_folder, *FAST, '--epochs', '2', '--checkpoint-hist', '2',
             '--output', str(tmp_path), '--experiment', 'e']  # fmt: skip
    main(flags)
    folder = tmp_path / 'e'
    last = folder / 'last.pth.tar'
    assert os.path.samefile(last, folder / 'checkpoint-1.pth.tar')
    with open(last, 'r+b') as f:  # damaged in place: every hard link of it with it
        f.truncate(last.stat().st_size // 2)
    with pytest.raises(KDError, match='corrupt or unreadable'):
        main([*flags, '--resume', str(last)])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        main([*flags, '--epochs', '3', '--resume', 'auto'])
    passed = [r.getMessage() for r in caplog.records if 'passes over' in r.getMessage()]
    assert len(passed) == 1 and 'last.pth.tar = ' in passed[0] and 'checkpoint-1' in passed[0]
    assert 'corrupt or unreadable' in passed[0]
    rows = _rows(folder / 'summary.csv')
    assert [row.split(',')[0] for row in rows[1:]] == ['0', '1', '2']  # epoch 1 trained again
    assert torch.load(last, weights_only=False)['epoch'] == 2


def test_a_kill_mid_epoch_1_resumed_at_once_with_other_workers_is_the_uninterrupted_run(
    image_folder, tmp_path
):
    """Killed with -9 in epoch 1, after a recovery checkpoint, while its loader workers live: a
    resume started at once (the folder's lock is free) with another -j ends with the
    uninterrupted run's summary.csv and weights (mixup, erasing, dropout on)."""
    workers, resumed_workers = '2', '0'
    flags = ['--epochs', '3', '-b', '4', '--mixup', '0.4', '--reprob', '0.25', '--drop', '0.2',
             '--recovery-interval', '2']  # fmt: skip
    code, err = _train(image_folder, tmp_path, 'whole', *flags, '-j', workers)
    assert code == 0, err[-2000:]
    cut = tmp_path / 'cut'
    process = _start(image_folder, tmp_path, 'cut', *flags, '-j', workers)
    _wait_for(lambda: any(cut.glob('recovery-1-*.pth.tar')), process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    code, err = _train(image_folder, tmp_path, 'cut', *flags, '-j', resumed_workers,
                       '--resume', 'auto')  # fmt: skip
    assert code == 0, err[-2000:]
    assert 'recovery-1-' in err  # it resumed mid-epoch 1
    assert _rows(cut / 'summary.csv') == _rows(tmp_path / 'whole' / 'summary.csv')
    whole, resumed = _weights(tmp_path / 'whole' / 'last.pth.tar'), _weights(cut / 'last.pth.tar')
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
