"""What only a GPU runs: NCCL under torchrun, float16 autocast with its scaler on CUDA, the
prefetcher's erasing on the device, a cache built on the CPU serving a CUDA run. Skipped on a
machine without CUDA (the CPU-side contracts of these paths are in `tests/test_runtime.py`,
`tests/test_teacher.py` and `tests/test_replay.py`; CONTRIBUTING.md lists them)."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

# TINY's settings on the GPU: 32 px, no loader workers, no warmup
CUDA = ['--model', 'test_resnet', '--img-size', '32', '--lr', '0.01', '--warmup-epochs', '0',
        '-j', '0', '--device', 'cuda', '-b', '8', '--epochs', '2', '--reprob', '0.25',
        '--mixup', '0.4']  # fmt: skip


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _run(*argv, torchrun=False):
    launcher = ['-m', 'torch.distributed.run', '--nproc_per_node=1', '--master_port=29541']
    cmd = [sys.executable, *(launcher if torchrun else []), '-m', *argv]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_torchrun_trains_under_nccl_with_float16_and_a_cast_teacher(
    image_folder, vit_teacher, tmp_path
):
    """The README's torchrun command on one GPU: NCCL's collectives (the per-epoch counts, the loss
    sums, preemption checks), float16 autocast with the scaler, a bfloat16 teacher inside it."""
    flags = [image_folder, *CUDA, *vit_teacher, '--teacher-dtype', 'bfloat16', '--amp',
             '--recovery-interval', '2', '--output', str(tmp_path),
             '--experiment', 'nccl']  # fmt: skip
    _run('timm_kd.train', *flags, torchrun=True)
    assert len(_rows(tmp_path / 'nccl' / 'summary.csv')) == 2


def test_a_cache_built_on_the_cpu_serves_a_cuda_run_as_the_live_teacher_does(
    image_folder, vit_teacher, tmp_path
):
    """The views are the same on every device (the erasing noise is drawn on the CPU), so a
    cache built on the CPU trains a CUDA run within the CPU's and CUDA's float rounding."""
    cache = tmp_path / 'cache'
    build = [image_folder, *CUDA, *vit_teacher, '--top-k', '3', '--out', str(cache)]
    _run('timm_kd.cache', 'build', *build, '--device', 'cpu')
    common = [image_folder, *CUDA, '--output', str(tmp_path)]
    _run('timm_kd.train', *common, *vit_teacher, '--experiment', 'live')
    _run('timm_kd.train', *common, '--teacher-cache', str(cache), '--experiment', 'cached')
    live, cached = (
        _rows(tmp_path / 'live' / 'summary.csv'),
        _rows(tmp_path / 'cached' / 'summary.csv'),
    )
    assert len(live) == len(cached) == 2
    for a, b in zip(live, cached):
        assert float(a['train_kd_loss']) == pytest.approx(float(b['train_kd_loss']), rel=1e-3)
    assert os.path.isfile(tmp_path / 'cached' / 'last.pth.tar')
