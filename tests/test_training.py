"""`timm_kd.training`: the trainer as a library. `fit(parse_run(argv))` trains what the program
trains; a `RunSpec` built or changed in code trains too, and its checkpoints rebuild their student
from the typed record alone."""

import csv
import dataclasses

import pytest
import torch
from conftest import TINY

import timm_kd
from timm_kd.cli.train import cli
from timm_kd.data import DatasetOptions, LoaderOptions
from timm_kd.errors import KDError
from timm_kd.run import (
    ModelSpec,
    OptimizerSpec,
    OutputSpec,
    PreprocessSpec,
    ProcessSpec,
    RunSpec,
    StudentSpec,
    TeacherSetup,
)


def _summary(folder):
    with open(folder / 'summary.csv', newline='') as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _floats(rows):
    return [{k: float(v) for k, v in row.items() if k != 'student'} for row in rows]


def test_fit_of_parse_run_returns_the_programs_figures(image_folder, vit_teacher, tmp_path):
    """Two epochs of KD: the rows `fit` returns are the program's summary.csv, figure for figure,
    and the weights are the same."""
    argv = [image_folder, '--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '2',
            *vit_teacher, '--output', str(tmp_path)]  # fmt: skip
    cli([*argv, '--experiment', 'program'])
    rows = timm_kd.fit(timm_kd.parse_run([*argv, '--experiment', 'library']))
    program = _summary(tmp_path / 'program')
    assert [r['epoch'] for r in program] == [0, 1] and 'train_kd_loss' in program[0]
    assert _floats(rows) == program == _summary(tmp_path / 'library')
    a = torch.load(tmp_path / 'program' / 'last.pth.tar', weights_only=False)['state_dict']
    b = torch.load(tmp_path / 'library' / 'last.pth.tar', weights_only=False)['state_dict']
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_parsed_run_changed_in_code_trains_the_change(image_folder, tmp_path):
    """`dataclasses.replace` on a parsed run: validation every second epoch (loop control) gives
    one row where the parsed run gives two; another learning rate other figures."""
    argv = [image_folder, '--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '2',
            '--output', str(tmp_path), '--experiment', 'a']  # fmt: skip
    run = timm_kd.parse_run(argv)
    base = timm_kd.fit(run)
    student = run.students[0]
    changed = dataclasses.replace(
        run,
        loop=dataclasses.replace(run.loop, val_interval=2),
        students=(
            dataclasses.replace(
                student,
                optimizer=dataclasses.replace(student.optimizer, lr=0.05),
                output=dataclasses.replace(student.output, experiment='b'),
            ),
        ),
    )
    rows = timm_kd.fit(changed)
    assert [r['epoch'] for r in base] == [0, 1] and [r['epoch'] for r in rows] == [1]
    assert rows[0]['lr'] == pytest.approx(0.05 * 0.5) != base[1]['lr']  # cosine, halfway
    assert rows[0]['train_loss'] != base[1]['train_loss']


def test_a_run_built_in_code_trains_and_its_checkpoint_rebuilds_the_student(image_folder, tmp_path):
    """No flags at all: a `RunSpec` of library values. It trains, writes no args.yaml (it has
    no flags to record), and `load_student` rebuilds its student, drop-path rate, pooling and
    input size included, from the typed record alone."""
    run = RunSpec(
        data=DatasetOptions(data_dir=image_folder, batch_size=8),
        views=LoaderOptions(batch_size=8, workers=0, epochs=1),
        process=ProcessSpec(device='cpu'),
        teachers=TeacherSetup(),
        preprocess=PreprocessSpec(img_size=32),
        students=(
            StudentSpec(
                model='test_vit',
                create=ModelSpec(
                    keywords=(('drop_path_rate', 0.1), ('global_pool', 'avg'), ('img_size', 32))
                ),
                optimizer=OptimizerSpec(lr=0.01),
                output=OutputSpec(output=str(tmp_path), experiment='coded'),
            ),
        ),
    )
    rows = timm_kd.fit(run)
    assert [r['epoch'] for r in rows] == [0] and 0 <= rows[0]['eval_top1'] <= 100
    folder = tmp_path / 'coded'
    assert not (folder / 'args.yaml').exists()
    model = timm_kd.load_student(str(folder / 'last.pth.tar'))
    assert type(model).__name__ == 'VisionTransformer' and model.global_pool == 'avg'
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert model.pretrained_cfg['input_size'] == (3, 32, 32) and model.num_classes == 3


