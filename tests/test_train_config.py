"""timm-kd-train argument parsing: timm flag names,
timm KD aliases, YAML configs and their errors."""

import json
import os

import pytest
import torch
import yaml

from timm_kd import KDError
from timm_kd.cli.train import build_parser, parse_args
from timm_kd.cli.train.kd_flags import loss_config as kd_loss_config


def test_defaults_follow_the_paper():
    args, text = parse_args(['/data', '--teacher', 'resnet50.a1_in1k'])
    assert (args.kd_loss, args.kd_loss_weight, args.ori_loss_weight) == (['kd'], [1.0], 1.0)
    assert kd_loss_config(args) == ({'kd': 1.0}, {'kd': {}})  # the loss's own default: T = 1
    assert args.data_dir == '/data' and 'teacher: resnet50.a1_in1k' in text


def test_timm_kd_flags_keep_timms_meaning():
    args, _ = parse_args(
        [
            '/d',
            '--kd-model-name',
            'vit_base',
            '--distill-loss-weight',
            '3',
            '--task-loss-weight',
            '0',
        ]
    )
    assert (args.teacher, args.kd_loss_weight, args.ori_loss_weight) == ('vit_base', [3.0], 0.0)
    # timm's complementary mode: --task-loss-weight alone gives the KD term 1 - W
    args, _ = parse_args(['/d', '--kd-model-name', 'vit_base', '--task-loss-weight', '0.3'])
    assert (args.ori_loss_weight, args.kd_loss_weight) == (0.3, [pytest.approx(0.7)])
    # a timm KD command left at its defaults distills at timm's T=4 with weights 1:1 ...
    args, _ = parse_args(['/d', '--kd-model-name', 'vit_base'])
    assert (
        kd_loss_config(args) == ({'kd': 1.0}, {'kd': {'temperature': 4.0}})
        and args.ori_loss_weight == 1.0
    )
    # ... ours at the paper's T=1; an explicit temperature wins in both
    assert kd_loss_config(parse_args(['/d', '--teacher', 'vit_base'])[0]) == (
        {'kd': 1.0},
        {'kd': {}},
    )
    args, _ = parse_args(['/d', '--kd-model-name', 'vit_base', '--kd-temperature', '1'])
    assert kd_loss_config(args)[1] == {'kd': {'temperature': 1.0}}


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--teacher', 'a', '--kd-model-name', 'b'], 'name two teachers'),
        (['--ori-loss-weight', '1', '--task-loss-weight', '0.3'], 'both set the hard-label weight'),
        (['--kd-loss-weight', '2', '--distill-loss-weight', '3'], 'both set the KD weight'),
        (
            ['--kd-temperature', '0'],
            "--kd-temperature 0.0 is not valid for the 'kd' loss: it must be positive",
        ),
    ],
)
def test_conflicting_weight_flags_are_one_line_errors(argv, message):
    with pytest.raises(KDError, match=message):
        parse_args(['/d', '--teacher', 'a', *argv] if '--teacher' not in argv else ['/d', *argv])


def test_yaml_config_sets_defaults_and_command_line_wins(tmp_path):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text(
        'opt: lamb\nlr_base: 5.0e-3\nlr_base_size: 2048\nbce_loss: true\nmixup: 0.1\n'
        'kd_model_name: beitv2_base_patch16_224.in1k_ft_in22k_in1k\ndistill_loss_weight: 2\n'
        'kd_loss_kwargs: {}\nscale: [0.08, 1.0]\nkd_loss: dkd\ndkd_beta: 8\n'
    )
    args, _ = parse_args(['/d', '--config', str(cfg), '--mixup', '0.2'])
    assert (args.opt, args.lr_base, args.lr_base_size, args.bce_loss) == ('lamb', 5e-3, 2048, True)
    assert args.teacher == 'beitv2_base_patch16_224.in1k_ft_in22k_in1k' and args.kd_loss_weight == [
        2
    ]
    assert args.mixup == 0.2
    # kd_model_name is timm's teacher flag, so timm's temperature default (4) applies
    assert kd_loss_config(args) == ({'dkd': 2}, {'dkd': {'temperature': 4.0, 'beta': 8}})


def test_kwargs_flags_parse_python_literals():
    args, _ = parse_args(
        [
            '/d',
            '--model-kwargs',
            'channels=(32,64)',
            'stem_width=32',
            '--kd-loss',
            'dkd',
            '--kd-loss-kwargs',
            'alpha=0.5',
        ]
    )
    assert args.model_kwargs == {
        'channels': (32, 64),
        'stem_width': 32,
    } and args.kd_loss_kwargs == {'alpha': 0.5}


