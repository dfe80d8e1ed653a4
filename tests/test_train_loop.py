"""`timm_kd.train` (timm-kd-train, train_kd.py) end to end
on a tiny ImageFolder with timm's test_* models, on CPU."""

import csv
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT, TINY

from timm_kd import Teacher
from timm_kd.checkpoint import safe_globals

sys.path.insert(0, ROOT)
import train_kd  # noqa: E402

FAST = [*TINY, '-b', '8', '--log-interval', '2']


def _run(image_folder, out, name, *extra):
    return train_kd.main(
        [
            image_folder,
            '--model',
            'test_resnet',
            *FAST,
            '--output',
            str(out),
            '--experiment',
            name,
            *extra,
        ]
    )


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
    header = (folder / 'summary.csv').read_text().splitlines()[0].split(',')
    # timm's columns first, in timm's order, then ours
    assert header[:6] == ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr']
    assert 'train_task_loss' in header[6:]
    assert not (folder / 'run.lock').exists()  # a cleanly finished folder holds no lock file
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
    kd = [
        '--teacher',
        'test_resnet',
        '--teacher-checkpoint',
        teacher,
        '--mixup',
        '0.2',
        '--cutmix',
        '1.0',
        '--bce-loss',
        '--kd-temperature',
        '2',
        '--model-ema',
        '--model-ema-decay',
        '0.5',
    ]
    _run(image_folder, teacher_run, 'kd', '--epochs', '1', *kd)
    folder = teacher_run / 'kd'
    rows = _summary(folder / 'summary.csv')
    assert (
        len(rows) == 1
        and float(rows[0]['train_kd_loss']) > 0
        and float(rows[0]['train_task_loss']) > 0
    )
    assert (
        abs(
            float(rows[0]['train_loss'])
            - float(rows[0]['train_kd_loss'])
            - float(rows[0]['train_task_loss'])
        )
        < 1e-4
    )
    first = _load(folder / 'last.pth.tar')['state_dict']

    _run(
        image_folder,
        teacher_run,
        'kd',
        '--epochs',
        '2',
        *kd,
        '--resume',
        str(folder / 'last.pth.tar'),
    )
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
    _run(
        image_folder,
        tmp_path,
        'hetero',
        '--epochs',
        '1',
        '--teacher',
        'test_vit',
        '--teacher-checkpoint',
        str(tmp_path / 'vit.pth'),
        '--teacher-kwargs',
        'img_size=48',
        '--teacher-input-size',
        '48',
        '48',
        '--teacher-mean',
        '0.1',
        '0.2',
        '0.3',
        '--teacher-std',
        '0.3',
        '0.3',
        '0.3',
        '--ori-loss-weight',
        '0',
    )
    rows = _summary(tmp_path / 'hetero' / 'summary.csv')
    assert 'train_task_loss' not in rows[0] and float(rows[0]['train_loss']) == float(
        rows[0]['train_kd_loss']
    )


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'train_kd.py'), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--kd-loss', 'nope'], "error: unknown --kd-loss 'nope'"),
        (
            ['--kd-loss', 'kd', 'dkd', '--kd-loss-weight', '1', '2', '3'],
            'error: --kd-loss-weight has 3 values',
        ),
        (['--teacher', 'test_resnet'], "error: no pretrained weights for teacher 'test_resnet'"),
        (
            ['--teacher', 'test_resnet', '--teacher-checkpoint', '/nonexistent.pth'],
            'error: checkpoint not found',
        ),
        (['--resume', '/nonexistent.pth'], 'error: --resume checkpoint not found'),
    ],
)
def test_cli_bad_input_is_one_line_error(image_folder, tmp_path, run_cli, extra, message):
    result = run_cli(
        train_kd.cli, image_folder, '--model', 'test_resnet', *FAST, '--output', tmp_path, *extra
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert 'Traceback' not in result.stderr


def test_missing_dataset_is_one_line_error(tmp_path):
    result = _cli(str(tmp_path / 'nothing'), '--model', 'test_resnet')
    assert result.returncode == 2 and 'error: dataset folder' in result.stderr


def test_torchrun_two_processes_gloo(vit_teacher, image_folder, tmp_path):
    """DDP with learnable KD parts (fitnet regressors, CRD embeddings and all-gathered memory, an
    aux head), and an EMA whose BatchNorm statistics are shared across the processes after the
    epoch."""
    cmd = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--nproc_per_node=2',
        '--master_port=29517',
        os.path.join(ROOT, 'train_kd.py'),
        image_folder,
        '--model',
        'test_resnet',
        *FAST,
        '--epochs',
        '1',
        *vit_teacher,
        '--kd-loss',
        'kd',
        'fitnet',
        'crd',
        *STAGES,
        '--kd-deep-supervision',
        '2',
        '--crd-num-negatives',
        '8',
        '--aug-repeats',
        '2',
        '--model-ema',
        '--output',
        str(tmp_path),
        '--experiment',
        'ddp',
    ]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):  # each process says where it trains, as timm's train.py
        assert (
            f'Training in distributed mode with 2 processes, 1 device per process. Process {rank}, '
            'total 2, device cpu.' in result.stderr
        )
    rows = _summary(tmp_path / 'ddp' / 'summary.csv')
    assert len(rows) == 1 and all(
        float(rows[0][f'train_{k}_loss']) > 0 for k in ('kd', 'fitnet', 'crd', 'aux')
    )