def test_a_checkpoint_rebuilds_from_the_typed_record_without_timms_args(image_folder, tmp_path):
    """The typed record alone is enough: with timm's `args` removed from the checkpoint, the
    student (--model-kwargs and --gp included) loads strictly as before."""
    cli([image_folder, '--model', 'test_vit', *TINY, '-b', '8', '--epochs', '1', '--gp', 'avg',
         '--model-kwargs', 'img_size=32', 'qkv_bias=False', '--output', str(tmp_path),
         '--experiment', 's'])  # fmt: skip
    path = tmp_path / 's' / 'last.pth.tar'
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint['args'], checkpoint['arch']
    torch.save(checkpoint, tmp_path / 'typed.pth.tar')
    model = timm_kd.load_student(str(tmp_path / 'typed.pth.tar'))
    assert model.blocks[-1].attn.qkv.bias is None and model.global_pool == 'avg'
    reference = timm_kd.load_student(str(path))
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    checkpoint['saver']['run']['format'] = 99  # written by a later timm-kd
    torch.save(checkpoint, tmp_path / 'later.pth.tar')
    with pytest.raises(KDError, match='format 99; this timm-kd reads 1 to 2') as e:
        timm_kd.load_student(str(tmp_path / 'later.pth.tar'))
    assert '\n' not in str(e.value)


def test_fit_of_a_run_without_a_student_or_with_two_epoch_counts_is_one_line(
    image_folder, tmp_path
):
    run = timm_kd.parse_run([image_folder, *TINY, '--output', str(tmp_path)])
    with pytest.raises(KDError, match='no student') as e:
        timm_kd.fit(dataclasses.replace(run, students=()))
    assert '\n' not in str(e.value)
    # a schedule of its own length beside the stream's: which one trains would be a guess
    student = run.students[0]
    other = dataclasses.replace(student.schedule, kwargs=(('num_epochs', 7), ('sched', 'cosine')))
    with pytest.raises(KDError, match='runs 7 epochs but the stream has 300') as e:
        timm_kd.fit(
            dataclasses.replace(run, students=(dataclasses.replace(student, schedule=other),))
        )
    assert '\n' not in str(e.value)


def test_validation_starts_at_val_start_epoch(image_folder, tmp_path):
    """--val-start-epoch N: no validation, summary row or checkpoint before epoch N; from there
    every --val-interval epochs, and after the last."""
    argv = [image_folder, '--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '4',
            '--val-start-epoch', '1', '--val-interval', '2', '--output', str(tmp_path),
            '--experiment', 'v']  # fmt: skip
    run = timm_kd.parse_run(argv)
    assert run.loop.val_start_epoch == 1
    rows = timm_kd.fit(run)
    assert [r['epoch'] for r in rows] == [1, 3] == [r['epoch'] for r in _summary(tmp_path / 'v')]
    assert sorted(p.name for p in (tmp_path / 'v').glob('checkpoint-*')) == [
        'checkpoint-1.pth.tar',
        'checkpoint-3.pth.tar',
    ]


def test_with_several_students_each_row_names_its_student(image_folder, vit_teacher, tmp_path):
    argv = [image_folder, '--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '2',
            *vit_teacher, '--output', str(tmp_path), '--experiment', 'e',
            '--student=--lr 0.02 --experiment s1',
            '--student=--lr 0.05 --experiment s2']  # fmt: skip
    rows = timm_kd.fit(timm_kd.parse_run(argv))
    assert [(r['epoch'], r['student']) for r in rows] == [
        (0, 's1'),
        (0, 's2'),
        (1, 's1'),
        (1, 's2'),
    ]
    for name in ('s1', 's2'):
        mine = [r for r in rows if r['student'] == name]
        assert _floats(mine) == _summary(tmp_path / 'e' / name)