def test_several_losses_with_weights_flags_and_kwargs():
    args, _ = parse_args(
        [
            '/d',
            '--kd-loss',
            'kd',
            'dkd',
            'rkd',
            '--kd-loss-weight',
            '1',
            '0.5',
            '2',
            '--kd-temperature',
            '4',
            '--dkd-beta',
            '8',
            '--rkd-angle-weight',
            '0',
            '--kd-loss-kwargs',
            'alpha=2',
            'rkd.distance_weight=10',
            'dkd.temperature=1',
        ]
    )
    weights, kwargs = kd_loss_config(args)
    assert weights == {'kd': 1.0, 'dkd': 0.5, 'rkd': 2.0}
    # --kd-temperature goes to every loss with a temperature;
    # name.key=value wins over every other source
    assert kwargs == {
        'kd': {'temperature': 4.0},
        'dkd': {'temperature': 1, 'alpha': 2, 'beta': 8.0},
        'rkd': {'angle_weight': 0.0, 'distance_weight': 10},
    }


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--kd-loss', 'kd', 'dkd', '--kd-loss-weight', '1', '2', '3'], '3 values for 2 losses'),
        (['--kd-loss', 'kd', 'kd'], 'lists a loss twice'),
        (['--kd-loss', 'kd', '--kd-loss-kwargs', 'beta=1'], "none of \\['kd'\\] takes 'beta'"),
        (['--kd-loss', 'kd', '--kd-loss-kwargs', 'dkd.beta=1'], "'dkd' is not in --kd-loss"),
    ],
)
def test_bad_loss_combinations(argv, message):
    with pytest.raises(KDError, match=message):
        parse_args(['/d', *argv])


@pytest.mark.parametrize(
    'content, message',
    [
        ('not_a_flag: 1\n', "keys that neither timm's train.py nor timm-kd has: not_a_flag;"),
        ('warmup_epoch: 5\n', r'has: warmup_epoch \(did you mean warmup_epochs\?\); drop them'),
        ('opt: [unclosed\n', 'not valid YAML'),
        ('- a\n- b\n', 'must be a mapping'),
        (b'\x89PNG\r\n\x1a\n\xff\xfe\x00', 'is not a text file; pass a YAML file'),
        ('aa: randaug-m9\n', "--aa 'randaug-m9' is no AutoAugment policy timm knows"),
        ('aa: v9\n', "--aa 'v9' is no AutoAugment policy timm knows"),
    ],
)
def test_bad_config_files(tmp_path, content, message):
    cfg = tmp_path / 'c.yaml'
    cfg.write_bytes(content) if isinstance(content, bytes) else cfg.write_text(content)
    with pytest.raises(KDError, match=message):
        parse_args(['/d', '--config', str(cfg)])


def test_aa_none_written_as_a_word_means_no_policy(tmp_path):
    """Hand-written configs say `aa: None` (YAML's string, not null): no AutoAugment."""
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('aa: None\n')
    assert parse_args(['/d', '--config', str(cfg)])[0].aa is None
    assert parse_args(['/d', '--aa', 'rand-m9-mstd0.5-inc1'])[0].aa == 'rand-m9-mstd0.5-inc1'


@pytest.mark.parametrize(
    'extra, line',
    [
        (
            ['--bn-momentum', '0.1'],
            "error: --model 'test_vit' takes no keyword 'bn_momentum' (from --bn-momentum); drop "
            '--bn-momentum for this model',
        ),
        (
            ['--model-kwargs', 'no_such=1'],
            "error: --model 'test_vit' takes no keyword 'no_such' (from no_such=... in "
            '--model-kwargs); drop no_such=... in --model-kwargs for this model',
        ),
        (
            ['--pretrained'],
            "error: no pretrained weights for --model 'test_vit' (not in the local Hugging Face "
            'cache, and the Hub is unreachable or HF_HUB_OFFLINE=1); download them once with '
            'network access (cached under HF_HOME), or pass --pretrained-path PATH, or drop '
            '--pretrained',
        ),
    ],
)
def test_a_student_that_cannot_be_built_as_asked_is_one_line(
    image_folder, run_cli, tmp_path, extra, line
):
    from timm_kd.cli.train import cli

    result = run_cli(cli, image_folder, '--model', 'test_vit', '--img-size', '32',
                     '--output', tmp_path, *extra)  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == line


