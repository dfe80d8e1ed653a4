"""A kill at any instant: a short run (and a cache build) stopped before each rename and each fsync
it makes, then resumed (`--resume auto`, or the build rerun), ends with the files of the run that
was never stopped.

The kill is simulated in-process: the N-th call of `os.replace` or `os.fsync` raises an exception
that nothing in timm-kd catches, before the call happens, so the files stay as a SIGKILL at that
instant would leave them (temporary files included).
"""

import json
import os
import sys

import numpy as np
import pytest
import timm
import torch
from conftest import ROOT

from timm_kd.cli.cache import build as cache_build

sys.path.insert(0, ROOT)
import train_kd  # noqa: E402


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no `except Exception` handler sees it."""


@pytest.fixture
def kill_at(monkeypatch):
    """kill_at(n): the n-th os.replace / os.fsync from now raises Killed (n=None: count only);
    returns the counter, whose `calls` says how many there were."""
    counter = type('Counter', (), {'calls': 0, 'at': None})()
    for name in ('replace', 'fsync'):
        real = getattr(os, name)

        def hooked(*args, _real=real, **kwargs):
            counter.calls += 1
            if counter.at is not None and counter.calls == counter.at:
                raise Killed()
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, hooked)

    def arm(n):
        counter.calls, counter.at = 0, n
        return counter

    return arm


FLAGS = [
    '--model', 'test_resnet', '--img-size', '32', '-b', '16', '--lr', '0.05', '--warmup-epochs',
    '0', '-j', '0', '--device', 'cpu', '--epochs', '2', '--checkpoint-hist', '1',
    '--recovery-interval', '2', '--log-interval', '50', '--resume', 'auto', '--seed', '3',
]  # fmt: skip


def _files(folder):
    """What a run leaves, comparable across runs: each file's content (checkpoints by their
    weights and epoch; the lock file only by its presence)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith('.pth.tar'):
            state = torch.load(path, map_location='cpu', weights_only=False)
            out[name] = (state['epoch'], {k: v.clone() for k, v in state['state_dict'].items()})
        elif name == 'run.lock':
            out[name] = ''
        else:
            with open(path) as f:  # the experiment's own name aside
                out[name] = f.read().replace(os.path.basename(folder), 'NAME')
    return out


def _same(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith('.pth.tar'):
            assert a[name][0] == b[name][0], name
            assert all(torch.equal(a[name][1][k], b[name][1][k]) for k in a[name][1]), name
        else:
            assert a[name] == b[name], name


def test_a_run_killed_before_any_rename_or_fsync_resumes_to_the_same_files(
    image_folder, tmp_path, kill_at
):
    counter = kill_at(None)
    train_kd.main([image_folder, *FLAGS, '--output', str(tmp_path), '--experiment', 'whole'])
    reference, instants = _files(tmp_path / 'whole'), counter.calls
    assert instants > 15  # the checkpoints, recovery checkpoints, args.yaml and summary writes
    for n in range(1, instants + 1):
        name = f'killed-{n}'
        flags = [image_folder, *FLAGS, '--output', str(tmp_path), '--experiment', name]
        kill_at(n)
        with pytest.raises(Killed):
            train_kd.main(flags)
        kill_at(None)
        train_kd.main(flags)
        _same(_files(tmp_path / name), {**reference})
        assert not [f for f in os.listdir(tmp_path / name) if f.endswith('.tmp')], n


def test_a_cache_build_killed_at_any_instant_is_completed_by_the_rerun(
    image_folder, tmp_path, kill_at
):
    checkpoint = tmp_path / 'teacher.pth'
    torch.save(timm.create_model('test_resnet', num_classes=3).state_dict(), checkpoint)
    flags = [
        image_folder, '--model', 'test_resnet', '--img-size', '32', '-b', '16', '-j', '0',
        '--device', 'cpu', '--epochs', '2', '--teacher', 'test_resnet', '--teacher-checkpoint',
        str(checkpoint), '--mixup', '0.5', '--top-k', '2',
    ]  # fmt: skip

    def contents(out):
        found = {}
        for name in sorted(os.listdir(out)):
            path = os.path.join(out, name)
            if name.endswith('.npy'):
                found[name] = np.load(path).tobytes()
            elif name.endswith('.json'):
                with open(path) as f:
                    found[name] = json.load(f)
                found[name].pop('build_images_per_s', None)  # a timing
        return found

    counter = kill_at(None)
    cache_build([*flags, '--out', str(tmp_path / 'whole')])
    reference, instants = contents(tmp_path / 'whole'), counter.calls
    assert instants >= 16
    for n in range(1, instants + 1):
        out = tmp_path / f'killed-{n}'
        kill_at(n)
        with pytest.raises(Killed):
            cache_build([*flags, '--out', str(out)])
        kill_at(None)
        cache_build([*flags, '--out', str(out)])
        assert contents(out) == reference, n
