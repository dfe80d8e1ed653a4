"""train_kd.py argument parsing: timm flag names, timm KD aliases, YAML configs and their errors."""
import pytest

from timm_kd import KDError
from timm_kd.cli import kd_loss_config, parse_args, student_args


def test_defaults_follow_the_paper():
    args, text = parse_args(['/data', '--teacher', 'resnet50.a1_in1k'])
    assert (args.kd_loss, args.kd_loss_weight, args.ori_loss_weight) == (['kd'], [1.0], 1.0)
    assert kd_loss_config(args) == ({'kd': 1.0}, {'kd': {}})  # the loss's own default: T = 1
    assert args.data_dir == '/data' and 'teacher: resnet50.a1_in1k' in text


def test_timm_kd_flag_names_are_aliases():
    args, _ = parse_args(['/d', '--kd-model-name', 'vit_base', '--distill-loss-weight', '3', '--task-loss-weight', '0'])
    assert (args.teacher, args.kd_loss_weight, args.ori_loss_weight) == ('vit_base', [3.0], 0.0)


def test_yaml_config_sets_defaults_and_command_line_wins(tmp_path):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('opt: lamb\nlr_base: 5.0e-3\nlr_base_size: 2048\nbce_loss: true\nmixup: 0.1\n'
                   'kd_model_name: beitv2_base_patch16_224.in1k_ft_in22k_in1k\ndistill_loss_weight: 2\n'
                   'kd_loss_kwargs: {}\nscale: [0.08, 1.0]\nkd_loss: dkd\ndkd_beta: 8\n')
    args, _ = parse_args(['/d', '--config', str(cfg), '--mixup', '0.2'])
    assert (args.opt, args.lr_base, args.lr_base_size, args.bce_loss) == ('lamb', 5e-3, 2048, True)
    assert args.teacher == 'beitv2_base_patch16_224.in1k_ft_in22k_in1k' and args.kd_loss_weight == [2]
    assert args.mixup == 0.2
    assert kd_loss_config(args) == ({'dkd': 2}, {'dkd': {'beta': 8}})


def test_kwargs_flags_parse_python_literals():
    args, _ = parse_args(['/d', '--model-kwargs', 'channels=(32,64)', 'stem_width=32', '--kd-loss', 'dkd',
                          '--kd-loss-kwargs', 'alpha=0.5'])
    assert args.model_kwargs == {'channels': (32, 64), 'stem_width': 32} and args.kd_loss_kwargs == {'alpha': 0.5}


def test_several_losses_with_weights_flags_and_kwargs():
    args, _ = parse_args(['/d', '--kd-loss', 'kd', 'dkd', 'rkd', '--kd-loss-weight', '1', '0.5', '2',
                          '--kd-temperature', '4', '--dkd-beta', '8', '--rkd-angle-weight', '0',
                          '--kd-loss-kwargs', 'alpha=2', 'rkd.distance_weight=10', 'dkd.temperature=1'])
    weights, kwargs = kd_loss_config(args)
    assert weights == {'kd': 1.0, 'dkd': 0.5, 'rkd': 2.0}
    # --kd-temperature goes to every loss with a temperature; name.key=value wins over every other source
    assert kwargs == {'kd': {'temperature': 4.0}, 'dkd': {'temperature': 1, 'alpha': 2, 'beta': 8.0},
                      'rkd': {'angle_weight': 0.0, 'distance_weight': 10}}


@pytest.mark.parametrize('argv, message', [
    (['--kd-loss', 'kd', 'dkd', '--kd-loss-weight', '1', '2', '3'], '3 values for 2 losses'),
    (['--kd-loss', 'kd', 'kd'], 'lists a loss twice'),
    (['--kd-loss', 'kd', '--kd-loss-kwargs', 'beta=1'], "none of \\['kd'\\] takes 'beta'"),
    (['--kd-loss', 'kd', '--kd-loss-kwargs', 'dkd.beta=1'], "'dkd' is not in --kd-loss"),
])
def test_bad_loss_combinations(argv, message):
    with pytest.raises(KDError, match=message):
        parse_args(['/d', *argv])