def test_missing_config_unknown_loss_and_checkpoint_without_teacher(tmp_path):
    with pytest.raises(KDError, match='is neither a file nor a bundled recipe'):
        parse_args(['/d', '--config', str(tmp_path / 'absent.yaml')])
    with pytest.raises(KDError, match="unknown --kd-loss 'dkdx'; choose one of"):
        parse_args(['/d', '--kd-loss', 'dkdx'])
    with pytest.raises(KDError, match='--teacher-checkpoint needs --teacher'):
        parse_args(['/d', '--teacher-checkpoint', 'x.pth'])


def test_teacher_fast_turns_on_each_part_of_the_fast_path():
    args, _ = parse_args(['/d', '--teacher', 'resnet50.a1_in1k', '--teacher-fast'])
    assert (args.teacher_dtype, args.teacher_channels_last, args.teacher_compile) == (
        'bfloat16',
        True,
        'inductor',
    )
    assert args.teacher_inference_mode
    args, _ = parse_args(
        [
            '/d',
            '--teacher',
            'resnet50.a1_in1k',
            '--teacher-fast',
            '--teacher-dtype',
            'float16',
            '--no-teacher-inference-mode',
        ]
    )
    assert (args.teacher_dtype, args.teacher_inference_mode) == ('float16', False)


# --- timm train.py compatibility: every flag, its args.yaml, ours ---

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
with open(os.path.join(DATA, 'timm_train_flags.json')) as _f:
    # every flag of timm's train.py: names, dest, nargs, default, action, type
    TIMM_FLAGS = json.load(_f)
SAMPLE = {'int': '3', 'float': '0.5', None: 'x', 'str': 'x'}
# timm flags that cannot apply to distillation: accepted
# (configs load) but refused with one line when used
REFUSED = {
    'naflex_loader',
    'kd_loss_type',  # timm's only logit loss is kl: timm refuses another too
}


def _value(flag: dict) -> list:
    """A command-line value for a timm flag: its own
    default where it has one, else a sample of its type."""
    if flag['action'] == 'StoreTrueAction':
        return []
    if flag['action'] == 'ParseKwargs':
        return ['a=1']
    default = flag['default']
    if flag['dest'] in ('kd_distill_type', 'kd_loss_type'):
        default = {'kd_distill_type': 'feature', 'kd_loss_type': 'mse'}[flag['dest']]
    if default is None or default == []:
        default = [SAMPLE[flag['type']]] * (3 if flag['nargs'] == 3 else 1)
    if flag['dest'] in ('tta', 'aug_splits'):
        default = 2
    if flag['dest'] == 'model_dtype':
        default = 'bfloat16'
    if flag['dest'] == 'aa':
        default = 'rand-m9-mstd0.5-inc1'
    values = default if isinstance(default, list) else [default]
    return [str(v) for v in values]


@pytest.mark.parametrize('flag', TIMM_FLAGS, ids=[f['flags'][-1] for f in TIMM_FLAGS])
def test_every_timm_train_flag_is_accepted(flag):
    """Each of timm train.py's flags (every spelling) parses to the same destination and value as in
    timm, or, for the few that cannot apply to distillation, is refused with one line naming it and
    why."""
    for spelling in flag['flags']:
        argv = ['/d', spelling, *_value(flag)]
        if flag['dest'] in REFUSED:
            with pytest.raises(
                KDError, match=f'--{flag["dest"].replace("_", "-")} is not supported by timm-kd: '
            ):
                parse_args(argv)
            continue
        _, text = parse_args(argv)
        raw = yaml.safe_load(text)
        value = _value(flag)
        expected = (
            True
            if flag['action'] == 'StoreTrueAction'
            else {'a': 1}
            if value == ['a=1']
            else raw[flag['dest']]
        )
        assert raw[flag['dest']] == expected
        if flag['action'] == 'StoreAction' and flag['type'] in ('int', 'float'):
            kind = int if flag['type'] == 'int' else float
            parsed = raw[flag['dest']]
            assert all(
                isinstance(v, kind) for v in (parsed if isinstance(parsed, list) else [parsed])
            )


