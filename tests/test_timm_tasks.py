"""timm's three distillation tasks, written as timm's flags: our run of each computes, on one batch,
the loss timm's own task computes (logit, feature: pre-logits MSE with a projection, token: DeiT's
distillation head, soft and hard), each component to 1e-6; and a distilled-token student trains
live and from the teacher-output cache."""

import pytest
import timm
import torch
from conftest import TINY
from timm.task import FeatureDistillationTask, LogitDistillationTask, TokenDistillationTask

from timm_kd import DistillationTask, InputAdapter, Teacher, create_kd_student
from timm_kd.cli.train import parse_args
from timm_kd.cli.train.parse import student_spec

# DeiT-Tiny distilled, at timm's test_* size: two tokens, two heads
DEIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


def _ours(flags, student, teacher_model):
    """Our task from timm's flags: the losses and weights their translation gives, the teacher fed
    as timm's task feeds it (renormalized from the student's pretrained mean/std)."""
    args, _ = parse_args(['/data', '--kd-model-name', 'x', *flags])
    losses = student_spec(args).losses
    s, t = student.pretrained_cfg, teacher_model.pretrained_cfg
    teacher = Teacher(teacher_model, InputAdapter(s['mean'], s['std'], t['mean'], t['std']))
    kd_student = create_kd_student(student, teacher, losses, input_size=(3, 32, 32))
    task = DistillationTask(
        kd_student, torch.nn.CrossEntropyLoss(), teacher=teacher,
        kd_loss_weights=losses.weights_dict(True), ori_loss_weight=losses.ori_weight,
    )  # fmt: skip
    return task, losses


def _batch(classes):
    torch.manual_seed(1)
    return torch.randn(6, 3, 32, 32), torch.randint(0, classes, (6,))


def _close(a, b):
    a, b = float(a.detach()), float(b.detach())
    assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), (a, b)


WEIGHTS = [[], ['--task-loss-weight', '0.3'],
           ['--task-loss-weight', '0.5', '--distill-loss-weight', '2']]  # fmt: skip


@pytest.mark.parametrize('weights', WEIGHTS)
def test_logit_distillation_equals_timms(weights):
    student = timm.create_model('test_resnet', num_classes=5)
    teacher = timm.create_model('test_vit', img_size=32, num_classes=5)
    ours, losses = _ours(weights, student, teacher)
    kw = dict(task_loss_weight=None, distill_loss_weight=None)
    kw.update(
        {k.strip('-').replace('-', '_'): float(v) for k, v in zip(weights[::2], weights[1::2])}
    )
    theirs = LogitDistillationTask(student, teacher, torch.nn.CrossEntropyLoss(),
                                   temperature=4.0, verbose=False, **kw)  # fmt: skip
    x, y = _batch(5)
    a, b = ours(x, y), theirs(x, y)
    assert losses.names == ('kd',)
    for mine, timms in (('loss', 'loss'), ('task_loss', 'task_loss'), ('kd_loss', 'kd_loss')):
        _close(a[mine], b[timms])


def test_feature_distillation_equals_timms():
    """--kd-distill-type feature: the pooled pre-logits, projected 96 -> 64, MSE."""
    student = timm.create_model('test_resnet', num_classes=5)
    teacher = timm.create_model('test_vit', img_size=32, num_classes=5)
    flags = ['--kd-distill-type', 'feature', '--task-loss-weight', '0.4']
    ours, losses = _ours(flags, student, teacher)
    theirs = FeatureDistillationTask(student, teacher, torch.nn.CrossEntropyLoss(),
                                     task_loss_weight=0.4, verbose=False)  # fmt: skip
    projection = ours.trainable_module.kd_losses['prelogits'].projection
    projection.load_state_dict(theirs.trainable_module.projection.state_dict())
    x, y = _batch(5)
    a, b = ours(x, y), theirs(x, y)
    assert losses.names == ('prelogits',) and losses.weights == (pytest.approx(0.6),)
    for mine, timms in (
        ('loss', 'loss'),
        ('task_loss', 'task_loss'),
        ('prelogits_loss', 'kd_loss'),
    ):
        _close(a[mine], b[timms])
    # the widths timm's flags state are checked against the models
    with pytest.raises(Exception, match='student feature width is 96'):
        _ours([*flags, '--kd-student-feature-dim', '32'], student, teacher)


