"""`--student "FLAGS"`: each student is the shared
flags plus its own; what all share may not differ."""

import pytest
import yaml

from timm_kd import KDError
from timm_kd.cli.train import parse_args
from timm_kd.cli.train.kd_flags import loss_config as kd_loss_config
from timm_kd.cli.train.students import student_args


def test_each_student_overrides_its_own_flags_over_the_shared_ones():
    args, text = parse_args(
        [
            '/d',
            '--teacher',
            't',
            '--lr',
            '0.1',
            '--mixup',
            '0.2',
            '--experiment',
            'sweep',
            '--student',
            '--model resnet18 --kd-loss dkd --dkd-beta 2',
            '--student',
            '--model resnet34 --lr 0.3 --weight-decay 0.05 --experiment big',
        ]
    )
    (first, first_text), (second, _) = student_args(args, text)
    assert (first.model, first.lr, first.mixup, first.kd_loss) == ('resnet18', 0.1, 0.2, ['dkd'])
    assert kd_loss_config(first) == ({'dkd': 1.0}, {'dkd': {'beta': 2.0}})
    assert (second.model, second.lr, second.weight_decay, second.kd_loss) == (
        'resnet34',
        0.3,
        0.05,
        ['kd'],
    )
    assert (first.experiment, second.experiment) == ('sweep/0-resnet18', 'sweep/big')
    assert 'model: resnet18' in first_text and 'students: []' in first_text
    assert [a for a, _ in student_args(*parse_args(['/d', '--model', 'm']))][0].model == 'm'


@pytest.mark.parametrize(
    'flags, message',
    [
        ('--batch-size 64', 'sets --batch-size, which all students share'),
        (
            '--torchcompile-mode reduce-overhead',
            'sets --torchcompile-mode, which all students share',
        ),
        ('--mixup 0.5 --teacher other', 'sets --mixup, --teacher, which all students share'),
        ('--kd-loss nope', "unknown --kd-loss 'nope'"),
        ('--no-such-flag 1', 'not valid timm-kd-train flags'),
    ],
)
def test_a_student_that_changes_the_shared_data_stream_is_an_error(flags, message):
    with pytest.raises(KDError, match=message):
        student_args(
            *parse_args(['/d', '--teacher', 't', '--student', '--model a', '--student', flags])
        )


def test_resume_belongs_inside_each_student():
    with pytest.raises(KDError, match='give each student its own --resume'):
        student_args(*parse_args(['/d', '--resume', 'x.pth.tar', '--student', '--model a']))


def test_a_students_timm_weight_flags_keep_timms_meaning():
    """A student's flags are parsed over the shared flags
    as given, so timm's complementary weighting applies."""
    args, text = parse_args(
        ['/d', '--teacher', 't', '--student', '--task-loss-weight 0.25', '--student', '--model b']
    )
    (first, first_text), (second, _) = student_args(args, text)
    assert (first.ori_loss_weight, first.kd_loss_weight) == (0.25, [0.75])
    assert (second.ori_loss_weight, second.kd_loss_weight) == (1.0, [1.0])
    # its args.yaml holds its flags as given
    assert yaml.safe_load(first_text)['task_loss_weight'] == 0.25