def test_an_args_yaml_written_by_timm_loads_unchanged_with_timms_meaning():
    """tests/data/timm_args.yaml: what timm's train.py writes (every key of its parser) for the
    command line

        train.py /data/imagenet --model resnet50 --kd-model-name resnet152.a1h_in1k
            --task-loss-weight 0.3 --amp --lr 0.5 --mixup 0.2 --opt-kwargs foreach=True --log-wandb
    """
    args, _ = parse_args(['--config', os.path.join(DATA, 'timm_args.yaml')])
    assert (args.data_dir, args.model, args.teacher, args.amp, args.lr, args.mixup) == (
        '/data/imagenet',
        'resnet50',
        'resnet152.a1h_in1k',
        True,
        0.5,
        0.2,
    )
    assert (args.opt_kwargs, args.log_wandb, args.device) == ({'foreach': True}, True, 'cuda')
    # timm's distillation: task weight 0.3, distill weight 1 - 0.3, temperature 4
    assert args.ori_loss_weight == 0.3
    assert kd_loss_config(args) == ({'kd': pytest.approx(0.7)}, {'kd': {'temperature': 4.0}})


def test_our_args_yaml_reloads_to_the_same_run(tmp_path):
    argv = [
        '/data',
        '--model',
        'resnet18',
        '--teacher',
        'resnet50.a1_in1k',
        '--kd-loss',
        'kd',
        'dkd',
        '--kd-loss-weight',
        '1',
        '0.5',
        '--dkd-beta',
        '8',
        '--opt-kwargs',
        'foreach=False',
        '--train-fraction',
        '0.5',
        '--train-fraction-keep-steps',
        '--epochs',
        '10',
        '--task-loss-weight',
        '0.4',
    ]
    args, text = parse_args(argv)
    saved = yaml.safe_load(text)
    # what a finished run may add
    saved.update(distributed=False, prefetcher=True, rank=0, world_size=1)
    (tmp_path / 'args.yaml').write_text(yaml.safe_dump(saved))
    again, text_again = parse_args(['--config', str(tmp_path / 'args.yaml')])
    assert vars(again) == {**vars(args), 'config': str(tmp_path / 'args.yaml')}
    # derived once, from the flags as given
    assert again.epochs == 20 and again.ori_loss_weight == 0.4
    assert kd_loss_config(again) == kd_loss_config(args)


def test_older_key_names_load(tmp_path):
    (tmp_path / 'old.yaml').write_text(
        'opt_args: {foreach: true}\nteacher_pretrained: t.pth\nteacher: resnet50\n'
    )
    args, _ = parse_args(['/d', '--config', str(tmp_path / 'old.yaml')])
    assert (args.opt_kwargs, args.teacher_checkpoint) == ({'foreach': True}, 't.pth')


@pytest.mark.parametrize(
    'content, message',
    [
        ('crd_num_negatives: 8.5\n', 'crd_num_negatives must be int, got 8.5'),
        ('weight_decay: abc\n', "weight_decay must be float, got 'abc'"),
        ('epochs: 1e2\n', "epochs must be int, got '1e2'"),  # argparse's int() refuses it too
        ('epochs: 10\nno_such_key: 1\nother: 2\n', 'nor timm-kd has: no_such_key, other;'),
        ('amp: "false"\n', r"amp must be bool, got 'false' \(write true or false, unquoted\)"),
        ('pin_mem: 1\n', 'pin_mem must be bool, got 1'),
        ('model: 3\n', 'model must be str, got 3'),
        ('amp_dtype: float8\n', r"amp_dtype must be one of \['float16', 'bfloat16'\]"),
        ('opt: foo\n', "unknown --opt 'foo'"),
        ('lr: .nan\n', '--lr nan is not a finite number'),
    ],
)
def test_bad_yaml_values_are_one_line_errors(tmp_path, content, message):
    (tmp_path / 'c.yaml').write_text(content)
    with pytest.raises(KDError, match=message):
        parse_args(['/d', '--config', str(tmp_path / 'c.yaml')])


def test_yaml_numbers_written_as_text_load_as_timms_argparse_reads_them(tmp_path):
    """YAML 1.1 reads `1e-6` as text; timm's parser converts a string default with the flag's
    type, so the config trains there: here too. On/off flags keep refusing text."""
    (tmp_path / 'c.yaml').write_text('min_lr: 1e-6\nlr: 1e-3\nweight_decay: 5e-4\nepochs: "3"\n')
    args, _ = parse_args(['/d', '--config', str(tmp_path / 'c.yaml')])
    assert (args.min_lr, args.lr, args.weight_decay, args.epochs) == (1e-6, 1e-3, 5e-4, 3)
    (tmp_path / 'c.yaml').write_text('amp: "true"\n')
    with pytest.raises(KDError, match="amp must be bool, got 'true'"):
        parse_args(['/d', '--config', str(tmp_path / 'c.yaml')])


