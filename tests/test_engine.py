"""engine.train_one_epoch: one teacher pass for every student,
sample-weighted epoch means, no host reads per step."""

import pytest
import timm
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from timm_kd import DistillationTask, LossSpec, Teacher, create_kd_student
from timm_kd.engine import LoopSettings, StudentRun, train_one_epoch
from timm_kd.run import ProcessSpec
from timm_kd.stream import TrainingStream

# Python-level reads of a tensor's value: each one waits
# for the device to finish (a host-device sync on CUDA)
HOST_READS = ('item', 'tolist', 'cpu', 'numpy', '__bool__', '__float__', '__int__')


class CountingTeacher(Teacher):
    calls = 0

    def _infer(self, images, stages):
        CountingTeacher.calls += 1
        return super()._infer(images, stages)


def _runs(lr: float = 0.05):
    """Two students on one teacher: test_resnet with vanilla
    KD, test_efficientnet with kd + fitnet on stage 2."""
    torch.manual_seed(0)
    teacher = CountingTeacher(timm.create_model('test_vit', num_classes=4, img_size=32))
    runs = []
    for name, losses, stages in (
        ('test_resnet', ['kd'], (-1,)),
        ('test_efficientnet', ['kd', 'fitnet'], (2,)),
    ):
        kd_student = create_kd_student(
            timm.create_model(name, num_classes=4),
            teacher,
            LossSpec(tuple(losses), student_stages=stages, teacher_stages=stages),
            input_size=(3, 32, 32),
        )
        task = DistillationTask(
            kd_student, SoftTargetCrossEntropy(), teacher=teacher, verbose=False
        )
        runs.append(StudentRun(task, torch.optim.SGD(kd_student.parameters(), lr=lr), name=name))
    return teacher, runs


def _loader(num_batches: int, last: int = 2):  # mixup needs even batches
    g = torch.Generator().manual_seed(1)
    sizes = [4] * (num_batches - 1) + [last]
    return [
        (torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g))
        for n in sizes
    ]


def _stream(loader, mixup=None, grad_accum_steps=1):
    process = ProcessSpec(seed=2, grad_accum_steps=grad_accum_steps)
    return TrainingStream(loader, mixup, device=torch.device('cpu'), process=process)


def _epoch(runs, teacher, loader, **kwargs):
    mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, num_classes=4)
    settings = LoopSettings(**kwargs)
    return train_one_epoch(0, runs, _stream(loader, mixup), teacher=teacher, settings=settings)


def test_one_teacher_pass_per_batch_serves_every_student():
    teacher, runs = _runs()
    CountingTeacher.calls = 0
    metrics = _epoch(runs, teacher, _loader(5))
    assert CountingTeacher.calls == 5
    assert set(metrics[0]) == {'loss', 'task_loss', 'kd_loss', 'teacher_agreement'}
    assert set(metrics[1]) == {'loss', 'task_loss', 'kd_loss', 'fitnet_loss', 'teacher_agreement'}
    assert all(run.num_updates == 5 for run in runs)


def test_epoch_metrics_are_the_sample_weighted_mean_of_the_steps():
    # weights stay put, so each batch's loss can be recomputed afterwards
    teacher, runs = _runs(lr=0.0)
    metrics = _epoch(runs, teacher, _loader(3))
    mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, num_classes=4)
    sums, count = [0.0, 0.0], 0
    for _, batch in _stream(_loader(3), mixup).epoch(0):  # the same mixup draws (seeded stream)
        x, y = batch.input, batch.target
        for i, run in enumerate(runs):
            sums[i] += run.task(x, y)['kd_loss'].item() * x.shape[0]
        count += x.shape[0]
    for i in range(2):
        assert abs(metrics[i]['kd_loss'] - sums[i] / count) < 1e-5


def test_the_step_reads_nothing_back_to_the_host(monkeypatch):
    """Host reads happen at log intervals and at the end
    of the epoch only: as many for 9 batches as for 3.

    Counts Python-level reads (`.item()`, `bool(t)`, ...); `benchmarks/kd_step.py` counts every sync
    on CUDA.
    """
    counts = {}
    for num_batches in (3, 9):
        teacher, runs = _runs()
        loader = _loader(num_batches)
        reads = []
        with monkeypatch.context() as m:
            for name in HOST_READS:
                original = getattr(torch.Tensor, name)
                m.setattr(
                    torch.Tensor,
                    name,
                    lambda self, *a, _f=original, _n=name, **k: (
                        reads.append(_n) or _f(self, *a, **k)
                    ),
                )
            _epoch(runs, teacher, loader, log_interval=1000)  # logs at the first and the last batch
        counts[num_batches] = len(reads)
    assert counts[3] == counts[9] > 0, counts


# --- parity with timm's training loop: accumulation, clipping, second-order optimizers ---


def _plain_run(opt: str = 'sgd', **run_kwargs):
    """A student without BatchNorm or dropout (test_convnext),
    trained without a teacher: deterministic."""
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    kd_student = create_kd_student(
        timm.create_model('test_convnext', num_classes=4), None, input_size=(3, 32, 32)
    )
    task = DistillationTask(kd_student, nn.CrossEntropyLoss(), verbose=False)
    optimizer = (
        torch.optim.SGD(kd_student.parameters(), lr=0.1)
        if opt == 'sgd'
        else create_optimizer_v2(kd_student, opt=opt, lr=0.1, weight_decay=0.0)
    )
    return StudentRun(task, optimizer, **run_kwargs)


def _weights(run):
    return [p.detach().clone() for p in run.task.kd_student.student.parameters()]


