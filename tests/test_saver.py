"""DurableCheckpointSaver: at every instant a loadable
last.pth.tar; full disk and NaN weights keep the old one."""

import os
import shutil

import pytest
import timm
import torch

from timm_kd.errors import KDError, NonFiniteError
from timm_kd.saver import DurableCheckpointSaver


class _Task:
    """The part of a timm TrainingTask the saver uses."""

    def __init__(self, model):
        self.model = model

    def get_checkpoint_state(self, ema=False, unwrap_fn=None):
        return {} if ema else {'state_dict': self.model.state_dict()}

    def has_ema(self):
        return False


def _saver(tmp_path):
    model = timm.create_model('test_resnet', num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return DurableCheckpointSaver(
        model=model,
        optimizer=optimizer,
        checkpoint_dir=str(tmp_path),
        recovery_dir=str(tmp_path),
        max_history=2,
        task=_Task(model),
    ), model


def _last_epoch(tmp_path):
    return torch.load(tmp_path / 'last.pth.tar', map_location='cpu', weights_only=True)['epoch']


@pytest.mark.parametrize('crash_at', ['write', 'fsync', 'replace'])
def test_a_crash_at_any_step_leaves_a_loadable_last_checkpoint(tmp_path, monkeypatch, crash_at):
    saver, model = _saver(tmp_path)
    saver.save_checkpoint(0, metric=1.0)
    real = {'write': torch.save, 'fsync': os.fsync, 'replace': os.replace}

    def crash(*args, **kwargs):  # the process dies here: nothing after this step happens
        raise SystemExit('killed')

    target = {'write': (torch, 'save'), 'fsync': (os, 'fsync'), 'replace': (os, 'replace')}[
        crash_at
    ]
    monkeypatch.setattr(*target, crash)
    with pytest.raises(SystemExit):
        saver.save_checkpoint(1, metric=2.0)
    monkeypatch.setattr(*target, real[crash_at])
    assert _last_epoch(tmp_path) == 0  # the previous checkpoint, intact
    saver.save_checkpoint(1, metric=2.0)
    assert _last_epoch(tmp_path) == 1 and not (tmp_path / 'tmp.pth.tar.tmp').exists()


def test_last_is_never_deleted_before_the_new_file_is_in_place(tmp_path, monkeypatch):
    saver, _ = _saver(tmp_path)
    saver.save_checkpoint(0, metric=1.0)
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(os.path.exists(tmp_path / 'last.pth.tar'))  # at each rename, last still exists
        real_replace(src, dst)

    monkeypatch.setattr(os, 'replace', replace)
    saver.save_checkpoint(1, metric=2.0)
    assert seen and all(seen)


def test_a_full_disk_is_one_line_keeps_the_previous_checkpoint_and_removes_the_temp_file(
    tmp_path, monkeypatch
):
    saver, _ = _saver(tmp_path)
    saver.save_checkpoint(0, metric=1.0)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04partial')
        raise RuntimeError(
            '[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file '
            'data/12: file write failed'
        )

    monkeypatch.setattr(torch, 'save', full_disk)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: usage._replace(free=4096))
    with pytest.raises(KDError) as info:
        saver.save_checkpoint(1, metric=2.0)
    message = str(info.value)
    assert (
        'cannot write checkpoint' in message
        and 'free disk space' in message
        and '\n' not in message
    )
    assert message.endswith(f'resume from {tmp_path / "last.pth.tar"}')
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'checkpoint-0.pth.tar',
        'last.pth.tar',
        'model_best.pth.tar',
    ]
    monkeypatch.undo()
    assert _last_epoch(tmp_path) == 0


def test_non_finite_weights_are_never_written(tmp_path):
    saver, model = _saver(tmp_path)
    saver.save_checkpoint(0, metric=1.0)
    before = (tmp_path / 'last.pth.tar').read_bytes()
    with torch.no_grad():
        model.fc.weight[0, 0] = float('nan')
    with pytest.raises(NonFiniteError, match=r'weights are not finite in epoch 1 \(fc.weight'):
        saver.save_checkpoint(1, metric=2.0)
    with pytest.raises(NonFiniteError):
        saver.save_recovery(1, batch_idx=3)
    assert (tmp_path / 'last.pth.tar').read_bytes() == before and not list(
        tmp_path.glob('recovery*')
    )


def test_a_full_disk_at_a_recovery_checkpoint_names_the_checkpoint_that_exists(
    tmp_path, monkeypatch
):
    saver, _ = _saver(tmp_path)
    saver.save_recovery(0, batch_idx=3)  # mid-epoch 0: no last.pth.tar yet

    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError('PytorchStreamWriter failed writing file data/0: file write failed')

    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(KDError) as info:
        saver.save_recovery(0, batch_idx=7)
    assert str(info.value).endswith(f'resume from {tmp_path / "recovery-0-3.pth.tar"}')
    assert not (tmp_path / 'last.pth.tar').exists()


def test_an_interrupted_write_with_free_space_is_not_called_a_full_disk(tmp_path, monkeypatch):
    """A loader worker killed during the write raises in the middle of torch.save."""
    saver, _ = _saver(tmp_path)
    saver.save_checkpoint(0, metric=1.0)

    def interrupted(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04partial')
        raise RuntimeError('DataLoader worker (pid 123) is killed by signal: Killed.')

    monkeypatch.setattr(torch, 'save', interrupted)
    with pytest.raises(KDError) as info:
        saver.save_checkpoint(1, metric=2.0)
    message = str(info.value)
    assert 'was interrupted (DataLoader worker (pid 123) is killed' in message
    assert 'disk' not in message and message.endswith(f'resume from {tmp_path / "last.pth.tar"}')
    assert not (tmp_path / 'checkpoint-1.pth.tar').exists()