def test_ddp_two_processes_train_as_one_at_the_same_global_batch(
    vit_teacher, image_folder, tmp_path
):
    """A student without BatchNorm, no augmentation: 2 gloo processes x 24 images train exactly as 1
    x 48 (one update per epoch over the whole set, so the sampler's split cannot matter), epoch
    losses to 1e-4."""
    flags = [
        image_folder,
        '--model',
        'test_vit',
        '--model-kwargs',
        'img_size=32',
        *FAST,
        '--no-aug',
        '--epochs',
        '3',
        *vit_teacher,
        '--kd-loss',
        'kd',
        '--output',
        str(tmp_path),
    ]
    _run_flags = flags + ['-b', '48', '--experiment', 'one']
    train_kd.main(_run_flags)
    cmd = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--nproc_per_node=2',
        '--master_port=29519',
        os.path.join(ROOT, 'train_kd.py'),
        *flags,
        '-b',
        '24',
        '--experiment',
        'two',
    ]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS='1'),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (
        _summary(tmp_path / 'one' / 'summary.csv'),
        _summary(tmp_path / 'two' / 'summary.csv'),
    )
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ('train_loss', 'train_kd_loss', 'eval_loss'):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-4), (key, a, b)


def test_teacher_agreement_is_a_summary_column(vit_teacher, image_folder, tmp_path):
    """A student that is the teacher (same weights, no BatchNorm
    or dropout, lr ~0) agrees on every training view."""
    checkpoint = vit_teacher[vit_teacher.index('--teacher-checkpoint') + 1]
    _run(
        image_folder,
        tmp_path,
        'same',
        '--epochs',
        '1',
        *vit_teacher,
        '--model',
        'test_vit',
        '--model-kwargs',
        'img_size=32',
        '--initial-checkpoint',
        checkpoint,
        '--lr',
        '1e-12',
        '--weight-decay',
        '0',
        '--mixup',
        '0.5',
    )
    assert float(_summary(tmp_path / 'same' / 'summary.csv')[0]['train_teacher_agreement']) == 100.0


def test_more_processes_than_gpus_is_one_line(monkeypatch):
    from timm_kd import KDError
    from timm_kd.runtime import init_process

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    with pytest.raises(
        KDError,
        match=r'torchrun started 2 processes on this machine but it has 1 GPU\(s\); pass '
        r'--nproc_per_node 1, or --device cpu',
    ):
        init_process(None)


STAGES = ['--kd-student-stages', '2', '3', '--kd-teacher-stages', '1', '3']


@pytest.mark.parametrize(
    'method',
    'kd bkd bkl dkd dist ls hard fitnet at cc rkd crd review prelogits'.split(),
)
def test_every_method_trains_a_resnet_student_from_a_vit_teacher(
    method, vit_teacher, image_folder, tmp_path
):
    extra = {'crd': ['--crd-num-negatives', '8'], 'review': ['--review-warmup-epochs', '0']}.get(
        method, []
    )
    _run(
        image_folder,
        tmp_path,
        method,
        '--epochs',
        '1',
        '--mixup',
        '0.2',
        *vit_teacher,
        '--kd-loss',
        method,
        *STAGES,
        *extra,
    )
    row = _summary(tmp_path / method / 'summary.csv')[0]
    assert float(row[f'train_{method}_loss']) > 0
    assert (
        abs(
            float(row['train_loss'])
            - float(row['train_task_loss'])
            - float(row[f'train_{method}_loss'])
        )
        < 1e-4
    )


