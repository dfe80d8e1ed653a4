"""Teacher ensembles: the target against a hand
computation, the flag grouping, and a heterogeneous run."""

import csv

import pytest
import timm
import torch
from conftest import TINY

from timm_kd import InputAdapter, KDError, Teacher
from timm_kd.cli.train import cli, main
from timm_kd.cli.train.config import parse_args
from timm_kd.cli.train.kd_flags import split_teachers
from timm_kd.ensemble import EnsembleTeacher

FAST = ['--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '1']


def _teachers():
    torch.manual_seed(0)
    cnn = Teacher(
        timm.create_model('test_resnet', num_classes=5),
        InputAdapter((0.5,) * 3, (0.5,) * 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    )
    vit = Teacher(
        timm.create_model('test_vit', num_classes=5, img_size=48),
        InputAdapter((0.5,) * 3, (0.5,) * 3, (0.5,) * 3, (0.5,) * 3, size=(48, 48)),
    )
    return cnn, vit


def test_the_ensemble_target_is_the_weighted_mixture_of_the_teachers_probabilities():
    cnn, vit = _teachers()
    x = torch.randn(4, 3, 32, 32)
    # each through its own preprocessing: other mean/std, 48 px
    z1, z2 = (
        cnn(x).logits,
        vit(x).logits,
    )
    prob = EnsembleTeacher([cnn, vit], [1, 3], mode='prob', temperature=2.0)
    expected = 0.25 * (z1 / 2).softmax(-1) + 0.75 * (z2 / 2).softmax(-1)
    assert torch.allclose((prob(x).logits / 2).softmax(-1), expected, atol=1e-6)
    logit = EnsembleTeacher([cnn, vit], [1, 3], mode='logit')
    assert torch.allclose(logit(x).logits, 0.25 * z1 + 0.75 * z2, atol=1e-6)
    outs = prob.forward_many(x, [None, None])
    assert len(outs) == 2 and torch.equal(outs[0].logits, outs[1].logits)
    with pytest.raises(KDError, match='feature losses need one teacher'):
        prob(x, stages=[1])


def test_teacher_flags_belong_to_the_teacher_before_them():
    rest, teachers = split_teachers(
        [
            'DATA',
            '--model',
            'm',
            '--teacher',
            'a',
            '--teacher-checkpoint',
            'a.pth',
            '--lr',
            '0.1',
            '--teacher=b',
            '--teacher-kwargs',
            'img_size=48',
            '--teacher-input-size',
            '3',
            '48',
            '48',
            '--teacher-weight',
            '2',
        ]
    )
    assert rest == ['DATA', '--model', 'm', '--lr', '0.1']
    assert [(t['name'], t['checkpoint'], t['weight']) for t in teachers] == [
        ('a', 'a.pth', 1.0),
        ('b', None, 2.0),
    ]
    assert teachers[1]['kwargs'] == {'img_size': 48} and teachers[1]['input_size'] == [3, 48, 48]
    assert split_teachers(['DATA', '--teacher', 'a']) == (['DATA', '--teacher', 'a'], None)


def test_a_cnn_and_a_vit_teacher_at_different_sizes_train_a_student(image_folder, tmp_path, capsys):
    torch.save(timm.create_model('test_resnet', num_classes=3).state_dict(), tmp_path / 'cnn.pth')
    torch.save(
        timm.create_model('test_vit', num_classes=3, img_size=48).state_dict(), tmp_path / 'vit.pth'
    )
    # the fast path's bf16 weights, for the ViT only
    teachers = [
        '--teacher',
        'test_resnet',
        '--teacher-checkpoint',
        str(tmp_path / 'cnn.pth'),
        '--teacher',
        'test_vit',
        '--teacher-kwargs',
        'img_size=48',
        '--teacher-input-size',
        '3',
        '48',
        '48',
        '--teacher-checkpoint',
        str(tmp_path / 'vit.pth'),
        '--teacher-weight',
        '2',
        '--teacher-dtype',
        'bfloat16',
    ]
    main(
        [
            image_folder,
            *FAST,
            *teachers,
            '--kd-temperature',
            '2',
            '--output',
            str(tmp_path),
            '--experiment',
            'ens',
        ]
    )
    with open(tmp_path / 'ens' / 'summary.csv') as f:
        row = next(csv.DictReader(f))
    assert float(row['train_kd_loss']) > 0 and 0 <= float(row['train_teacher_agreement']) <= 100
    reloaded, _ = parse_args([image_folder, '--config', str(tmp_path / 'ens' / 'args.yaml')])
    # args.yaml keeps the ensemble
    assert [t['name'] for t in reloaded.teachers] == [
        'test_resnet',
        'test_vit',
    ]
    assert [t['dtype'] for t in reloaded.teachers] == [None, 'bfloat16']
    with pytest.raises(SystemExit):
        cli([image_folder, *FAST, *teachers, '--kd-loss', 'fitnet', '--output', str(tmp_path)])
    assert (
        "feature losses need one teacher's feature maps"
        in capsys.readouterr().err.strip().splitlines()[-1]
    )


def test_the_teacher_cache_stores_the_ensemble_output(image_folder, tmp_path, capsys):
    from timm_kd.cli.cache import main as cache_main

    torch.save(timm.create_model('test_resnet', num_classes=3).state_dict(), tmp_path / 'cnn.pth')
    torch.save(
        timm.create_model('test_vit', num_classes=3, img_size=32).state_dict(), tmp_path / 'vit.pth'
    )
    flags = [
        image_folder,
        *FAST,
        '--teacher',
        'test_resnet',
        '--teacher-checkpoint',
        str(tmp_path / 'cnn.pth'),
        '--teacher',
        'test_vit',
        '--teacher-kwargs',
        'img_size=32',
        '--teacher-checkpoint',
        str(tmp_path / 'vit.pth'),
        '--mixup',
        '0.5',
        '--output',
        str(tmp_path),
    ]
    cache_main(['build', *flags, '--top-k', '3', '--out', str(tmp_path / 'cache')])
    main([*flags, '--experiment', 'live'])
    main([*flags, '--teacher-cache', str(tmp_path / 'cache'), '--experiment', 'cached'])
    rows = []
    for name in ('live', 'cached'):
        with open(tmp_path / name / 'summary.csv') as f:
            rows.append(next(csv.DictReader(f)))
    assert all(float(rows[0][k]) == pytest.approx(float(rows[1][k]), abs=1e-5) for k in rows[0])
    # the cache holds the mixture at T=1: a run at T=4
    # is refused, with or without naming the teachers
    data_only = [image_folder, *FAST, '--mixup', '0.5', '--output', str(tmp_path)]
    for run_flags in (flags, data_only):
        with pytest.raises(SystemExit) as info:
            cli([*run_flags, '--teacher-cache', str(tmp_path / 'cache'), '--kd-temperature', '4'])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert info.value.code == 2, line
        assert 'other target (temperature: the cache has 1.0, this run 4.0)' in line, line


def test_live_ensemble_and_cached_teachers_share_one_interface(tmp_path):
    from timm_kd.cache import CachedTeacher
    from timm_kd.teacher import TeacherLike

    live = Teacher(timm.create_model('test_resnet', num_classes=3))
    ensemble = EnsembleTeacher([live, live], [1.0, 1.0])
    manifest = type('Cache', (), {'manifest': {'num_classes': 3}})()  # the interface only
    cached = CachedTeacher(manifest, 0, torch.device('cpu'))
    for teacher in (live, ensemble, cached):
        assert isinstance(teacher, TeacherLike), type(teacher).__name__
    assert not isinstance(torch.nn.Linear(2, 2), TeacherLike)


def test_a_member_setting_its_own_class_count_is_one_line(image_folder, tmp_path, run_cli):
    result = run_cli(
        cli, image_folder, *FAST, '--output', tmp_path, '--teacher', 'test_resnet',
        '--teacher-kwargs', 'num_classes=4', '--teacher', 'test_resnet',
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: --teacher-kwargs num_classes=4 of teacher 'test_resnet': "
            'timm-kd sets num_classes'
        )
    )
