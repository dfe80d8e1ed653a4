"""The table of what every flag is to the teacher (`timm_kd.cli.train.flag_roles`), checked against
a teacher-output cache built without the flag: each flag of the teacher's class flipped is a
one-line refusal, each flag of the student's (and of neither) flipped is accepted and leaves the
batches the teacher sees as they were."""

import argparse
import dataclasses
import os

import pytest
import timm
import torch
from conftest import ROOT, TINY
from timm.data import resolve_data_config

from timm_kd.cache import TeacherCache
from timm_kd.cli.cache import main as cache_main
from timm_kd.cli.train.config import build_parser, parse_args
from timm_kd.cli.train.flag_roles import NEITHER, REFUSED, STUDENT, TEACHER, flag_roles
from timm_kd.cli.train.parse import parse_run
from timm_kd.cli.train.timm_flags import UNSUPPORTED
from timm_kd.errors import KDError
from timm_kd.run import freeze
from timm_kd.runtime import Process
from timm_kd.training import setup_run, training_stream

BASE = ['--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '1']
PARSER = build_parser()
ACTIONS = {a.dest: a for a in PARSER._actions}
ROLES = flag_roles(PARSER)
# Flips that the rule in `_flip` cannot write (a value of the right shape that differs)
FLIPS = {
    'model': ['--model', 'resnet18'],
    'aug_splits': ['--aug-splits', '2'],
    'aa': ['--aa', 'rand-m9-mstd0.5'],  # another data config (ImageNet mean/std)
    'teachers': ['--teacher', 'test_vit', '--teacher', 'test_resnet'],
    'teacher': ['--teacher', 'test_resnet'],
    'kd_model_name': ['--kd-model-name', 'test_resnet'],
    'teacher_checkpoint': ['--teacher-checkpoint', 'other.pth'],
    'teacher_kwargs': ['--teacher-kwargs', 'img_size=64'],
    'model_kwargs': ['--model-kwargs', 'drop_rate=0.1'],
    'opt_kwargs': ['--opt-kwargs', 'foreach=False'],
    'kd_loss_kwargs': ['--kd-loss-kwargs', 'temperature=2'],
    'kd_loss': ['--kd-loss', 'dkd'],
    'opt': ['--opt', 'adamw'],
    'sched': ['--sched', 'step'],
    'students': ['--student=--model test_resnet --lr 0.02'],
    'dataset': ['--dataset', 'folder/'],  # timm's folder reader by name: the same images
    'class_map': ['--class-map', os.path.join(ROOT, 'tests', 'no-such-map.txt')],
    'unlabeled_data': ['--unlabeled-data', 'unlabeled'],
    'train_split': ['--train-split', 'validation'],
    'model_dtype': ['--model-dtype', 'bfloat16'],
    'in_chans': ['--in-chans', '1'],
    'input_size': ['--input-size', '3', '48', '48'],
    'img_size': ['--img-size', '48'],
    'num_classes': ['--num-classes', '5'],
    'mean': ['--mean', '0.4', '0.4', '0.4'],
    'std': ['--std', '0.2', '0.2', '0.2'],
    'train_img_sizes': ['--train-img-sizes', '32', '48'],
    'train_batch_sizes': ['--train-batch-sizes', '8', '4'],
    'train_size_probs': ['--train-size-probs', '0.5', '0.5'],
    'scale': ['--scale', '0.5', '1.0'],
    'ratio': ['--ratio', '0.5', '2.0'],
    'cutmix_minmax': ['--cutmix-minmax', '0.2', '0.8'],
    'opt_betas': ['--opt-betas', '0.8', '0.9'],
    'decay_milestones': ['--decay-milestones', '1', '2'],
    'lr_noise': ['--lr-noise', '0.5'],
    'kd_loss_weight': ['--kd-loss-weight', '2'],
    'kd_student_stages': ['--kd-student-stages', '1'],
    'kd_teacher_stages': ['--kd-teacher-stages', '1'],
    'kd_deep_supervision': ['--kd-deep-supervision', '1'],
    'device': ['--device', 'cpu:0'],
    'view_cycle': ['--view-cycle', '3'],  # as long as the 3 epochs compared: the same views
    'train_fraction': ['--train-fraction', '0.5'],
    'train_fraction_keep_steps': ['--train-fraction-keep-steps'],  # with a fraction below 1
    'experiment': ['--experiment', 'other'],
    'resume': ['--resume', 'out/last.pth.tar'],
    'wandb_tags': ['--wandb-tags', 'a'],
    'device_modules': ['--device-modules', 'math'],
    'fuser': ['--fuser', 'te'],
    'naflex_train_seq_lens': ['--naflex-train-seq-lens', '64'],
    'naflex_patch_sizes': ['--naflex-patch-sizes', '8'],
    'naflex_patch_size_probs': ['--naflex-patch-size-probs', '1.0'],
}
# Flags whose flip cannot be parsed without another flag beside it
WITH = {
    'train_fraction_keep_steps': ['--train-fraction', '1'],
    'unlabeled_ratio': ['--unlabeled-data', 'unlabeled'],
    'train_batch_sizes': ['--train-img-sizes', '32', '48'],
    'train_size_probs': ['--train-img-sizes', '32', '48'],
}
NOT_FLIPPED = {'help', 'config', 'data', 'data_dir', 'teacher_cache'}  # what the test itself sets


def _flip(dest):
    """Command-line words that set `dest` to a value other than its default."""
    if dest in FLIPS:
        return WITH.get(dest, []) + FLIPS[dest]
    action = ACTIONS[dest]
    flag = max(action.option_strings, key=len)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return WITH.get(dest, []) + [flag]
    if getattr(action.type, '__name__', '') == '_flag_bool':  # a loss's on/off hyperparameter
        return WITH.get(dest, []) + [flag, 'true']
    if action.choices:
        value = next(str(c) for c in action.choices if c != action.default)
    elif action.type is int or isinstance(action.default, int):
        value = str((action.default or 1) + 1)
    elif action.type is float or isinstance(action.default, float):
        value = str((action.default or 0.25) * 0.5 + 0.125)
    else:
        value = 'other'
    return WITH.get(dest, []) + [flag, value]


@pytest.fixture(scope='module')
def cache(image_folder, vit_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp('cache')
    cache_main(['build', image_folder, *BASE, *vit_teacher, '--top-k', '3', '--out', str(out)])
    return TeacherCache(str(out))


_MODELS = {}


def _run(argv):
    """The typed run of a command line, as the program translates it (the students' models only
    resolve the data config: one of each kind is made)."""
    run = parse_run(argv)
    key = (run.students[0].model, run.in_chans, run.num_classes or 3)
    if key not in _MODELS:
        _MODELS[key] = timm.create_model(key[0], in_chans=key[1], num_classes=key[2])
    preprocess = dataclasses.asdict(run.preprocess)
    data_config = resolve_data_config(preprocess, model=_MODELS[key])
    return dataclasses.replace(run, num_classes=key[2], data_config=freeze(data_config))


EPOCHS = 3


def _stream_batches(argv):
    """What the teacher sees of a run, batch by batch: its input (before the teacher's own
    precision) in epochs 0-2 on one stream, as training reads them."""
    run = parse_run([*argv, '--epochs', str(EPOCHS)])
    setup = setup_run(run, Process(torch.device('cpu')), with_eval=False)
    stream, _, _ = training_stream(setup, Process(torch.device('cpu')))
    return [b.input for epoch in range(EPOCHS) for _, b in stream.epoch(epoch)]


@pytest.fixture(scope='module')
def base_batches(image_folder):
    return _stream_batches([image_folder, *BASE])


def test_every_flag_of_the_parser_declares_a_role():
    assert [dest for dest, role in ROLES.items() if role is None] == []
    assert set(ROLES.values()) == {TEACHER, STUDENT, NEITHER, REFUSED}
    # the refused ones are the flags refused in use
    assert sorted(d for d, r in ROLES.items() if r == REFUSED) == sorted(UNSUPPORTED)


def test_a_flag_declared_without_a_role_fails_the_check():
    parser = build_parser()
    parser.add_argument('--a-new-timm-flag', default=None)
    group = parser.add_argument_group('new')
    group.add_argument('--another-new-flag', default=None)
    group.add_argument('--a-declared-flag', default=None, role=STUDENT, shared=True)
    roles = flag_roles(parser)
    assert roles['a_new_timm_flag'] is roles['another_new_flag'] is None
    assert roles['a_declared_flag'] == STUDENT


@pytest.mark.parametrize('dest', sorted(d for d, r in ROLES.items() if r == TEACHER))
def test_flipping_a_teacher_flag_is_refused_by_a_cache_built_without_it(dest, cache, image_folder):
    base_run = _run([image_folder, *BASE, '--teacher-cache', cache.root])
    dataset = setup_run(base_run, Process(torch.device('cpu')), False).train_set
    cache.check(base_run, dataset, 1, [0], 0)  # the base run fits
    try:
        run = _run([image_folder, *BASE, *_flip(dest), '--teacher-cache', cache.root])
        cache.check(run, dataset, 1, [0], 0)
    except KDError as e:
        assert '\n' not in str(e) and '--teacher' in str(e), str(e)
    else:
        pytest.fail(f'{_flip(dest)} was accepted by a cache built without it')


@pytest.mark.parametrize(
    'dest', sorted(d for d, r in ROLES.items() if r in (STUDENT, NEITHER) and d not in NOT_FLIPPED)
)
def test_flipping_a_student_flag_is_accepted_and_the_teacher_sees_the_same_batches(
    dest, cache, image_folder, base_batches
):
    """Accepted by the cache, and the teacher's input is the same in every batch of three
    consecutive epochs (the targets may differ: --smoothing)."""
    base_run = _run([image_folder, *BASE, '--teacher-cache', cache.root])
    dataset = setup_run(base_run, Process(torch.device('cpu')), False).train_set
    argv = [image_folder, *BASE, *_flip(dest), '--teacher-cache', cache.root]
    run = _run(argv)
    assert run != base_run, f'{_flip(dest)} changed nothing'
    cache.check(run, dataset, 1, [0], 0)
    # the stream is built from the run's data and teacher values alone: where a flip leaves them
    # as they were, the stream is the base run's by construction
    stream_part = dict(students=(), loop=base_run.loop)
    if dataclasses.replace(run, **stream_part) != dataclasses.replace(base_run, **stream_part):
        flipped = _stream_batches(argv)
        assert len(base_batches) == len(flipped) == EPOCHS * 6
        for i, (x, fx) in enumerate(zip(base_batches, flipped)):
            assert torch.equal(x.float(), fx.float()), f'epoch {i // 6}, batch {i % 6}'


@pytest.mark.parametrize(
    'flags, flip',
    [
        (['--no-aug'], ['--interpolation', 'bicubic']),
        (['--train-interpolation', ''], ['--interpolation', 'bicubic']),
    ],
)
def test_the_interpolation_counts_where_the_training_views_resize_with_it(
    image_folder, vit_teacher, tmp_path, flags, flip
):
    """--interpolation is validation's, except under --no-aug or without --train-interpolation,
    where the training transform resizes with it: there a cache built without it refuses it."""
    out = tmp_path / 'cache'
    cache_main(['build', image_folder, *BASE, *flags, *vit_teacher, '--top-k', '3',
                '--out', str(out)])  # fmt: skip
    built = TeacherCache(str(out))
    run = _run([image_folder, *BASE, *flags, *flip, '--teacher-cache', str(out)])
    dataset = setup_run(run, Process(torch.device('cpu')), False).train_set
    with pytest.raises(KDError, match="student interpolation: the cache has 'bilinear'"):
        built.check(run, dataset, 1, [0], 0)


@pytest.mark.parametrize('dest', sorted(d for d, r in ROLES.items() if r == REFUSED))
def test_a_refused_flag_is_one_line(dest, image_folder):
    with pytest.raises(KDError, match='is not supported by timm-kd'):
        parse_args([image_folder, *BASE, *_flip(dest)])


def test_the_build_and_training_construct_one_stream_epoch_by_epoch(image_folder):
    """`cache build` sets the run up without a validation split, training with one; both read the
    stream `training_stream` builds from the run: epoch by epoch the same batches, mixed before
    --mixup-off-epoch and not after, at the scheduled resolutions of --train-img-sizes."""
    argv = [image_folder, *BASE, '--epochs', '3', '--mixup', '0.5', '--mixup-off-epoch', '1',
            '--train-img-sizes', '32', '48']  # fmt: skip
    run = parse_run(argv)
    cpu = Process(torch.device('cpu'))
    build, _, _ = training_stream(setup_run(run, cpu, with_eval=False), cpu)
    train, _, _ = training_stream(setup_run(run, cpu), cpu)
    sizes = set()
    for epoch in range(3):  # each read whole: timm's own views of scheduled sizes draw as they load
        pairs = list(zip(list(build.epoch(epoch)), list(train.epoch(epoch))))
        assert pairs and all(
            torch.equal(a.input, b.input) and torch.equal(a.target, b.target)
            for (_, a), (_, b) in pairs
        )
        sizes |= {b.input.shape[-1] for (_, b), _ in pairs}
        top = torch.cat([b.target.max(1).values for (_, b), _ in pairs])
        mixed = not torch.allclose(top, torch.full_like(top, 0.9 + 0.1 / 3))  # smoothed one-hot
        assert mixed == (epoch == 0), epoch
    assert sizes == {32, 48}