def test_feature_losses_and_deep_supervision_save_parts_apart_and_resume(
    vit_teacher, image_folder, tmp_path
):
    import timm

    args = [
        '--kd-loss',
        'kd',
        'fitnet',
        'crd',
        '--kd-loss-weight',
        '1',
        '0.5',
        '0.1',
        *STAGES,
        '--kd-deep-supervision',
        '2',
        '3',
        '--crd-num-negatives',
        '8',
        *vit_teacher,
    ]
    _run(image_folder, tmp_path, 'fd', '--epochs', '1', *args)
    ckpt = _load(tmp_path / 'fd' / 'last.pth.tar')
    assert set(ckpt['state_dict']) == set(
        timm.create_model('test_resnet', num_classes=3).state_dict()
    )
    kd_state = ckpt['task_state']['kd_losses']
    assert (
        any(k.startswith('fitnet.regressors') for k in kd_state) and 'crd._extra_state' in kd_state
    )
    assert set(ckpt['task_state']['aux_heads']) == {
        f'{i}.{p}.{w}' for i in (0, 1) for p in ('norm', 'fc') for w in ('weight', 'bias')
    }
    row = _summary(tmp_path / 'fd' / 'summary.csv')[0]
    weighted = (
        float(row['train_task_loss'])
        + float(row['train_kd_loss'])
        + 0.5 * float(row['train_fitnet_loss'])
        + 0.1 * float(row['train_crd_loss'])
        + float(row['train_aux_loss'])
    )
    assert abs(float(row['train_loss']) - weighted) < 1e-3

    from timm_kd import DistillationTask

    loaded = {}
    original = DistillationTask.load_task_state

    def spy(self, state, *a, **k):
        loaded.update(state or {})
        return original(self, state, *a, **k)

    DistillationTask.load_task_state = spy
    try:
        _run(
            image_folder,
            tmp_path,
            'fd',
            '--epochs',
            '2',
            *args,
            '--resume',
            str(tmp_path / 'fd' / 'last.pth.tar'),
        )
    finally:
        DistillationTask.load_task_state = original
    assert torch.equal(
        loaded['kd_losses']['crd._extra_state']['memory_s'],
        kd_state['crd._extra_state']['memory_s'],
    )
    assert [r['epoch'] for r in _summary(tmp_path / 'fd' / 'summary.csv')] == ['0', '1']
    resumed = _load(tmp_path / 'fd' / 'last.pth.tar')['task_state']['kd_losses']
    assert not torch.equal(
        resumed['crd._extra_state']['memory_s'], kd_state['crd._extra_state']['memory_s']
    )


def test_feature_stage_errors_are_one_line(vit_teacher, image_folder, tmp_path, run_cli):
    result = run_cli(
        train_kd.cli,
        image_folder,
        '--model',
        'test_resnet',
        *FAST,
        '--output',
        str(tmp_path),
        *vit_teacher,
        '--kd-loss',
        'fitnet',
        '--kd-student-stages',
        '9',
    )
    assert result.returncode == 2 and 'error: student stage 9 is out of range' in result.stderr
    result = run_cli(
        train_kd.cli,
        image_folder,
        '--model',
        'test_resnet',
        *FAST,
        '--output',
        str(tmp_path),
        *vit_teacher,
        '--kd-loss',
        'fitnet',
        '--kd-student-stages',
        '1',
        '2',
    )
    assert (
        result.returncode == 2
        and 'give --kd-student-stages and --kd-teacher-stages the same length' in result.stderr
    )


