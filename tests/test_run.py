"""timm_kd.run and timm_kd.identity: the typed run, and which of its fields make two runs differ."""

import dataclasses

import pytest
import torch

from timm_kd.cache import fingerprint
from timm_kd.data import DatasetOptions, LoaderOptions
from timm_kd.run import ProcessSpec, RunSpec, TeacherSetup, TeacherSpec, freeze


class _Labels:
    targets = [0, 1, 2, 0]

    def __len__(self):
        return 4


def _run(tmp_path, members=1, **teachers):
    checkpoint = tmp_path / 'teacher.pth'
    if not checkpoint.exists():
        torch.save({'w': torch.zeros(1)}, checkpoint)
    specs = tuple(TeacherSpec(f't{i}', checkpoint=str(checkpoint)) for i in range(members))
    return RunSpec(
        data=DatasetOptions(data_dir=str(tmp_path)),
        views=LoaderOptions(),
        process=ProcessSpec(),
        teachers=TeacherSetup(members=specs, **teachers),
        num_classes=3,
        data_config=freeze({'input_size': (3, 32, 32), 'mean': (0.5,) * 3, 'crop_pct': 0.9}),
    )


def _other(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + 'x'
    if isinstance(value, tuple):
        return value + (value[-1],) if value else (1,)
    return 7  # None


def _changed(run, section, name, value):
    return dataclasses.replace(
        run, **{section: dataclasses.replace(getattr(run, section), **{name: value})}
    )


def _fields(section_type, counted):
    return [
        f.name
        for f in dataclasses.fields(section_type)
        if (f.metadata.get('identity', True) is not False) == counted
    ]


SECTIONS = [('data', DatasetOptions), ('views', LoaderOptions), ('process', ProcessSpec)]


@pytest.mark.parametrize(
    'section, name', [(s, n) for s, cls in SECTIONS for n in _fields(cls, counted=True)]
)
def test_every_field_of_the_stream_changes_the_fingerprint(tmp_path, section, name):
    run = _run(tmp_path)
    other = _changed(run, section, name, _other(getattr(getattr(run, section), name)))
    assert fingerprint(other, _Labels(), 1) != fingerprint(run, _Labels(), 1), name


def test_what_does_not_change_the_computation_leaves_it_alone(tmp_path):
    run = _run(tmp_path)
    not_counted = [(s, n) for s, cls in SECTIONS for n in _fields(cls, counted=False)]
    assert {n for _, n in not_counted} >= {
        'workers', 'pin_mem', 'validation_batch_size', 'val_split', 'data_dir', 'device'
    }  # fmt: skip
    for section, name in not_counted:
        other = _changed(run, section, name, _other(getattr(getattr(run, section), name)))
        assert fingerprint(other, _Labels(), 1) == fingerprint(run, _Labels(), 1), name
    for name in (
        'channels_last',
        'compile',
        'compile_mode',
        'inference_mode',
        'cache',
        'temperature',
    ):
        other = _changed(run, 'teachers', name, _other(getattr(run.teachers, name)))
        assert fingerprint(other, _Labels(), 1) == fingerprint(run, _Labels(), 1), name


def test_the_teachers_and_the_derived_values_change_it(tmp_path):
    run = _run(tmp_path)
    base = fingerprint(run, _Labels(), 1)
    member = run.teachers.members[0]
    for name in ('name', 'weight', 'kwargs', 'no_ema', 'mean', 'std', 'input_size', 'dtype'):
        changed = dataclasses.replace(member, **{name: _other(getattr(member, name))})
        other = _changed(run, 'teachers', 'members', (changed,))
        assert fingerprint(other, _Labels(), 1)['teacher'] != base['teacher'], name
    for name in ('ensemble', 'dtype', 'amp', 'amp_dtype'):
        assert fingerprint(_changed(run, 'teachers', name, 'x'), _Labels(), 1) != base, name
    (tmp_path / 'teacher.pth').write_bytes(b'other weights')  # same path, other content
    assert fingerprint(run, _Labels(), 1)['teacher'] != base['teacher']
    assert fingerprint(dataclasses.replace(run, num_classes=4), _Labels(), 1) != base
    assert fingerprint(dataclasses.replace(run, data_config=()), _Labels(), 1) != base
    assert fingerprint(run, _Labels(), 2) != fingerprint(run, _Labels(), 1)  # world size


def test_an_ensemble_of_probabilities_depends_on_the_temperature(tmp_path):
    one, two = _run(tmp_path), _run(tmp_path, members=2)
    assert fingerprint(one, _Labels(), 1)['target'] == {}
    assert fingerprint(two, _Labels(), 1)['target'] == {'temperature': 1.0}
    hot = _changed(two, 'teachers', 'temperature', 4.0)
    assert fingerprint(hot, _Labels(), 1)['target'] == {'temperature': 4.0}
    assert fingerprint(_changed(hot, 'teachers', 'ensemble', 'logit'), _Labels(), 1)['target'] == {}
    keys = fingerprint(two, _Labels(), 1)['teacher']
    assert (
        keys['teacher 1'] == 't0' and keys['teacher 2'] == 't1' and 'teacher 2 checkpoint' in keys
    )


def test_the_run_is_frozen(tmp_path):
    run = _run(tmp_path)
    for target, name in ((run, 'num_classes'), (run.views, 'mixup'), (run.teachers, 'ensemble')):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(target, name, 1)


@pytest.mark.parametrize('mode', ['plain', 'kd', 'ensemble', 'cached', 'students'])
def test_a_checkpoint_records_the_run_and_it_loads_back(
    mode, image_folder, vit_teacher, tmp_path, monkeypatch
):
    """Every mode's checkpoints hold the typed run beside timm's args, read with weights_only."""
    from conftest import TINY

    from timm_kd.checkpoint import safe_globals
    from timm_kd.cli.cache import main as cache_main
    from timm_kd.cli.train import main
    from timm_kd.run import run_from_record
    from timm_kd.training import loop

    flags = [image_folder, '--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '1']
    resnet = ['--teacher', 'test_resnet', '--teacher-checkpoint', str(tmp_path / 'r.pth')]
    torch.save(__import__('timm').create_model('test_resnet', num_classes=3).state_dict(),
               tmp_path / 'r.pth')  # fmt: skip
    extra = {
        'plain': [],
        'kd': vit_teacher,
        'ensemble': [*vit_teacher, *resnet],
        'cached': ['--teacher-cache', str(tmp_path / 'cache')],
        'students': [
            *vit_teacher,
            '--student=--lr 0.02 --experiment s1',
            '--student=--lr 0.05 --experiment s2',
        ],  # fmt: skip
    }[mode]
    if mode == 'cached':
        cache_main(
            ['build', *flags, *vit_teacher, '--top-k', '3', '--out', str(tmp_path / 'cache')]
        )
    seen = []
    build = loop.build_training
    monkeypatch.setattr(
        loop, 'build_training', lambda *a: seen.append(a[0].run) or build(*a)
    )  # fmt: skip
    main([*flags, *extra, '--output', str(tmp_path / 'out'), '--experiment', 'e'])
    checkpoints = sorted((tmp_path / 'out').rglob('last.pth.tar'))
    assert len(checkpoints) == (2 if mode == 'students' else 1)
    for path in checkpoints:
        with safe_globals():  # timm's args is a Namespace: the one global allowed
            saved = torch.load(path, map_location='cpu', weights_only=True)
        record = saved['saver']['run']  # the saver's own state, beside timm's args
        assert record['student'] == (1 if path.parent.name == 's2' else 0)
        assert len(record['run']['students']) == len(checkpoints)
        typed = tuple(dataclasses.replace(s, flags='', args_yaml='') for s in seen[0].students)
        assert run_from_record(record) == dataclasses.replace(seen[0], students=typed)
        assert saved['args'].model == 'test_resnet'  # timm's record stays
    # each experiment's args.yaml trains again, the same run (one student: the one it recorded)
    for i, path in enumerate(checkpoints):
        student = seen[0].students[1 if path.parent.name == 's2' else 0]
        main(['--config', str(path.parent / 'args.yaml'), '--output', str(tmp_path / 'again'),
                   '--experiment', f'again{i}'])  # fmt: skip
        again = seen[-1]
        fields = ('output', 'flags', 'args_yaml', 'name')
        records = {k: getattr(again.students[0], k) for k in fields}
        assert again.students == (dataclasses.replace(student, **records),)
        assert dataclasses.replace(again, students=()) == dataclasses.replace(seen[0], students=())


def test_a_record_of_the_first_format_still_reads(tmp_path):
    """Checkpoints written before the model, preprocessing and loop settings were typed (format 1)
    read back with those at their defaults; the fields they held are as recorded. The fingerprint
    of a run does not move with the new fields (they do not count), so older caches still serve."""
    from timm_kd.run import (
        LoopSpec,
        ModelSpec,
        PreprocessSpec,
        StudentSpec,
        run_from_record,
        run_record,
    )

    run = dataclasses.replace(_run(tmp_path), students=(StudentSpec('test_resnet'),))
    record = run_record(run)
    old = {**record, 'format': 1}
    for key in ('preprocess', 'loop'):
        del old['run'][key]
    for key in ('amp', 'amp_dtype', 'allow_pickle', 'device_modules', 'fuser', 'fast_norm'):
        del old['run']['process'][key]
    for key in ('create', 'name'):
        del old['run']['students'][0][key]
    back = run_from_record(old)
    assert back == run and back.students[0].create == ModelSpec()
    assert back.loop == LoopSpec() and back.preprocess == PreprocessSpec()
    changed = dataclasses.replace(
        run, loop=LoopSpec(val_interval=5), preprocess=PreprocessSpec(img_size=64),
        process=dataclasses.replace(run.process, amp=True, fuser='te'),
    )  # fmt: skip
    assert fingerprint(changed, _Labels(), 1) == fingerprint(run, _Labels(), 1)
    with pytest.raises(ValueError, match='format 3'):
        run_from_record({**record, 'format': 3})
