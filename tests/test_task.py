"""DistillationTask: the loss it returns, what it trains and what it saves."""

import pytest
import timm
import torch
import torch.nn as nn

from timm_kd import DistillationTask, KDStudent, Teacher, create_kd_loss


def _task(**kwargs):
    torch.manual_seed(0)
    student = timm.create_model('test_resnet', num_classes=4)
    teacher = Teacher(timm.create_model('test_vit', num_classes=4, img_size=32))
    return DistillationTask(
        KDStudent(student, {'kd': create_kd_loss('kd')}),
        nn.CrossEntropyLoss(),
        teacher=teacher,
        **kwargs,
    )


def test_loss_is_weighted_sum_of_components():
    task = _task(kd_loss_weights={'kd': 2.0}, ori_loss_weight=0.5)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = task(x, y)
    assert torch.allclose(out['loss'], 0.5 * out['task_loss'] + 2.0 * out['kd_loss'])
    student_logits = task.trainable_module.student(x)
    teacher_logits = task.teacher(x).logits
    assert torch.allclose(
        out['kd_loss'], create_kd_loss('kd')(student_logits, teacher_logits, y), atol=1e-5
    )


def test_zero_hard_label_weight_drops_the_term():
    out = _task(ori_loss_weight=0.0)(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert 'task_loss' not in out and torch.equal(out['loss'], out['kd_loss'])


def test_without_teacher_it_is_plain_training():
    task = DistillationTask(timm.create_model('test_resnet', num_classes=4), nn.CrossEntropyLoss())
    out = task(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert set(out) == {'output', 'task_loss', 'loss'}
    with pytest.raises(ValueError):
        DistillationTask(timm.create_model('test_resnet'), nn.CrossEntropyLoss(), ori_loss_weight=0)


def test_backward_reaches_student_only_and_teacher_stays_in_eval():
    task = _task()
    task.train()
    assert task.trainable_module.training and not task.teacher.model.training
    task(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))['loss'].backward()
    assert all(p.grad is not None for p in task.trainable_module.parameters() if p.requires_grad)
    assert all(p.grad is None for p in task.teacher.parameters())


def test_checkpoint_state_holds_the_student_not_the_teacher():
    task = _task()
    task.setup_ema(decay=0.5)
    state = task.get_checkpoint_state()
    ema_state = task.get_checkpoint_state(ema=True)
    student_keys = set(timm.create_model('test_resnet', num_classes=4).state_dict())
    assert set(state['state_dict']) == student_keys
    assert set(ema_state['state_dict_ema']) == student_keys


def test_a_bfloat16_student_takes_feature_losses_and_deep_supervision():
    """--model-dtype bfloat16: the shape probe feeds the student its own dtype, and projections
    and auxiliary heads are built at it (a float32 probe failed at the first layer)."""
    from timm_kd import create_kd_student
    from timm_kd.run import LossSpec

    torch.manual_seed(0)
    student = timm.create_model('test_resnet', num_classes=4).to(torch.bfloat16)
    teacher = Teacher(timm.create_model('test_vit', num_classes=4, img_size=32))
    spec = LossSpec(names=('kd', 'fitnet'), weights=(1.0, 1.0), deep_supervision=(1,))
    kd_student = create_kd_student(student, teacher, spec, input_size=(3, 32, 32), num_classes=4)
    assert {p.dtype for p in kd_student.parameters()} == {torch.bfloat16}
    task = DistillationTask(kd_student, nn.CrossEntropyLoss(), teacher=teacher)
    out = task(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16), torch.tensor([0, 1]))
    out['loss'].float().backward()
    assert torch.isfinite(out['loss'].float())
