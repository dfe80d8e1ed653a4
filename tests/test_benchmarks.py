"""The benchmark scripts still run and report what
docs/benchmarks.md quotes (figures are not checked here)."""

import json
import os
import runpy
import sys

import pytest
from conftest import ROOT

TINY = [
    '--student',
    'test_resnet',
    '--teacher',
    'test_resnet',
    '--img-size',
    '32',
    '--batch-size',
    '4',
    '--num-classes',
    '5',
    '--repeats',
    '1',
    '--warmup',
    '0',
]


@pytest.fixture
def bench(capsys, monkeypatch):
    """Run a benchmark script in-process, as
    `python benchmarks/SCRIPT ARGS` would; its JSON line."""

    def run(script, *args):
        path = os.path.join(ROOT, 'benchmarks', script)
        monkeypatch.setattr(sys, 'argv', [path, *args])
        monkeypatch.syspath_prepend(os.path.dirname(path))
        capsys.readouterr()
        runpy.run_path(path, run_name='__main__')
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    return run


def _bench(bench, *args, script='kd_step.py'):
    return bench(script, *TINY, *args)


def test_kd_step_reports_ratios_and_the_multi_student_cost(bench):
    out = _bench(bench, '--students', '2', '--teacher-dtype', 'bfloat16')
    assert set(out['ms']) == {'student', 'teacher', 'ours', 'timm', '2 students'}
    for key in (
        'overhead_vs_floor',
        'speedup_vs_timm',
        'per_student_vs_floor',
        'teacher_top1_agreement_vs_fp32',
    ):
        assert out[key] > 0, key
    assert out['teacher_dtype'] == 'bfloat16' and out['inference_mode']


def test_kd_step_ablation_adds_one_switch_at_a_time(bench):
    # dynamo without inductor: the rows, not the speed (test_teacher compiles with inductor)
    rows = _bench(bench, '--ablation', '--compile-backend', 'eager')['ablation']
    assert list(rows) == [
        'fp32, no_grad',
        '+ inference_mode',
        '+ channels_last',
        '+ bf16 weights',
        '+ compile',
    ]
    assert rows['fp32, no_grad']['speedup'] == 1.0 and rows['+ inference_mode']['agreement'] == 1.0


def test_kd_losses_times_each_method_against_kd(bench):
    out = _bench(bench, '--methods', 'fitnet', 'dkd', '--num-samples', '64', script='kd_losses.py')
    assert list(out['ratio_vs_kd']) == ['kd', 'fitnet', 'dkd'] and out['ratio_vs_kd']['kd'] == 1.0
    assert all(ms > 0 for ms in out['ms_per_step'].values())


def test_kd_cache_reports_the_cached_step_against_plain_live_and_timm(bench):
    tiny = [
        '--student',
        'test_resnet',
        '--teachers',
        'test_resnet',
        '--img-size',
        '32',
        '--batch-size',
        '4',
        '--steps',
        '3',
        '--repeats',
        '1',
        '--num-classes',
        '5',
        '--top-k',
        '2',
    ]
    out = bench('kd_cache.py', *tiny)['results']['test_resnet']
    assert set(out['ms']) == {'plain', 'live', 'cached', 'timm', 'teacher'}
    for key in (
        'cached_vs_plain',
        'cached_vs_live',
        'speedup_vs_timm',
        'build_vs_teacher_inference',
    ):
        assert out[key] > 0, key
    # K float32 values + K int16 indices + the tail
    assert out['bytes_per_sample_epoch'] == 2 * (4 + 2) + 4


def test_cache_read_reports_what_verification_costs(bench):
    out = bench('cache_read.py', '--epochs', '2', '--samples', '2048', '--repeats', '1')
    compact = bench('cache_read.py', '--epochs', '1', '--samples', '2048', '--repeats', '1',
                    '--layout', 'compact')  # fmt: skip
    dense = bench('cache_read.py', '--epochs', '1', '--samples', '2048', '--repeats', '1',
                  '--layout', 'dense')  # fmt: skip
    assert compact['bytes_per_sample'] == 41 < out['bytes_per_sample'] == 64
    assert dense['bytes_per_sample'] == 1508 and dense['plain_samples_per_s'] > 0
    assert out['epochs'] == 2 and out['verified_vs_plain'] > 0 and out['first_epoch_vs_plain'] > 0


def test_loader_reports_replay_against_timm_and_the_resume_start_up(bench):
    out = bench('loader.py', '--images', '24', '--size', '32', '--batch', '4', '--workers', '0',
                '--repeats', '1')  # fmt: skip
    assert out['replay_vs_timm'] > 0 and out['workers_0']['timm_images_per_s'] > 0
    assert out['checked_vs_unchecked'] > 0 and out['workers_0']['checked_images_per_s'] > 0
    assert set(out['checksum_mb_per_s']) == {'crc32', 'adler32', 'jpeg_decode'}
    assert set(out['resume_first_batch_s']) == {'10%', '90%'}
    paired = out['per_sample_same_draws']
    assert paired['replay_vs_timm'] > 0 and paired['checked_vs_timm'] > 0 and paired['timm_us'] > 0


def test_cache_tail_reports_each_tail_model_against_the_full_logits(bench, tmp_path):
    """On 4 generated photos and random EfficientNet-Lite0 weights saved under the package's own
    names (the script maps them onto timm's by order)."""
    import numpy as np
    import timm
    import torch
    from PIL import Image

    model = timm.create_model('tf_efficientnet_lite0')
    names = [f'_tensor{i}' for i in range(len(model.state_dict()))]
    torch.save(dict(zip(names, model.state_dict().values())), tmp_path / 'lite0.pth')
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = (rng.random((48, 64, 3)) * 255).astype('uint8')
        Image.fromarray(pixels).save(tmp_path / f'{i}.jpg')
    out = bench('cache_tail.py', '--photos', str(tmp_path), '--teacher-weights',
                str(tmp_path / 'lite0.pth'), '--views', '8', '--epochs', '2')  # fmt: skip
    assert out['views_scored'] == 32
    tails = {(r['k'], r['tail']) for r in out['rows']}
    assert len(tails) == 26 and (10, 'flat') in tails
    rows = {(r['k'], r['tail']): r for r in out['rows']}
    assert rows[10, 'flat']['bytes'] == 41 and rows[10, 'flat']['imagenet_gb'] == 15.8
    # the per-image prior: the same bytes per sample-epoch, plus 500 B per image stored once
    assert rows[10, 'per-image prior']['bytes'] == 41
    assert rows[10, 'per-image prior']['imagenet_gb'] == 16.4
    assert all(r['grad_t4'] >= 0 and r['loss_t1'] >= 0 for r in out['rows'])
    dense, cycled = rows[1000, 'dense (12-bit, the layout)'], rows[1000, 'dense, --view-cycle 8']
    assert dense['bytes'] == cycled['bytes'] == 1508 and cycled['imagenet_gb'] == 15.5
    assert dense['imagenet_gb'] == 579.6
    assert max(dense[e] for e in ('loss_t1', 'grad_t1', 'loss_t4', 'grad_t4')) < 1e-2