def test_ints_parse_as_ints(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(['/d', '--crd-num-negatives', '8.5'])
    assert e.value.code == 2 and "invalid int value: '8.5'" in capsys.readouterr().err
    assert parse_args(['/d', '--crd-num-negatives', '8'])[0].crd_num_negatives == 8


def test_help_gives_every_flag_a_line_and_its_default():
    parser = build_parser()
    text = ' '.join(parser.format_help().split())
    for action in parser._actions:
        if action.option_strings and action.dest != 'help':
            assert action.help, action.dest
            assert (
                'default' in parser._get_formatter()._get_help_string(action)
                or 'if unset' in action.help
                or 'if empty' in action.help
            ), action.dest
    assert '--task-loss-weight TASK_LOSS_WEIGHT weight of the hard-label loss (timm)' in text
    assert "--dkd-beta V dkd's beta (the loss's default: 2.0)" in text


def test_config_by_recipe_name():
    args, _ = parse_args(['/d', '--config', 'resnet50_a2', '--teacher', 't'])
    assert (args.model, args.opt, args.lr_base, args.epochs) == ('resnet50', 'lamb', 5e-3, 300)
    assert parse_args(['/d', '--config', 'resnet50_a2.yaml'])[0].model == 'resnet50'
    with pytest.raises(KDError, match="'resnet51_a2' is neither a file nor a bundled recipe"):
        parse_args(['/d', '--config', 'resnet51_a2'])


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--opt', 'foo'], "unknown --opt 'foo'; timm knows"),
        (['--opt', 'adamw'], None),
        (['--opt', 'lookahead_adamw'], None),
        (['--sched', 'foo'], "unknown --sched 'foo'; choose one of constant, cosine"),
        (['--batch-size', '0'], '--batch-size 0: it must be at least 1'),
        (['--epochs', '0'], '--epochs 0: it must be at least 1'),
        (['--lr', 'nan'], '--lr nan is not a finite number'),
        (['--lr', '-1'], '--lr -1.0 is negative'),
        (['--kd-temperature', 'inf'], '--kd-temperature inf is not a finite number'),
        (
            ['--kd-loss-weight', '-1'],
            '--kd-loss-weight -1.0 is not valid: a loss weight must be >= 0',
        ),
        (['--teacher', 'a', '--teacher-weight', '2'], '--teacher-weight weighs the teachers of an'),
        (
            ['--teacher-weight', '2', '--teacher', 'a', '--teacher', 'b'],
            '--teacher-weight comes before the first --teacher',
        ),
        (
            ['--teacher', 'a', '--teacher-weight', '2', '--teacher-weight', '3', '--teacher', 'b'],
            '--teacher-weight is given twice for --teacher a',
        ),
        (
            ['--teacher', 'a', '--teacher-weight', 'nan', '--teacher', 'b'],
            'of .a. is not a number >= 0',
        ),
    ],
)
def test_values_no_run_can_use_are_one_line_errors(argv, message):
    if message is None:
        parse_args(['/d', *argv])
        return
    with pytest.raises(KDError, match=message):
        parse_args(['/d', *argv])


@pytest.mark.parametrize(
    'extra, flag',
    [
        (['--kd-loss', 'dkd'], '--kd-loss'),
        (['--kd-loss-weight', '2'], '--kd-loss-weight'),
        (['--dkd-beta', '4'], '--dkd-beta'),
        (['--kd-deep-supervision', '1'], '--kd-deep-supervision'),
    ],
)
def test_distillation_flags_without_a_teacher_are_one_line(image_folder, run_cli, extra, flag):
    from timm_kd.cli.train import cli

    result = run_cli(cli, image_folder, '--model', 'test_resnet', *extra)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f'error: {flag} is a distillation setting but the run has no teacher; pass --teacher NAME '
        f'(or --teacher-cache DIR), or drop {flag}'
    )


