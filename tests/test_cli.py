"""train_kd.py argument parsing: timm flag names, timm KD aliases, YAML configs and their errors."""
import pytest

from timm_kd import KDError
from timm_kd.cli import parse_args


def test_defaults_follow_the_paper():
    args, text = parse_args(['/data', '--teacher', 'resnet50.a1_in1k'])
    assert (args.kd_loss, args.kd_temperature, args.kd_loss_weight, args.ori_loss_weight) == ('kd', 1.0, 1.0, 1.0)
    assert args.data_dir == '/data' and 'teacher: resnet50.a1_in1k' in text


def test_timm_kd_flag_names_are_aliases():
    args, _ = parse_args(['/d', '--kd-model-name', 'vit_base', '--distill-loss-weight', '3', '--task-loss-weight', '0'])
    assert (args.teacher, args.kd_loss_weight, args.ori_loss_weight) == ('vit_base', 3.0, 0.0)


def test_yaml_config_sets_defaults_and_command_line_wins(tmp_path):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('opt: lamb\nlr_base: 5.0e-3\nlr_base_size: 2048\nbce_loss: true\nmixup: 0.1\n'
                   'kd_model_name: beitv2_base_patch16_224.in1k_ft_in22k_in1k\ndistill_loss_weight: 2\n'
                   'kd_loss_kwargs: {}\nscale: [0.08, 1.0]\n')
    args, _ = parse_args(['/d', '--config', str(cfg), '--mixup', '0.2'])
    assert (args.opt, args.lr_base, args.lr_base_size, args.bce_loss) == ('lamb', 5e-3, 2048, True)
    assert args.teacher == 'beitv2_base_patch16_224.in1k_ft_in22k_in1k' and args.kd_loss_weight == 2
    assert args.mixup == 0.2


def test_kwargs_flags_parse_python_literals():
    args, _ = parse_args(['/d', '--model-kwargs', 'channels=(32,64)', 'stem_width=32', '--kd-loss-kwargs', 'a=1'])
    assert args.model_kwargs == {'channels': (32, 64), 'stem_width': 32} and args.kd_loss_kwargs == {'a': 1}


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
