"""train_kd.py end to end on a tiny ImageFolder with timm's test_* models, on CPU."""
import csv
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT
from timm_kd.checkpoint import safe_globals

sys.path.insert(0, ROOT)
import train_kd  # noqa: E402

FAST = ['--img-size', '32', '-b', '8', '--lr', '0.01', '--warmup-epochs', '0', '-j', '0', '--log-interval', '2']


def _run(image_folder, out, name, *extra):
    return train_kd.main([image_folder, '--model', 'test_resnet', *FAST, '--output', str(out), '--experiment', name,
                          *extra])


def _summary(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def teacher_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp('runs')
    _run(image_folder, out, 'teacher', '--epochs', '2', '--model-ema', '--model-ema-decay', '0.5')
    return out


def test_plain_run_writes_timm_outputs(teacher_run):
    folder = teacher_run / 'teacher'
    for name in ('args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar'):
        assert (folder / name).is_file(), name
    rows = _summary(folder / 'summary.csv')
    assert [r['epoch'] for r in rows] == ['0', '1'] and 'train_kd_loss' not in rows[0]
    assert yaml.safe_load((folder / 'args.yaml').read_text())['model'] == 'test_resnet'


def _load(path):
    with safe_globals():
        return torch.load(path, weights_only=True)


def test_our_checkpoints_load_with_weights_only(teacher_run):
    ckpt = _load(teacher_run / 'teacher' / 'last.pth.tar')
    assert {'state_dict', 'state_dict_ema', 'optimizer', 'epoch'} <= set(ckpt)
    assert not any(k.startswith('teacher') for k in ckpt['state_dict'])


def test_kd_run_from_teacher_checkpoint_then_resume(teacher_run, image_folder):
    teacher = str(teacher_run / 'teacher' / 'last.pth.tar')
    kd = ['--teacher', 'test_resnet', '--teacher-checkpoint', teacher, '--mixup', '0.2', '--cutmix', '1.0',
          '--bce-loss', '--kd-temperature', '2', '--model-ema', '--model-ema-decay', '0.5']
    _run(image_folder, teacher_run, 'kd', '--epochs', '1', *kd)
    folder = teacher_run / 'kd'
    rows = _summary(folder / 'summary.csv')
    assert len(rows) == 1 and float(rows[0]['train_kd_loss']) > 0 and float(rows[0]['train_task_loss']) > 0
    assert abs(float(rows[0]['train_loss']) - float(rows[0]['train_kd_loss']) - float(rows[0]['train_task_loss'])) < 1e-4
    first = _load(folder / 'last.pth.tar')['state_dict']

    _run(image_folder, teacher_run, 'kd', '--epochs', '2', *kd, '--resume', str(folder / 'last.pth.tar'))
    rows = _summary(folder / 'summary.csv')
    assert [r['epoch'] for r in rows] == ['0', '1']  # resumed at epoch 1, did not redo epoch 0
    resumed = _load(folder / 'last.pth.tar')
    assert resumed['epoch'] == 1
    assert not torch.equal(first['fc.weight'], resumed['state_dict']['fc.weight'])  # it trained on


def test_heterogeneous_teacher_with_other_preprocessing(teacher_run, image_folder, tmp_path):
    """A ViT teacher at another resolution and normalization, hard-label loss off (KD only)."""
    import timm
    vit = timm.create_model('test_vit', num_classes=3, img_size=48)
    torch.save(vit.state_dict(), tmp_path / 'vit.pth')
    _run(image_folder, tmp_path, 'hetero', '--epochs', '1', '--teacher', 'test_vit',
         '--teacher-checkpoint', str(tmp_path / 'vit.pth'), '--teacher-kwargs', 'img_size=48',
         '--teacher-input-size', '48', '48',
         '--teacher-mean', '0.1', '0.2', '0.3', '--teacher-std', '0.3', '0.3', '0.3', '--ori-loss-weight', '0')
    rows = _summary(tmp_path / 'hetero' / 'summary.csv')
    assert 'train_task_loss' not in rows[0] and float(rows[0]['train_loss']) == float(rows[0]['train_kd_loss'])


def _cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'train_kd.py'), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.parametrize('extra, message', [
    (['--kd-loss', 'nope'], "error: unknown --kd-loss 'nope'"),
    (['--teacher', 'test_resnet'], "error: no pretrained weights for teacher 'test_resnet'"),
    (['--teacher', 'test_resnet', '--teacher-checkpoint', '/nonexistent.pth'], 'error: checkpoint not found'),
    (['--resume', '/nonexistent.pth'], 'error: --resume checkpoint not found'),
])
def test_cli_bad_input_is_one_line_error(image_folder, tmp_path, extra, message):
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf'))
    result = _cli(image_folder, '--model', 'test_resnet', *FAST, '--output', str(tmp_path), *extra, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert 'Traceback' not in result.stderr


def test_missing_dataset_is_one_line_error(tmp_path):
    result = _cli(str(tmp_path / 'nothing'), '--model', 'test_resnet')
    assert result.returncode == 2 and "error: dataset folder" in result.stderr


def test_torchrun_two_processes_gloo(teacher_run, image_folder, tmp_path):
    teacher = str(teacher_run / 'teacher' / 'last.pth.tar')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29517',
           os.path.join(ROOT, 'train_kd.py'), image_folder, '--model', 'test_resnet', *FAST, '--epochs', '1',
           '--teacher', 'test_resnet', '--teacher-checkpoint', teacher, '--aug-repeats', '2',
           '--output', str(tmp_path), '--experiment', 'ddp']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _summary(tmp_path / 'ddp' / 'summary.csv')
    assert len(rows) == 1 and float(rows[0]['train_kd_loss']) > 0