@pytest.mark.parametrize('kind', ['soft', 'hard'])
def test_token_distillation_equals_timms(kind):
    """--kd-distill-type token: the class head learns the labels, the distillation head the
    teacher (KL at T, or CE against its top-1 on the mixed batch); eval averages the two heads."""
    student = timm.create_model('deit_tiny_distilled_patch16_224', num_classes=5, **DEIT)
    teacher = timm.create_model('test_resnet', num_classes=5)
    flags = ['--kd-distill-type', 'token', '--kd-token-distill-type', kind, '--task-loss-weight',
             '0.5', '--kd-temperature', '3']  # fmt: skip
    ours, losses = _ours(flags, student, teacher)
    theirs = TokenDistillationTask(student, teacher, torch.nn.CrossEntropyLoss(),
                                   distill_type=kind, task_loss_weight=0.5, temperature=3.0,
                                   verbose=False)  # fmt: skip
    torch.manual_seed(1)
    x = torch.randn(6, 3, 32, 32)
    y = torch.softmax(torch.randn(6, 5), -1)  # a mixed target: the teacher's argmax decides
    a, b = ours(x, y), theirs(x, y)
    name = 'hard' if kind == 'hard' else 'kd'
    assert losses.names == (name,) and losses.distill_token
    for mine, timms in (
        ('loss', 'loss'),
        ('task_loss', 'task_loss'),
        (f'{name}_loss', 'distill_loss'),
    ):
        _close(a[mine], b[timms])
    assert torch.equal(a['output'], b['output'])  # the class head's logits
    student.eval()  # evaluation: the mean of the two heads, as timm's model gives it
    with torch.no_grad():
        tokens = student.forward_features(x)
        mean = (student.head(tokens[:, 0]) + student.head_dist(tokens[:, 1])) / 2
        assert torch.allclose(ours.get_eval_model()(x), mean, atol=1e-6)


def test_token_distillation_needs_a_distilled_student():
    from timm_kd import KDError

    with pytest.raises(KDError, match='has none; use a distilled model'):
        _ours(['--kd-distill-type', 'token'], timm.create_model('test_resnet', num_classes=5),
              timm.create_model('test_resnet', num_classes=5))  # fmt: skip


def test_a_distilled_token_student_trains_live_and_from_the_cache(image_folder, tmp_path):
    """One epoch of deit_tiny_distilled (test size) with --kd-distill-type token, hard: the live
    run and the run from the teacher-output cache log the same losses."""
    import csv

    from timm_kd.cli.cache import main as cache_main
    from timm_kd.cli.train import main as train

    teacher = tmp_path / 't.pth'
    torch.save(timm.create_model('test_resnet', num_classes=3).state_dict(), teacher)
    kwargs = [f'{k}={v}' for k, v in DEIT.items()]
    flags = [image_folder, '--model', 'deit_tiny_distilled_patch16_224', '--model-kwargs', *kwargs,
             *TINY, '-b', '8', '--epochs', '1', '--mixup', '0.5', '--kd-distill-type', 'token',
             '--kd-token-distill-type', 'hard']  # fmt: skip
    with_teacher = ['--teacher', 'test_resnet', '--teacher-checkpoint', str(teacher)]
    cache_main(['build', *flags, *with_teacher, '--top-k', '3', '--out', str(tmp_path / 'cache')])
    train([*flags, *with_teacher, '--output', str(tmp_path), '--experiment', 'live'])
    train([*flags, '--teacher-cache', str(tmp_path / 'cache'), '--output', str(tmp_path),
           '--experiment', 'cached'])  # fmt: skip
    rows = {
        name: list(csv.DictReader(open(tmp_path / name / 'summary.csv')))
        for name in ('live', 'cached')
    }
    assert float(rows['live'][0]['train_hard_loss']) > 0
    for key in ('train_loss', 'train_task_loss', 'train_hard_loss', 'eval_top1'):
        live, cached = float(rows['live'][0][key]), float(rows['cached'][0][key])
        assert cached == pytest.approx(live, rel=1e-5), key
