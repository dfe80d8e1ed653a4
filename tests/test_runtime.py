"""timm_kd.runtime and the CUDA contracts a CPU-only machine can hold: every collective gets a
tensor on the process's device (NCCL takes CUDA tensors only), timm's CUDA switches, and the
float16 path with its loss scaler, run on the CPU."""

import csv
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY

from timm_kd.runtime import Process, amp_setup, fast_cuda_math, over_ranks

META = torch.device('meta')  # not the CPU, and tensors can live there without hardware


class _Collective(Exception):
    """Raised by the recording collectives: a meta tensor holds no value to go on with."""


@pytest.fixture
def collectives(monkeypatch):
    """torch.distributed's collectives replaced by ones that record the device of every tensor
    they are given, in a group of 2 processes, then stop the caller."""
    devices = []

    def record(*args, **kwargs):
        for arg in [*args, *kwargs.values()]:
            for t in arg if isinstance(arg, (list, tuple)) else [arg]:
                if isinstance(t, torch.Tensor):
                    devices.append(t.device)
        raise _Collective

    dist = torch.distributed
    for name in ('all_reduce', 'all_gather', 'all_gather_into_tensor', 'broadcast', 'reduce'):
        monkeypatch.setattr(dist, name, record)
    monkeypatch.setattr(dist, 'get_world_size', lambda *a: 2)
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    return devices


def _report_skipped(tmp_path):
    """The loop's count of unreadable files after each epoch (it died under NCCL: a CPU tensor)."""
    from timm_kd.decoding import DecodedImages
    from timm_kd.training.loop import _report_skipped

    class OneUnreadable(DecodedImages):
        skipped = 1

    images = OneUnreadable.__new__(OneUnreadable)
    loader = SimpleNamespace(dataset=images)
    t = SimpleNamespace(stream=SimpleNamespace(loader=loader), skipped=0,
                        process=Process(META, distributed=True, world_size=2))  # fmt: skip
    _report_skipped(t, 0)


def _preemption(tmp_path):
    from timm_kd.reliability import Preemption

    with Preemption(True, META) as preemption:  # its signal handlers restored on the way out
        preemption.requested()


def _sums_by_rank(tmp_path):
    from timm_kd.engine import StudentRun

    run = SimpleNamespace(sums={'loss': torch.zeros((), device=META)},
                          count=torch.zeros((), device=META))  # fmt: skip
    StudentRun.sums_by_rank(run, True)


def _crd_normalizer(tmp_path):
    from timm_kd.losses.crd import ContrastiveRepresentationKD

    ContrastiveRepresentationKD._normalizer(
        SimpleNamespace(num_samples=10), torch.ones(4, 3, device=META)
    )


def _cache_build_epochs(tmp_path):
    from timm_kd.cli.cache import _epochs_to_build

    _epochs_to_build(str(tmp_path), 2, Process(META, distributed=True, world_size=2))


@pytest.mark.parametrize(
    'caller', [_report_skipped, _preemption, _sums_by_rank, _crd_normalizer, _cache_build_epochs]
)
def test_every_collective_gets_a_tensor_on_the_processs_device(collectives, caller, tmp_path):
    """With the process's device made not-CPU (meta), each place that calls a collective hands it
    tensors on that device only."""
    with pytest.raises(_Collective):
        caller(tmp_path)
    assert collectives and all(d == META for d in collectives), collectives


def test_over_ranks_is_the_value_itself_in_one_process():
    assert over_ranks(3.0, Process(torch.device('cpu'))) == 3.0


def test_timms_cuda_switches_are_set_on_cuda_only():
    backends = torch.backends
    saved = backends.cudnn.benchmark, backends.cuda.matmul.allow_tf32
    try:
        backends.cudnn.benchmark = backends.cuda.matmul.allow_tf32 = False
        fast_cuda_math(torch.device('cpu'))
        assert not backends.cudnn.benchmark and not backends.cuda.matmul.allow_tf32
        fast_cuda_math(torch.device('cuda', 0))  # setting them needs no GPU
        assert backends.cudnn.benchmark and backends.cuda.matmul.allow_tf32
    finally:
        backends.cudnn.benchmark, backends.cuda.matmul.allow_tf32 = saved


def test_float16_scales_its_loss_on_the_cpu_and_skips_a_step_that_overflows():
    """CUDA's float16 path, on the CPU: the scaler multiplies the loss, and a step whose gradients
    overflow changes no weight and halves the scale."""
    autocast, scaler = amp_setup(True, 'float16', torch.device('cpu'))
    assert scaler is not None and amp_setup(True, 'bfloat16', torch.device('cpu'))[1] is None
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.full((3, 4), 1e-3)
    with autocast():
        out = model(x)
    assert out.dtype == torch.float16
    before, scale = model.weight.detach().clone(), scaler.state_dict()['scale']
    scaler(out.float().sum() * float('inf'), optimizer)  # overflow: the step is skipped
    assert torch.equal(model.weight, before) and scaler.state_dict()['scale'] == scale / 2
    optimizer.zero_grad()
    with autocast():
        loss = model(x).float().mean() * 1e-2  # scaled by 2**15, gradients within float16
    scaler(loss, optimizer)
    assert not torch.equal(model.weight, before)


def test_a_float16_run_keeps_its_scaler_in_checkpoints_and_resumes_exactly(
    image_folder, vit_teacher, tmp_path
):
    """--amp --amp-dtype float16 on the CPU, with a bfloat16 teacher (which float16 autocast would
    break): the checkpoints hold the scaler's state, and a run stopped after epoch 0 and resumed
    ends as the uninterrupted run."""
    from timm_kd.cli.train import main

    flags = [image_folder, '--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '2',
             *vit_teacher, '--teacher-dtype', 'bfloat16', '--amp', '--amp-dtype', 'float16',
             '--mixup', '0.5', '--output', str(tmp_path)]  # fmt: skip
    main([*flags, '--experiment', 'whole'])
    main([*flags, '--experiment', 'cut', '--stop-epoch', '1'])
    state = torch.load(tmp_path / 'cut' / 'last.pth.tar', weights_only=False)['amp_scaler']
    assert state['scale'] > 0 and state['_growth_tracker'] == 6  # 6 steps without overflow
    main([*flags, '--experiment', 'cut', '--resume', 'auto'])
    rows = [list(csv.reader(open(tmp_path / n / 'summary.csv'))) for n in ('whole', 'cut')]
    assert len(rows[0]) == 3 and rows[0] == rows[1]
