"""`python -m timm_kd.validate`: accuracy with the model's
own preprocessing, ImageNet-ReaL, teacher agreement."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timm_kd.cli.validate import main


@pytest.fixture(scope='module')
def val_folder(tmp_path_factory):
    """3 classes x 4 images named as ImageNet's validation files (what ReaL labels are keyed by)."""
    root = tmp_path_factory.mktemp('val')
    rng = np.random.default_rng(0)
    i = 0
    for c in range(3):
        (root / 'validation' / f'class{c}').mkdir(parents=True)
        for _ in range(4):
            i += 1
            pixels = (rng.random((40, 40, 3)) * 80 + c * 60).astype('uint8')
            Image.fromarray(pixels).save(
                root / 'validation' / f'class{c}' / f'ILSVRC2012_val_{i:08d}.JPEG'
            )
    return root


def test_accuracy_real_labels_and_teacher_agreement(val_folder, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=3)
    torch.save(model.state_dict(), tmp_path / 'student.pth')
    # ReaL: image i's reassessed labels; the first image
    # gets no label (ReaL skips it), the rest get class 0
    (tmp_path / 'real.json').write_text(json.dumps([[]] + [[0]] * 11))
    out = tmp_path / 'results.json'
    # compared with CPU numbers below
    result = main(
        [
            str(val_folder),
            '--model',
            'test_resnet',
            '--checkpoint',
            str(tmp_path / 'student.pth'),
            '--real-labels',
            str(tmp_path / 'real.json'),
            '--teacher',
            'test_resnet',
            '--teacher-checkpoint',
            str(tmp_path / 'student.pth'),
            '-b',
            '5',
            '-j',
            '0',
            '--results-file',
            str(out),
            '--device',
            'cpu',
        ]
    )
    assert json.loads(out.read_text()) == result and result['num_images'] == 12
    # the model's own cfg
    assert result['data_config']['input_size'] == list(model.pretrained_cfg['input_size'])

    # the same numbers computed by hand with the same preprocessing
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    dataset = timm.data.create_dataset('', root=str(val_folder), split='validation')
    model.eval()
    x = torch.stack([transform(Image.open(p).convert('RGB')) for p, _ in dataset.reader.samples])
    y = torch.tensor([t for _, t in dataset.reader.samples])
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert result['top1'] == pytest.approx((pred == y).float().mean().item() * 100, abs=1e-3)
    assert result['real_top1'] == pytest.approx(
        (pred[1:] == 0).float().mean().item() * 100, abs=1e-3
    )
    assert result['top5'] == 100.0  # 3 classes: top-5 covers them all
    # the teacher is the student
    assert result['agreement'] == 100.0 and result['teacher_top1'] == result['top1']


def test_unreachable_weights_are_one_line(val_folder, capsys):
    # conftest points the release files at a closed local port
    with pytest.raises(SystemExit) as info:
        main([str(val_folder), '--model', 'resnet50.vkd'])
    # (a subprocess test in test_pretrained counts lines)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and line.startswith(
        'error: cannot download the weights of resnet50.vkd from'
    )
    assert 'TIMM_KD_RELEASE_URL' in line
    with pytest.raises(SystemExit) as info:  # a Hub name that is not in the (empty, offline) cache
        main([str(val_folder), '--model', 'hf-hub:nobody/nothing'])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: no weights for 'hf-hub:nobody/nothing'")


def test_a_one_channel_student_is_scored_on_an_image_folder(tmp_path):
    """Grayscale students (--in-chans 1) read ImageFolder
    images as 'L', as timm's validate.py does."""
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / 'validation' / f'class{c}').mkdir(parents=True)
        for i in range(3):
            pixels = (rng.random((32, 32)) * 100 + c * 100).astype('uint8')
            Image.fromarray(pixels).save(tmp_path / 'validation' / f'class{c}' / f'{i}.png')
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=2, in_chans=1)
    torch.save(
        {
            'state_dict': model.state_dict(),
            'args': {'input_size': [1, 32, 32], 'mean': [0.5], 'std': [0.25]},
        },
        tmp_path / 'student.pth.tar',
    )
    result = main(
        [
            str(tmp_path),
            '--model',
            'test_resnet',
            '--checkpoint',
            str(tmp_path / 'student.pth.tar'),
            '-j',
            '0',
        ]
    )
    assert result['num_images'] == 6 and result['data_config']['input_size'] == [1, 32, 32]