@pytest.mark.parametrize(
    'argv',
    [
        ['--model', 'resnet18'],
        ['--teacher', 'resnet50.a1_in1k', '--kd-loss', 'kd', 'ls', 'dkd'],
        ['--kd-model-name', 'resnet50.a1_in1k', '--task-loss-weight', '0.3'],
        ['--teacher', 'a', '--teacher', 'b', '--kd-loss', 'dist'],
    ],
)
def test_our_args_yaml_is_read_by_timms_parser_and_reloads_to_the_same_run(tmp_path, argv):
    from timm_kd.cli.train.parse import parse_run
    from timm_kd.training.loop import _args_yaml

    args, _ = parse_args(['/data', *argv])
    written = yaml.safe_load(_args_yaml(parse_run(['/data', *argv]).students[0], 'cpu', 10))
    timm_flags = json.load(
        open(os.path.join(os.path.dirname(__file__), 'data', 'timm_train_flags.json'))
    )
    # what timm's train.py reads: a value of its type, None only where timm has None
    for flag in timm_flags:
        value = written[flag['dest']]
        if value is None:
            assert flag['default'] is None, flag['dest']
        elif flag['type'] in ('int', 'float') and flag['action'] == 'StoreAction':
            for v in value if isinstance(value, list) else [value]:
                assert isinstance(v, (int, float)) and not isinstance(v, bool), flag['dest']
    assert written['device'] == 'cpu' and isinstance(written['kd_temperature'], float)
    assert written['num_classes'] == 10  # read from the data: timm would build its default head
    (tmp_path / 'args.yaml').write_text(yaml.safe_dump(written))
    again, _ = parse_args(['--config', str(tmp_path / 'args.yaml')])

    def effective(a):  # each loss's hyperparameters as it is built: its defaults, then the flags
        from timm_kd.losses.config import loss_hyperparameters

        weights, kwargs = kd_loss_config(a)
        return weights, {n: {**loss_hyperparameters(n), **kw} for n, kw in kwargs.items()}

    assert effective(again) == effective(args)  # every loss at the temperature it had
    if args.teachers:  # the ensemble mixes at the same temperature
        assert (again.kd_temperature or 1.0) == (args.kd_temperature or 1.0)


@pytest.mark.parametrize(
    'version, ignored',
    [
        ('0.4.12', ['bn_tf']),
        ('0.6.13', ['aot_autograd']),
        ('0.9.16', ['amp_impl']),
        ('1.0.13', ['amp_impl']),
    ],
)
def test_configs_of_earlier_timm_versions_load_with_their_meaning(
    version, ignored, caplog, tmp_path
):
    import logging

    path = os.path.join(os.path.dirname(__file__), 'data', f'timm_args_{version}.yaml')
    with caplog.at_level(logging.WARNING, logger='timm_kd.train'):
        args, _ = parse_args(['--config', path])
    notes = [r.getMessage() for r in caplog.records if 'earlier timm versions' in r.getMessage()]
    assert len(notes) == 1 and all(key in notes[0] for key in ignored), notes
    saved = yaml.safe_load(open(path))
    assert (
        args.data_dir == '/data' and args.model == saved['model'] and args.epochs == saved['epochs']
    )
    if version == '0.4.12':  # its `jsd` is today's `jsd_loss`; its batch multiplier, a batch size
        (tmp_path / 'c.yaml').write_text(
            yaml.safe_dump({**saved, 'validation_batch_size_multiplier': 2})
        )
        assert parse_args(['--config', str(tmp_path / 'c.yaml')])[0].validation_batch_size == 64
    (tmp_path / 'unknown.yaml').write_text(yaml.safe_dump({**saved, 'no_such_key': 1}))
    with pytest.raises(KDError, match='nor timm-kd has: no_such_key; drop them, or pass'):
        parse_args(['--config', str(tmp_path / 'unknown.yaml')])


def test_retired_amp_keys_keep_their_meaning(tmp_path, caplog):
    """timm 0.4-0.6 wrote native_amp (today's amp) and apex_amp (true where --amp found NVIDIA
    apex, gone from timm): both train with torch's AMP, apex_amp with one note."""
    import logging

    saved = yaml.safe_load(open(os.path.join(DATA, 'timm_args_0.4.12.yaml')))
    assert saved['native_amp'] is False and saved['apex_amp'] is False and saved['amp'] is False
    for key, value in (('native_amp', True), ('apex_amp', False), ('native_amp', False),
                       ('apex_amp', True)):  # fmt: skip
        (tmp_path / 'c.yaml').write_text(yaml.safe_dump({**saved, key: value}))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert parse_args(['--config', str(tmp_path / 'c.yaml')])[0].amp is value
        notes = [r.getMessage() for r in caplog.records if 'apex_amp' in r.getMessage()]
        assert len(notes) == (key == 'apex_amp' and value)
    assert "trains with torch's own AMP, as amp: true" in notes[0]