@pytest.mark.parametrize('content, message', [
    ('not_a_flag: 1\n', r"unknown keys \['not_a_flag'\]"),
    ('opt: [unclosed\n', 'not valid YAML'),
    ('- a\n- b\n', 'must be a mapping'),
])
def test_bad_config_files(tmp_path, content, message):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text(content)
    with pytest.raises(KDError, match=message):
        parse_args(['/d', '--config', str(cfg)])


def test_missing_config_unknown_loss_and_checkpoint_without_teacher(tmp_path):
    with pytest.raises(KDError, match='cannot read --config'):
        parse_args(['/d', '--config', str(tmp_path / 'absent.yaml')])
    with pytest.raises(KDError, match="unknown --kd-loss 'dkdx'; choose one of"):
        parse_args(['/d', '--kd-loss', 'dkdx'])
    with pytest.raises(KDError, match='--teacher-checkpoint needs --teacher'):
        parse_args(['/d', '--teacher-checkpoint', 'x.pth'])


def test_teacher_fast_turns_on_each_part_of_the_fast_path():
    args, _ = parse_args(['/d', '--teacher', 'resnet50.a1_in1k', '--teacher-fast'])
    assert (args.teacher_dtype, args.teacher_channels_last, args.teacher_compile) == ('bfloat16', True, 'inductor')
    assert args.teacher_inference_mode
    args, _ = parse_args(['/d', '--teacher', 'resnet50.a1_in1k', '--teacher-fast', '--teacher-dtype', 'float16',
                          '--no-teacher-inference-mode'])
    assert (args.teacher_dtype, args.teacher_inference_mode) == ('float16', False)


def test_each_student_overrides_its_own_flags_over_the_shared_ones():
    args, _ = parse_args(['/d', '--teacher', 't', '--lr', '0.1', '--mixup', '0.2', '--experiment', 'sweep',
                          '--student', '--model resnet18 --kd-loss dkd --dkd-beta 2',
                          '--student', '--model resnet34 --lr 0.3 --weight-decay 0.05 --experiment big'])
    (first, first_text), (second, _) = student_args(args)
    assert (first.model, first.lr, first.mixup, first.kd_loss) == ('resnet18', 0.1, 0.2, ['dkd'])
    assert kd_loss_config(first) == ({'dkd': 1.0}, {'dkd': {'beta': 2.0}})
    assert (second.model, second.lr, second.weight_decay, second.kd_loss) == ('resnet34', 0.3, 0.05, ['kd'])
    assert (first.experiment, second.experiment) == ('sweep/0-resnet18', 'sweep/big')
    assert 'model: resnet18' in first_text and 'students: []' in first_text
    assert [a for a, _ in student_args(parse_args(['/d', '--model', 'm'])[0])][0].model == 'm'


@pytest.mark.parametrize('flags, message', [
    ('--batch-size 64', 'sets --batch-size, which all students share'),
    ('--torchcompile-mode reduce-overhead', 'sets --torchcompile-mode, which all students share'),
    ('--mixup 0.5 --teacher other', 'sets --mixup, --teacher, which all students share'),
    ('--kd-loss nope', "unknown --kd-loss 'nope'"),
    ('--no-such-flag 1', 'not valid train_kd.py flags'),
])
def test_a_student_that_changes_the_shared_data_stream_is_an_error(flags, message):
    args, _ = parse_args(['/d', '--teacher', 't', '--student', '--model a', '--student', flags])
    with pytest.raises(KDError, match=message):
        student_args(args)


def test_resume_belongs_inside_each_student():
    args, _ = parse_args(['/d', '--resume', 'x.pth.tar', '--student', '--model a'])
    with pytest.raises(KDError, match='give each student its own --resume'):
        student_args(args)
