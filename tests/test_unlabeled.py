"""Unlabeled images: KD terms only, never the hard-label loss; end to end through timm-kd-train."""

import csv

import numpy as np
import pytest
import timm
import torch
from conftest import TINY
from PIL import Image
from torch import nn

from timm_kd import DistillationTask, KDError, LossSpec, Teacher, create_kd_student
from timm_kd.cli.train import cli, main
from timm_kd.unlabeled import labeled_mask

FAST = ['--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '1']


@pytest.fixture(scope='module')
def unlabeled_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('unlabeled')
    rng = np.random.default_rng(1)
    for i in range(20):  # no class folders, some nesting
        folder = root / ('a' if i % 2 else 'b')
        folder.mkdir(exist_ok=True)
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype('uint8')).save(folder / f'{i}.jpg')
    return root


def _task():
    torch.manual_seed(0)
    teacher = Teacher(timm.create_model('test_vit', num_classes=3, img_size=32))
    student = create_kd_student(
        timm.create_model('test_resnet', num_classes=3), teacher, LossSpec(), input_size=(3, 32, 32)
    )
    return DistillationTask(student, nn.CrossEntropyLoss(), teacher=teacher, verbose=False).train()


def test_unlabeled_rows_get_no_hard_label_loss():
    task, x = _task(), torch.randn(4, 3, 32, 32)
    target = torch.tensor([2, 0, 1, 1])
    none = task(x, target, labeled=torch.zeros(4, dtype=torch.bool))
    assert none['task_loss'].item() == 0 and none['kd_loss'].item() > 0
    some = task(x, target, labeled=torch.tensor([True, False, True, False]))
    # per batch row
    expected = nn.CrossEntropyLoss(reduction='sum')(none['output'][[0, 2]], target[[0, 2]]) / 4
    assert torch.allclose(some['task_loss'], expected) and torch.allclose(
        some['kd_loss'], none['kd_loss']
    )


def test_after_mixing_a_row_is_labeled_only_with_a_labeled_partner():
    known = torch.tensor([True, True, False, True])
    assert labeled_mask(known, mixed=False).tolist() == [True, True, False, True]
    # row i mixes with row 3 - i
    assert labeled_mask(known, mixed=True).tolist() == [
        True,
        False,
        False,
        True,
    ]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_training_with_an_unlabeled_folder_and_with_no_labels_at_all(
    image_folder, unlabeled_folder, vit_teacher, tmp_path
):
    main(
        [
            image_folder,
            *FAST,
            *vit_teacher,
            '--unlabeled-data',
            str(unlabeled_folder),
            '--unlabeled-ratio',
            '0.5',
            '--mixup',
            '0.5',
            '--output',
            str(tmp_path),
            '--experiment',
            'semi',
        ]
    )
    row = _rows(tmp_path / 'semi' / 'summary.csv')[0]
    assert float(row['train_kd_loss']) > 0 and float(row['train_task_loss']) > 0
    main(
        [
            image_folder,
            *FAST,
            *vit_teacher,
            '--unlabeled-data',
            str(unlabeled_folder),
            '--train-fraction',
            '0',
            '--ori-loss-weight',
            '0',
            '--num-classes',
            '3',
            '--output',
            str(tmp_path),
            '--experiment',
            'kd_only',
        ]
    )
    row = _rows(tmp_path / 'kd_only' / 'summary.csv')[0]
    assert float(row['train_kd_loss']) > 0 and 'train_task_loss' not in row


@pytest.mark.parametrize(
    'extra, message',
    [
        ([], '--unlabeled-data needs a teacher'),
        (['--kd-loss', 'dkd'], "--kd-loss dkd uses each image's label"),
    ],
)
def test_unlabeled_runs_that_cannot_work_are_one_line(
    image_folder, unlabeled_folder, vit_teacher, tmp_path, capsys, extra, message
):
    flags = [
        image_folder,
        *FAST,
        '--unlabeled-data',
        str(unlabeled_folder),
        '--output',
        str(tmp_path),
        *extra,
    ]
    with pytest.raises(SystemExit):
        cli(flags + (vit_teacher if extra else []))
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_teacher_cache_covers_unlabeled_images(
    image_folder, unlabeled_folder, vit_teacher, tmp_path
):
    from timm_kd.cli.cache import main as cache_main

    flags = [
        image_folder,
        *FAST,
        *vit_teacher,
        '--unlabeled-data',
        str(unlabeled_folder),
        '--mixup',
        '0.5',
        '--output',
        str(tmp_path),
    ]
    cache_main(['build', *flags, '--top-k', '3', '--out', str(tmp_path / 'cache')])
    main([*flags, '--experiment', 'live'])
    main([*flags, '--teacher-cache', str(tmp_path / 'cache'), '--experiment', 'cached'])
    live, cached = (
        _rows(tmp_path / 'live' / 'summary.csv'),
        _rows(tmp_path / 'cached' / 'summary.csv'),
    )
    assert all(float(live[0][k]) == pytest.approx(float(cached[0][k]), abs=1e-5) for k in live[0])


def test_an_unreadable_unlabeled_image_is_one_line_naming_it(tmp_path):
    from timm_kd.unlabeled import ImageFiles

    (tmp_path / 'good.png').write_bytes(b'')  # an empty file with an image name
    with pytest.raises(
        KDError, match=r'cannot read unlabeled image .*good.png .*; remove or replace it'
    ):
        ImageFiles(str(tmp_path))[0]


def test_a_worker_error_reaches_the_user_as_its_own_one_line(capsys):
    from timm_kd.errors import one_line_errors

    wrapped = (
        'Caught KDError in DataLoader worker process 0.\nOriginal Traceback (most recent call '
        'last):\n  File "x.py", line 1\ntimm_kd.errors.KDError: cannot read unlabeled image a.png'
    )
    with pytest.raises(SystemExit):
        with one_line_errors():
            raise KDError(wrapped)
    assert capsys.readouterr().err == 'error: cannot read unlabeled image a.png\n'


def test_a_ratio_above_the_unlabeled_count_says_what_the_epoch_becomes(caplog):
    import logging

    from timm_kd.unlabeled import WithUnlabeled

    class Images(torch.utils.data.Dataset):
        transform, targets = None, torch.zeros(10, dtype=torch.long)

        def __len__(self):
            return 10

    with caplog.at_level(logging.INFO, logger='timm_kd.unlabeled'):
        views = WithUnlabeled(Images(), Images(), ratio=1000)
    assert len(views) == 10 + 10_000
    assert (
        '--unlabeled-ratio 1000: 10000 unlabeled images per epoch beside 10 labeled' in caplog.text
    )