def test_several_students_share_one_teacher_pass_and_resume_each(
    vit_teacher, image_folder, tmp_path, monkeypatch
):
    """Two students (their own model, lr, losses, stages)
    on one data stream: the teacher runs once per batch."""
    from timm_kd.teacher import Teacher

    calls = []
    forward = Teacher.forward
    monkeypatch.setattr(
        Teacher,
        'forward',
        lambda self, x, stages=None: calls.append(x.shape[0]) or forward(self, x, stages),
    )
    _run(image_folder, tmp_path, 'single', '--epochs', '1', *vit_teacher)
    single_batches = calls.count(8)
    calls.clear()
    students = [
        '--student',
        '--model test_efficientnet --lr 0.02 --experiment effnet',
        '--student',
        '--kd-loss kd fitnet ' + ' '.join(STAGES),
    ]
    _run(image_folder, tmp_path, 'sweep', '--epochs', '1', *vit_teacher, *students)
    assert calls.count(8) == single_batches > 0  # one teacher pass per batch, not one per student

    first, second = tmp_path / 'sweep' / 'effnet', tmp_path / 'sweep' / '1-test_resnet'
    assert yaml.safe_load((first / 'args.yaml').read_text())['lr'] == 0.02
    assert yaml.safe_load((second / 'args.yaml').read_text())['kd_loss'] == ['kd', 'fitnet']
    assert 'train_fitnet_loss' in _summary(second / 'summary.csv')[0]
    assert 'train_fitnet_loss' not in _summary(first / 'summary.csv')[0]
    assert _load(first / 'last.pth.tar')['arch'] == 'test_efficientnet'

    resumed = [
        '--student',
        f'--model test_efficientnet --lr 0.02 --experiment effnet --resume {first}/last.pth.tar',
        '--student',
        f'--kd-loss kd fitnet {" ".join(STAGES)} --resume {second}/last.pth.tar',
    ]
    _run(image_folder, tmp_path, 'sweep', '--epochs', '2', *vit_teacher, *resumed)
    for folder in (first, second):
        assert [r['epoch'] for r in _summary(folder / 'summary.csv')] == ['0', '1']


def test_fast_teacher_flags_train(vit_teacher, image_folder, tmp_path, monkeypatch):
    """--teacher-fast: bf16 teacher weights, channels_last and a compiled teacher (dynamo's eager
    backend here, to keep the test fast; the inductor path is checked in test_teacher.py)."""
    compiled = []
    original = Teacher.compile
    monkeypatch.setattr(
        Teacher, 'compile', lambda self, **kw: compiled.append(kw) or original(self, **kw)
    )
    _run(
        image_folder,
        tmp_path,
        'fast',
        '--epochs',
        '1',
        *vit_teacher,
        '--teacher-fast',
        '--teacher-compile',
        'eager',
        '--torchcompile-mode',
        'reduce-overhead',
    )
    assert compiled == [{'backend': 'eager', 'mode': 'reduce-overhead'}]
    row = _summary(tmp_path / 'fast' / 'summary.csv')[0]
    assert float(row['train_kd_loss']) > 0
    # flags as given
    assert yaml.safe_load((tmp_path / 'fast' / 'args.yaml').read_text())['teacher_fast'] is True


# --- timm train.py's epoch logic ---


def test_summary_records_the_lr_each_epoch_trained_with(image_folder, tmp_path):
    """As timm: the row of epoch e holds the lr before the scheduler steps to e + 1 (cosine
    from 0.1 over 2 epochs: 0.1, then 0.05), and the mean over parameter groups."""
    _run(image_folder, tmp_path, 'lr', '--epochs', '2', '--lr', '0.1', '--sched', 'cosine')
    assert [float(r['lr']) for r in _summary(tmp_path / 'lr' / 'summary.csv')] == pytest.approx(
        [0.1, 0.05]
    )


def test_layer_decay_scales_the_lr_of_each_layer_group(image_folder, tmp_path):
    _run(
        image_folder,
        tmp_path,
        'ld',
        '--epochs',
        '1',
        '--model',
        'test_vit',
        '--model-kwargs',
        'img_size=32',
        '--opt',
        'adamw',
        '--lr',
        '0.01',
        '--layer-decay',
        '0.5',
    )
    groups = _load(tmp_path / 'ld' / 'last.pth.tar')['optimizer']['param_groups']
    scales = sorted({g['lr_scale'] for g in groups})
    # the head at full lr, each layer below x0.5
    assert len(scales) > 2 and scales[-1] == 1.0 and scales[-2] == 0.5
    # saved before the scheduler steps
    assert all(g['lr'] == pytest.approx(g['lr_scale'] * 0.01) for g in groups)