def test_a_start_epoch_past_the_end_says_so(image_folder, tmp_path, run_cli, caplog):
    import logging

    from conftest import TINY

    from timm_kd.cli.train import main

    (tmp_path / 'c.yaml').write_text('start_epoch: 5\nepochs: 2\n')
    with caplog.at_level(logging.WARNING, logger='timm_kd.train'):
        result = run_cli(main, image_folder, '--model', 'test_resnet', *TINY,
                         '--config', tmp_path / 'c.yaml', '--output', tmp_path)  # fmt: skip
    assert result.returncode == 0
    assert (
        'Nothing to train: --start-epoch 5 (start_epoch in a --config) and the run stops at 2 '
        '(--epochs 2); raise --epochs to train on, or lower or drop start_epoch' in caplog.text
    )


@pytest.mark.parametrize(
    'keys, message',
    [
        ({'token_label': True, 'dense_weight': 0.5},
         "keys of VOLO's train.py \\(token labelling\\), not of timm's train.py: dense_weight, "
         'token_label \\(timm-kd has no token labelling\\)'),
        ({'distillation_type': 'hard'},
         "keys of DeiT's main.py, not of timm's train.py: distillation_type \\(use teacher"),
    ],
)  # fmt: skip
def test_keys_of_forks_of_timms_train_py_are_named_as_theirs(keys, message, tmp_path):
    saved = yaml.safe_load(open(os.path.join(DATA, 'timm_args_0.6.13.yaml')))
    (tmp_path / 'c.yaml').write_text(yaml.safe_dump({**saved, **keys}))
    with pytest.raises(KDError, match=message):
        parse_args(['--config', str(tmp_path / 'c.yaml')])


# args.yaml files published with models, written by timm's train.py or a fork of it (their sources
# head each file), and the keys in each that neither timm's train.py nor timm-kd has.
PUBLISHED = {
    'repghost_repghostnet_1_0x.yaml': [],
    'iformer_small.yaml': ['embed_dim', 'port'],
    'adan_resnet50_100ep.yaml': ['bias_decay', 'max_grad_norm', 'no_prox'],
    'fastervit_0_224.yaml': [
        'activation_tracker', 'ampere_sparsity', 'attn_drop_rate', 'data_len', 'drop_rate',
        'loadcheckpoint', 'log_dir', 'lr_ep', 'mesa', 'mesa_start_ratio', 'no_saver', 'tag',
        'ThreeAugment', 'validate_only',
    ],
}  # fmt: skip
# Keys of earlier timm versions that load under today's names (tested above).
RETIRED = {'apex_amp', 'native_amp', 'jsd', 'validation_batch_size_multiplier'}


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_published_args_yaml_files_load_with_their_meaning(name, caplog):
    import logging

    from timm_kd.cli.train.config_keys import OLD_TIMM_KEYS, RUNTIME_KEYS

    path = os.path.join(DATA, 'published', name)
    foreign = PUBLISHED[name]
    if foreign:  # refused in one line that names each key as not timm's and says what to do
        with pytest.raises(KDError) as refused:
            parse_args(['--config', path])
        message = str(refused.value)
        assert "not of timm's train.py" in message or "neither timm's train.py" in message
        assert all(key in message for key in foreign) and '--config-ignore-unknown' in message
    with caplog.at_level(logging.WARNING, logger='timm_kd.train'):
        args, _ = parse_args(['--config', path, '--config-ignore-unknown'])
    dropped = [r.getMessage() for r in caplog.records if '--config-ignore-unknown drops' in r.msg]
    assert len(dropped) == bool(foreign) and all(key in dropped[0] for key in foreign)
    saved = yaml.safe_load(open(path))
    skipped = set(foreign) | set(OLD_TIMM_KEYS) | RUNTIME_KEYS | RETIRED
    for key in sorted(set(saved) - skipped):  # every other key, at the file's value
        got = getattr(args, key)
        assert got == (tuple(saved[key]) if isinstance(got, tuple) else saved[key]), key


