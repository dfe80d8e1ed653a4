"""Every bundled recipe (timm_kd/hparams/) loads through
timm-kd-train's parser and matches the paper's tables.

The expected values are transcribed once here from VanillaKD (Hao et al., 2023): Table 2 (A1, A2),
Table 12 (B, C), Table 8 and the reference README (the published checkpoints), Table 3 (the
ResNet-152 hint baselines).
"""

import glob
import os

import pytest
from conftest import ROOT

from timm_kd import KDError
from timm_kd.cli.train import parse_args
from timm_kd.runtime import resolve_lr

HPARAMS = os.path.join(ROOT, 'timm_kd', 'hparams')

TABLE_2_COMMON = dict(
    img_size=224,
    opt='lamb',
    lr_base=5e-3,
    lr_base_size=2048,
    sched='cosine',
    warmup_epochs=5,
    amp=True,
    model_ema=False,
    bce_loss=True,
)
TABLE_2 = {
    'a2.yaml': dict(
        TABLE_2_COMMON,
        weight_decay=0.03,
        smoothing=0.0,
        drop_path=0.05,
        aug_repeats=3,
        aa='rand-m7-mstd0.5',
        mixup=0.1,
        cutmix=1.0,
        hflip=0.5,
    ),
    'a1.yaml': dict(
        TABLE_2_COMMON,
        weight_decay=0.01,
        smoothing=0.1,
        drop_path=0.05,
        aug_repeats=3,
        aa='rand-m7-mstd0.5',
        mixup=0.2,
        cutmix=1.0,
        hflip=0.5,
    ),
}
TABLE_12 = {
    'b.yaml': dict(
        img_size=224,
        lr_base_size=1024,
        opt='adamw',
        lr_base=1e-3,
        sched='cosine',
        warmup_epochs=20,
        amp=True,
        bce_loss=False,
        weight_decay=0.05,
        hflip=0.5,
        reprob=0.25,
        aa='rand-m7-mstd0.5',
        mixup=0.1,
        cutmix=1.0,
    ),
    'c_cifar100.yaml': dict(
        img_size=32,
        lr_base_size=512,
        opt='sgd',
        lr_base=5e-2,
        sched='cosine',
        warmup_epochs=0,
        amp=False,
        bce_loss=False,
        weight_decay=5e-4,
        hflip=0.5,
        reprob=0.0,
        mixup=0.1,
        cutmix=0.0,
        epochs=2400,
    ),
}
BEIT_B = 'beitv2_base_patch16_224.in1k_ft_in22k_in1k'
CHECKPOINTS = {  # Table 8 epochs; strategy A1; BEiTv2-B teacher
    'resnet50_vkd.yaml': dict(
        TABLE_2['a1.yaml'], model='resnet50', epochs=4800, teacher=BEIT_B, kd_loss=['kd']
    ),
    'vit_tiny_vkd.yaml': dict(
        TABLE_2['a1.yaml'], model='vit_tiny_patch16_224', epochs=4800, teacher=BEIT_B
    ),
    'vit_small_vkd.yaml': dict(
        TABLE_2['a1.yaml'], model='vit_small_patch16_224', epochs=4800, teacher=BEIT_B
    ),
    'convnextv2_tiny_vkd.yaml': dict(
        TABLE_2['a1.yaml'], model='convnextv2_tiny', epochs=1200, teacher=BEIT_B
    ),
    'resnet50_a2_hint_resnet152.yaml': dict(
        TABLE_2['a2.yaml'],
        model='resnet50',
        epochs=300,
        teacher='resnet152.a1h_in1k',
        bce_loss=False,
    ),
    'resnet50_a1.yaml': dict(TABLE_2['a1.yaml'], model='resnet50'),
    'resnet50_a2.yaml': dict(TABLE_2['a2.yaml'], model='resnet50'),
}
EXPECTED = {**TABLE_2, **TABLE_12, **CHECKPOINTS}