def test_validation_interval_stop_epoch_and_resume_auto(image_folder, tmp_path):
    """--val-interval 2 validates and checkpoints on epochs 1 and 3 (and the last); --stop-epoch 2
    stops early without shortening the schedule; --resume auto picks the experiment's last.pth.tar
    up."""
    common = ['--epochs', '3', '--val-interval', '2', '--resume', 'auto']
    _run(image_folder, tmp_path, 'vi', *common, '--stop-epoch', '2')
    assert [r['epoch'] for r in _summary(tmp_path / 'vi' / 'summary.csv')] == ['1']
    assert _load(tmp_path / 'vi' / 'last.pth.tar')['epoch'] == 1
    _run(image_folder, tmp_path, 'vi', *common)
    # the last epoch validates
    assert [r['epoch'] for r in _summary(tmp_path / 'vi' / 'summary.csv')] == [
        '1',
        '2',
    ]


def test_recovery_checkpoints_every_n_updates(image_folder, tmp_path):
    # 6 batches: updates 2, 4, 6
    _run(image_folder, tmp_path, 'rec', '--epochs', '1', '--recovery-interval', '2')
    # timm's saver names them epoch-update index and keeps the newest two
    assert sorted(p.name for p in (tmp_path / 'rec').glob('recovery-*')) == [
        'recovery-0-3.pth.tar',
        'recovery-0-5.pth.tar',
    ]
    assert _load(tmp_path / 'rec' / 'recovery-0-5.pth.tar')['epoch'] == 0


def test_no_validation_split_ranks_checkpoints_by_training_loss(image_folder, tmp_path):
    returned = _run(image_folder, tmp_path, 'noval', '--epochs', '2', '--val-split', '')
    rows = _summary(tmp_path / 'noval' / 'summary.csv')
    assert 'eval_top1' not in rows[0] and [r['train_loss'] for r in returned] == [
        float(r['train_loss']) for r in rows
    ]
    best = torch.load(tmp_path / 'noval' / 'model_best.pth.tar', weights_only=False)['metric']
    assert best == min(float(r['train_loss']) for r in rows)


def test_model_dtype_trains_the_student_in_bfloat16(image_folder, tmp_path):
    _run(image_folder, tmp_path, 'bf16', '--epochs', '1', '--model-dtype', 'bfloat16')
    state = _load(tmp_path / 'bf16' / 'last.pth.tar')['state_dict']
    assert {v.dtype for k, v in state.items() if v.is_floating_point()} == {torch.bfloat16}


def test_log_wandb_offline_without_an_account(image_folder, tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    monkeypatch.delenv('WANDB_API_KEY', raising=False)
    _run(image_folder, tmp_path, 'wb', '--epochs', '1', '--log-wandb', '--wandb-project', 'kd-test')
    runs = list((tmp_path / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and list(runs[0].glob('*.wandb'))


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--torchscript', '--teacher', 'test_resnet'], 'error: --torchscript cannot distill'),
        (['--torchscript', '--torchcompile'], 'error: --torchscript with --torchcompile'),
        (['--kd-loss-type', 'mse'], 'error: --kd-loss-type is not supported by timm-kd: '),
        (['--model', 'no_such_model'], "error: unknown --model 'no_such_model'"),
        (['--model-dtype', 'bfloat16', '--amp'], 'error: --model-dtype bfloat16 with --amp'),
    ],
)
def test_timm_flags_that_cannot_apply_are_one_line_errors(
    image_folder, tmp_path, run_cli, extra, message
):
    result = run_cli(
        train_kd.cli, image_folder, *FAST, '--output', tmp_path, '--model', 'test_resnet', *extra
    )
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)


def test_cuda_device_without_a_gpu_is_one_line(image_folder, tmp_path, run_cli):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    result = run_cli(
        train_kd.cli,
        image_folder,
        *FAST[:-2],
        '--output',
        str(tmp_path),
        '--model',
        'test_resnet',
        '--device',
        'cuda',
    )
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith('error: --device cuda: CUDA is not available')
    )