@pytest.mark.parametrize(
    'name, keys, note',
    [
        ('timm_args_0.4.12.yaml', {'apex_amp': True}, "trains with torch's own AMP"),
        ('published/repghost_repghostnet_1_0x.yaml', {'sync_bn': True}, 'it does nothing, as'),
        ('published/iformer_small.yaml', {'apex_amp': True, 'sync_bn': True}, 'apex_amp: true'),
    ],
)
def test_what_timm_wrote_where_apex_or_sync_bn_was_asked_trains_with_one_note(
    name, keys, note, image_folder, vit_teacher, tmp_path, run_cli, caplog
):
    """Real args.yaml files as timm's train.py writes them where --amp found NVIDIA apex (timm
    0.4's apex_amp: true) or --sync-bn was given: timm's train.py trains them in one process
    (apex aside, it ignores sync_bn outside distributed training), and so does timm-kd."""
    import logging

    from timm_kd.cli.train import main

    saved = yaml.safe_load(open(os.path.join(DATA, name)))
    (tmp_path / 'c.yaml').write_text(yaml.safe_dump({**saved, **keys}))
    with caplog.at_level(logging.WARNING):
        result = run_cli(main, image_folder, '--config', tmp_path / 'c.yaml',
                         '--config-ignore-unknown', '--model', 'test_resnet', '--num-classes', '3',
                         '--input-size', '3', '32', '32', '--batch-size', '8', '--epochs', '1',
                         '--cooldown-epochs', '0', '--val-split', 'validation', '-j', '0',
                         '--device', 'cpu', '--output', tmp_path, '--experiment', 'run',
                         *vit_teacher)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / 'run' / 'summary.csv').read_text().splitlines()) == 2
    assert note in caplog.text


def test_sync_bn_is_refused_only_where_it_cannot_run():
    """Several processes off CUDA: one line; one process: a note (timm ignores it there)."""
    from timm_kd.runtime import Process
    from timm_kd.training.student_model import _check_sync_bn

    cpu = torch.device('cpu')
    _check_sync_bn(True, Process(cpu))
    with pytest.raises(KDError, match='^--sync-bn needs CUDA devices .*; drop it, or run with'):
        _check_sync_bn(True, Process(cpu, world_size=2, distributed=True))


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_published_args_yaml_files_train_a_tiny_epoch(
    name, image_folder, vit_teacher, tmp_path, run_cli
):
    """Each file's recipe (optimizer, schedule, augmentation, EMA, AMP, ...) distills one epoch of
    a test model at 32 px: the model, the data, the sizes and the length are the command line's."""
    from timm_kd.cli.train import main

    path = os.path.join(DATA, 'published', name)
    result = run_cli(main, image_folder, '--config', path, '--config-ignore-unknown',
                     '--model', 'test_resnet', '--num-classes', '3',
                     '--input-size', '3', '32', '32', '--batch-size', '8',
                     '--epochs', '1', '--cooldown-epochs', '0', '--val-split', 'validation',
                     '-j', '0', '--device', 'cpu', '--output', tmp_path, '--experiment', 'run',
                     *vit_teacher)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = (tmp_path / 'run' / 'summary.csv').read_text().splitlines()
    assert summary[0].startswith('epoch,train_loss,eval_loss') and len(summary) == 2
    written = yaml.safe_load((tmp_path / 'run' / 'args.yaml').read_text())
    saved = yaml.safe_load(open(path))
    assert written['data_dir'] == image_folder != saved['data_dir']  # DATA beats the file's
    assert (written['opt'], written['lr'], written['sched']) == (
        saved['opt'],
        saved['lr'],
        saved['sched'],
    )


def test_every_field_of_a_part_filled_by_name_is_a_flag():
    """`parse.options` fills these parts of the run by field name: each field is a flag of the
    parser (or one of the few the translation sets itself), so a field without its flag, or a
    renamed flag, fails here rather than silently keeping its default."""
    import dataclasses

    from timm_kd.cli.train.parse import options
    from timm_kd.data import DatasetOptions, LoaderOptions
    from timm_kd.run import LoopSpec, ModelSpec, OutputSpec, PreprocessSpec, ProcessSpec

    dests = {a.dest for a in build_parser()._actions}
    translated = {ProcessSpec: {'prefetcher', 'allow_pickle'}, ModelSpec: {'keywords'}}
    for part in (DatasetOptions, LoaderOptions, LoopSpec, PreprocessSpec, ModelSpec, ProcessSpec,
                 OutputSpec):  # fmt: skip
        names = {f.name for f in dataclasses.fields(part)} - translated.get(part, set())
        assert names <= dests, (part.__name__, sorted(names - dests))
    args, _ = parse_args(['/d', '--val-start-epoch', '3', '--drop-path', '0.2'])
    assert options(LoopSpec, args).val_start_epoch == 3
    assert options(ModelSpec, args, keywords=()).initial_checkpoint == ''