def test_every_recipe_file_is_checked():
    assert sorted(
        os.path.basename(p) for p in glob.glob(os.path.join(HPARAMS, '*.yaml'))
    ) == sorted(EXPECTED)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_recipe_matches_the_paper(name):
    path = os.path.join(HPARAMS, name)
    args, _ = parse_args(['/data', '--config', path])
    for key, value in EXPECTED[name].items():
        assert (
            getattr(args, key) == pytest.approx(value)
            if isinstance(value, float)
            else getattr(args, key) == value
        ), key
    assert open(path).readline().startswith('# '), 'the header names the table it reproduces'
    assert 'Table' in open(path).read().split('\n\n')[0]


@pytest.mark.parametrize(
    'gpus, per_gpu, expected', [(8, 256, 5e-3), (4, 256, 5e-3 * 0.5**0.5), (8, 512, 5e-3 * 2**0.5)]
)
def test_a1_learning_rate_scales_with_the_global_batch(gpus, per_gpu, expected):
    args, _ = parse_args(
        ['/data', '--config', os.path.join(HPARAMS, 'a1.yaml'), '-b', str(per_gpu)]
    )
    lr = resolve_lr(
        args.lr, args.lr_base, args.lr_base_size, per_gpu * gpus, args.opt, args.lr_base_scale
    )
    assert lr == pytest.approx(expected)


def test_c_learning_rate_scales_linearly_for_sgd():
    args, _ = parse_args(
        ['/data', '--config', os.path.join(HPARAMS, 'c_cifar100.yaml'), '-b', '128']
    )
    lr = resolve_lr(args.lr, args.lr_base, args.lr_base_size, 128, args.opt, args.lr_base_scale)
    assert lr == pytest.approx(5e-2 / 4)


def test_command_line_overrides_an_inherited_recipe():
    args, _ = parse_args(
        ['/data', '--config', os.path.join(HPARAMS, 'resnet50_vkd.yaml'), '--epochs', '10']
    )
    assert (args.epochs, args.opt, args.model) == (10, 'lamb', 'resnet50')


def test_inheritance_loops_and_unknown_keys_in_a_base_are_errors(tmp_path):
    (tmp_path / 'a.yaml').write_text('inherit: b.yaml\n')
    (tmp_path / 'b.yaml').write_text('inherit: a.yaml\n')
    with pytest.raises(KDError, match='inherits itself'):
        parse_args(['/d', '--config', str(tmp_path / 'a.yaml')])
    (tmp_path / 'c.yaml').write_text('inherit: d.yaml\nopt: sgd\n')
    (tmp_path / 'd.yaml').write_text('not_a_flag: 1\n')
    with pytest.raises(KDError, match="d.yaml' has keys that neither timm's train.py nor timm-kd"):
        parse_args(['/d', '--config', str(tmp_path / 'c.yaml')])


@pytest.mark.parametrize('recipe', ['resnet50_a2', 'b', 'c_cifar100'])
def test_a_recipe_leaves_the_size_and_the_teacher_to_the_user(recipe):
    """A recipe sets what the paper set; the image size given on the command line wins
    (timm resolves it from the flags), and the teacher's size comes from the teacher."""
    import timm
    from timm.data import resolve_data_config

    args, _ = parse_args(['/d', '--config', recipe, '--img-size', '32', '--model', 'test_resnet'])
    config = resolve_data_config(vars(args), model=timm.create_model('test_resnet'))
    assert config['input_size'] == (3, 32, 32)
    assert args.input_size is None and args.teacher_input_size is None and args.in_chans is None


def test_the_recipe_list_gives_each_first_sentence_whole(capsys):
    from timm_kd.cli.recipes import main

    main([])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines['b'].endswith(
        'the stronger ImageNet-1k strategy of its Table 1 ("Improve": AdamW, 300 epochs).'
    )
    assert lines['resnet50_a2_hint_resnet152'].endswith('.')


@pytest.mark.parametrize('program', ['demo', 'diagnose', 'hub', 'recipes', 'validate'])
def test_usage_lines_name_the_command_a_user_types(program, capsys):
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(f'timm_kd.cli.{program}').main(['--help'])
    assert capsys.readouterr().out.startswith(f'usage: python -m timm_kd.{program} ')