def test_start_up_is_logged_as_timm_logs_it(image_folder, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        train_kd.main(
            [
                image_folder,
                '--model',
                'test_resnet',
                *FAST,
                '--epochs',
                '1',
                '--output',
                str(tmp_path),
            ]
        )
    lines = caplog.text
    assert 'Model test_resnet created, param count:' in lines
    assert 'Created SGD (sgd) optimizer: lr 1.000e-02, weight decay 2e-05' in lines
    assert 'AMP not enabled. Training in float32.' in lines
    assert 'Scheduled epochs: 1. LR stepped per epoch.' in lines


def test_augmix_splits_distill_as_timm_trains_them(image_folder, tmp_path, monkeypatch):
    """--aug-splits 3 --jsd-loss --split-bn, as timm's train.py: each batch holds 3 AugMix views of
    every image (split-major, the teacher sees all of them), the hard-label loss is the JSD
    consistency loss, the student's BatchNorm keeps statistics per split; the views replay, so
    loader workers change nothing."""
    teacher = tmp_path / 't.pth'
    torch.save(__import__('timm').create_model('test_resnet', num_classes=3).state_dict(), teacher)
    seen = []
    infer = Teacher._infer
    monkeypatch.setattr(
        Teacher, '_infer', lambda self, x, s: seen.append(len(x)) or infer(self, x, s)
    )
    flags = [image_folder, '--model', 'test_resnet', *FAST, '--epochs', '1', '--aug-splits', '3',
             '--jsd-loss', '--split-bn', '--teacher', 'test_resnet', '--teacher-checkpoint',
             str(teacher), '--output', str(tmp_path)]  # fmt: skip
    train_kd.main([*flags, '--experiment', 'w0'])
    assert seen and all(n == 3 * 8 for n in seen)  # 48 images, batches of 8 images x 3 views
    with safe_globals():
        state = torch.load(tmp_path / 'w0' / 'last.pth.tar', weights_only=True)['state_dict']
    assert any('aux_bn' in k for k in state)  # timm's SplitBatchNorm2d
    train_kd.main([*flags, '--experiment', 'w2', '-j', '2'])
    assert _summary(tmp_path / 'w0' / 'summary.csv') == _summary(tmp_path / 'w2' / 'summary.csv')


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--aug-splits', '1'], '--aug-splits 1 makes no sense'),
        (['--aug-splits', '2', '--no-prefetcher'], '--aug-splits 2 needs the prefetcher'),
        (['--aug-splits', '2', '--mixup', '0.5'], '--aug-splits 2 with mixup/cutmix'),
        (['--jsd-loss'], '--jsd-loss compares the AugMix splits'),
        (['--split-bn'], '--split-bn keeps BatchNorm statistics per AugMix split'),
    ],
)
def test_what_timm_asserts_of_augmix_splits_is_one_line(
    image_folder, tmp_path, run_cli, extra, message
):
    result = run_cli(
        train_kd.cli, image_folder, *FAST, '--output', tmp_path, '--model', 'test_resnet', *extra
    )
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_a_cache_is_not_built_over_augmix_splits(image_folder, tmp_path, run_cli):
    from timm_kd.cli.cache import main as cache_main

    result = run_cli(cache_main, 'build', image_folder, '--model', 'test_resnet', *FAST,
                     '--teacher', 'test_resnet', '--aug-splits', '2', '--top-k', '2',
                     '--out', tmp_path / 'c')  # fmt: skip
    assert result.returncode == 2
    assert 'the teacher cache stores one answer per sample' in result.stderr.splitlines()[-1]


def test_torchscript_trains_a_plain_run_as_timm_does(image_folder, tmp_path):
    """--torchscript without a teacher: the scripted student trains (EMA too) and its checkpoint
    loads into the plain architecture."""
    import timm

    train_kd.main([image_folder, '--model', 'test_resnet', *FAST, '--epochs', '1', '--torchscript',
                   '--model-ema', '--output', str(tmp_path), '--experiment', 'ts'])  # fmt: skip
    assert len(_summary(tmp_path / 'ts' / 'summary.csv')) == 1
    with safe_globals():
        state = torch.load(tmp_path / 'ts' / 'last.pth.tar', weights_only=True)
    timm.create_model('test_resnet', num_classes=3).load_state_dict(state['state_dict'])
