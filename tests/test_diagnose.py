"""`python -m timm_kd.diagnose`: CKA and ECE against hand
computations, and the report on a real pair of models."""

import json

import pytest
import timm
import torch

from timm_kd.cli.diagnose import expected_calibration_error, linear_cka, main
from timm_kd.features import num_stages


def test_cka_is_one_for_the_same_representation_and_invariant_to_orthogonal_transforms():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert abs(linear_cka(x, x) - 1) < 1e-9
    assert abs(linear_cka(x, 3.0 * x @ q) - 1) < 1e-9  # rotation and isotropic scaling
    assert linear_cka(x, torch.randn(200, 8, generator=g)) < 0.3  # unrelated features


def test_ece_matches_a_hand_computation():
    # confidences 0.9, 0.9, 0.6, 0.6 (bins (0.867, 0.933]
    # and (0.533, 0.6]); correct: yes, no, yes, yes
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    target = torch.tensor([0, 0, 0, 1])
    # bin of 0.9: accuracy 1/2, confidence 0.9, share 1/2;
    # bin of 0.6: accuracy 1, confidence 0.6, share 1/2
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    result = expected_calibration_error(probs, target)
    assert abs(result['ece'] - expected) < 1e-6 and [b['count'] for b in result['bins']] == [2, 2]


def test_diagnose_writes_the_report_and_figures(image_folder, tmp_path):
    torch.manual_seed(0)
    torch.save(
        timm.create_model('test_resnet', num_classes=3).state_dict(), tmp_path / 'student.pth'
    )
    torch.save(
        timm.create_model('test_vit', num_classes=3, img_size=32).state_dict(),
        tmp_path / 'teacher.pth',
    )
    out = tmp_path / 'report'
    result = main(
        [
            image_folder,
            '--student',
            'test_resnet',
            '--student-checkpoint',
            str(tmp_path / 'student.pth'),
            '--teacher',
            'test_vit',
            '--teacher-kwargs',
            'img_size=32',
            '--teacher-checkpoint',
            str(tmp_path / 'teacher.pth'),
            '--input-size',
            '3',
            '32',
            '32',
            '--out',
            str(out),
            '-j',
            '0',
            '--cka-images',
            '16',
            '-b',
            '8',
        ]
    )
    assert (
        json.loads((out / 'diagnostics.json').read_text())['agreement_top1']
        == result['agreement_top1']
    )
    assert result['images'] == 24 and set(result['agreement_per_class']) == {0, 1, 2}
    stages = [
        num_stages(timm.create_model(n, **kw))
        for n, kw in (('test_resnet', {}), ('test_vit', {'img_size': 32}))
    ]
    assert len(result['cka']) == stages[0] and all(len(row) == stages[1] for row in result['cka'])
    assert all(0 <= v <= 1 + 1e-9 for row in result['cka'] for v in row)
    assert 0 <= result['student_ece'] <= 100 and result['kl_teacher_student'] >= 0
    assert sorted(result['figures']) == ['agreement_per_class.png', 'calibration.png', 'cka.png']
    assert all((out / f).stat().st_size > 1000 for f in result['figures'])


@pytest.mark.parametrize('images', ['0', '1'])
def test_too_few_cka_images_is_one_line(image_folder, tmp_path, capsys, images):
    with pytest.raises(SystemExit) as info:
        main([image_folder, '--teacher', 'test_resnet', '--student', 'test_resnet', '--out',
              str(tmp_path), '--cka-images', images])  # fmt: skip
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and f'--cka-images {images}: CKA compares stages' in line


def test_without_matplotlib_a_plot_is_one_line_naming_the_extra(
    image_folder, tmp_path, capsys, monkeypatch
):
    import sys

    for name in [m for m in sys.modules if m == 'matplotlib' or m.startswith('matplotlib.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # as if not installed: import fails
    with pytest.raises(SystemExit) as info:
        main(
            [
                image_folder,
                '--teacher',
                'test_resnet',
                '--student',
                'test_resnet',
                '--out',
                str(tmp_path),
            ]
        )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2
    assert line == (
        'error: plots need matplotlib, which timm-kd installs as an extra: '
        "pip install 'timm-kd[plots]'"
    )