@pytest.mark.parametrize('num_batches, accum', [(5, 2), (7, 3), (4, 2)])
def test_accumulation_averages_each_window_including_a_short_last_one(num_batches, accum):
    """Each update is the mean gradient over the batches of its window; the last window of an epoch
    may hold fewer batches (5 batches, accumulation 2: windows of 2, 2 and 1) and is averaged over
    those, as timm does."""
    loader = _loader(num_batches, last=4)
    run = _plain_run()
    train_one_epoch(0, [run], _stream(loader, grad_accum_steps=accum))

    reference = _plain_run()
    windows = [loader[i : i + accum] for i in range(0, num_batches, accum)]
    for window in windows:
        loss = sum(reference.task(x, y)['loss'] for x, y in window) / len(window)
        loss.backward()
        reference.optimizer.step()
        reference.optimizer.zero_grad()
    assert run.num_updates == len(windows)
    for got, want in zip(_weights(run), _weights(reference)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _one_step_update(clip_mode: str, clip_grad: float):
    """(update per parameter, raw gradient per parameter)
    of one SGD step at lr 0.1 under clipping."""
    x, y = _loader(1, last=4)[0]
    raw = _plain_run()
    raw.task(x, y)['loss'].backward()
    grads = [p.grad.clone() for p in raw.task.kd_student.student.parameters()]
    run = _plain_run(clip_grad=clip_grad, clip_mode=clip_mode)
    before = _weights(run)
    train_one_epoch(0, [run], _stream([(x, y)]))
    return [(b - a) / 0.1 for a, b in zip(_weights(run), before)], grads


def test_clip_by_norm_and_by_value():
    updates, grads = _one_step_update('norm', 1e-3)
    assert torch.cat([u.flatten() for u in updates]).norm().item() == pytest.approx(1e-3, rel=1e-3)
    # the raw gradient was larger
    assert torch.cat([g.flatten() for g in grads]).norm().item() > 1e-2
    updates, grads = _one_step_update('value', 1e-4)
    assert max(u.abs().max().item() for u in updates) == pytest.approx(1e-4, rel=1e-2)


def test_adaptive_clipping_leaves_the_classifier_out():
    """AGC clips each unit's gradient relative to its weight
    norm, except the classifier's (timm's exclude_head)."""
    updates, grads = _one_step_update('agc', 1e-3)
    head_weight, head_bias = updates[-2:]
    torch.testing.assert_close(head_weight, grads[-2], rtol=1e-4, atol=1e-7)  # unclipped
    torch.testing.assert_close(head_bias, grads[-1], rtol=1e-4, atol=1e-7)
    assert any(
        not torch.allclose(u, g, rtol=1e-3, atol=1e-7) for u, g in zip(updates[:-2], grads[:-2])
    )


def test_second_order_optimizers_get_the_graph_of_the_gradients():
    """AdaHessian needs create_graph=True on backward
    (timm's is_second_order); without it its step fails."""
    run = _plain_run(opt='adahessian')
    assert run.optimizer.is_second_order
    before = _weights(run)
    train_one_epoch(0, [run], _stream(_loader(2, last=4)))
    assert any(not torch.equal(a, b) for a, b in zip(before, _weights(run)))


def test_a_recovery_keeps_each_ranks_sums_and_each_rank_resumes_its_own():
    """A total restored on rank 0 would be added up in another order than the uninterrupted run's
    (((p0 + p1) + r0) + r1 against (p0 + r0) + (p1 + r1)), and round otherwise in float32."""
    from timm_kd.training.student_job import _partial_sums

    run = StudentRun(task=None, optimizer=None)
    run.sums = {'loss': torch.tensor(1.1), 'kd_loss': torch.tensor(0.3)}
    run.count = torch.tensor(8.0)
    sums, counts = run.sums_by_rank(distributed=False)
    assert sums == [{'kd_loss': torch.tensor(0.3).item(), 'loss': torch.tensor(1.1).item()}]
    assert counts == [8.0]
    state = {'partial_sums_by_rank': [{'loss': 1.0}, {'loss': 2.0}],
             'partial_counts_by_rank': [4.0, 4.0]}  # fmt: skip
    assert _partial_sums(state, 1) == {'sums': {'loss': 2.0}, 'count': 4.0}
    older = {'partial_sums': {'loss': 3.0}, 'partial_count': 8.0}  # the total, on rank 0
    assert _partial_sums(older, 0)['sums'] == {'loss': 3.0}
    assert _partial_sums(older, 1) == {'sums': {'loss': 0.0}, 'count': 0.0}
    p0, p1, r0, r1 = (torch.tensor(v) for v in (2.818378448486328, 7.558042049407959,
                                                6.183690071105957, 2.50506329536438))  # fmt: skip
    assert ((p0 + p1) + r0) + r1 != (p0 + r0) + (p1 + r1)  # why the order matters


def test_tta_validation_reduces_outputs_as_timms_train_py():
    """--tta r: each run of r consecutive outputs of a batch is averaged and scored against the
    first of their targets, as timm's train.py's validate does."""
    from timm_kd.engine import validate

    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=4).eval()
    task = DistillationTask(model, nn.CrossEntropyLoss())
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    got = validate(task, loader, device=torch.device('cpu'), settings=LoopSettings(tta=2))
    with torch.no_grad():
        out = model(x).unfold(0, 2, 2).mean(dim=2)  # both batches split evenly into pairs
    target = y[0::2]
    top1 = (out.argmax(-1) == target).float().mean() * 100
    assert got['top1'] == pytest.approx(float(top1))
    assert got['loss'] == pytest.approx(float(nn.functional.cross_entropy(out, target)), rel=1e-5)
