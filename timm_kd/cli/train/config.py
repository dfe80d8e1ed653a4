"""The parser of `timm-kd-train` and its YAML configs.

Parsing is two-stage, as in timm: `--config` sets defaults, the command line overrides them.
`--config` takes a path or the name of a bundled recipe (`resnet50_a2`; `python -m timm_kd.recipes`
lists them). A YAML file's keys are flag names with underscores; `inherit: other.yaml` loads another
file first. An `args.yaml` written by timm's train.py or by us loads unchanged: keys that are
run-time state (`distributed`, `rank`, ...) are ignored, unknown keys are refused with their names.
"""

import argparse
import os
import sys
from typing import List, Optional, Tuple

import yaml

from ...errors import KDError
from ...hparams import find_recipe
from .kd_flags import add_kd_flags, loss_config, resolve_timm_kd, split_teachers
from .timm_flags import add_timm_flags, refuse_unsupported

# Keys of an args.yaml that describe a finished run rather than a setting (written by timm's train.py, by earlier
# timm versions, or by earlier timm-kd versions).
RUNTIME_KEYS = {
    'distributed',
    'prefetcher',
    'rank',
    'world_size',
    'apex_amp',
    'native_amp',
    'dist_backend',
    'dist_url',
    'has_compile',
    'use_amp',
}
# Older names of our keys.
CONFIG_ALIASES = {'opt_args': 'opt_kwargs', 'teacher_pretrained': 'teacher_checkpoint'}
LIST_KEYS = (
    'kd_loss',
    'kd_loss_weight',
    'kd_student_stages',
    'kd_teacher_stages',
    'kd_deep_supervision',
)


class _HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the help already says what happens when unset."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if (
            action.option_strings
            and action.default is not argparse.SUPPRESS
            and 'default' not in text
            and 'if unset' not in text
            and 'if empty' not in text
        ):
            text += ' (default: %(default)s)'
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-kd-train',
        formatter_class=_HelpFormatter,
        description="Knowledge distillation for timm image classifiers: timm's train.py plus a "
        'teacher.',
    )
    parser.add_argument(
        '-c',
        '--config',
        default='',
        type=str,
        metavar='FILE',
        help='YAML file of defaults, or the name of a bundled recipe (python -m timm_kd.recipes)',
    )
    add_timm_flags(parser)
    add_kd_flags(parser)
    return parser


def resolve_config_path(path: str) -> str:
    """A YAML path as given, else the bundled recipe of that name; one-line error if neither exists."""
    if os.path.isfile(path):
        return path
    recipe = find_recipe(path)
    if recipe is None:
        raise KDError(
            f'--config {path!r} is neither a file nor a bundled recipe; pass a YAML path or a name '
            'that '
            f'python -m timm_kd.recipes lists'
        )
    return recipe


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as e:
        raise KDError(
            f'cannot read --config {path!r}: {e.strerror}; pass an existing YAML file'
        ) from None
    except yaml.YAMLError as e:
        raise KDError(
            f'--config {path!r} is not valid YAML ({" ".join(str(e).split())[:120]})'
        ) from None
    if not isinstance(cfg, dict):
        raise KDError(f'--config {path!r} must be a mapping of flag names to values')
    return cfg


def _check_number(path: str, action: argparse.Action, value) -> None:
    """YAML values skip argparse's type conversion: refuse a float where the flag takes an int, text for numbers."""
    if action.type not in (int, float) or value is None:
        return
    for v in value if isinstance(value, (list, tuple)) else [value]:
        ok = (
            isinstance(v, int) and not isinstance(v, bool)
            if action.type is int
            else isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        if not ok:
            raise KDError(
                f'--config {path!r}: {action.dest} must be {action.type.__name__}, got {v!r}'
            )


def load_config(path: str, parser: argparse.ArgumentParser, _seen: Tuple[str, ...] = ()) -> dict:
    """Read a YAML config (or bundled recipe) into parser defaults: `inherit:` first, then this file's keys."""
    path = resolve_config_path(path) if not _seen else path
    if os.path.abspath(path) in _seen:
        raise KDError(f'--config {path!r} inherits itself')
    cfg = _read_yaml(path)
    bases = cfg.pop('inherit', None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged.update(
            load_config(
                os.path.join(os.path.dirname(path), base), parser, _seen + (os.path.abspath(path),)
            )
        )
    cfg = {
        CONFIG_ALIASES.get(k.replace('-', '_'), k.replace('-', '_')): v
        for k, v in cfg.items()
        if k.replace('-', '_') not in RUNTIME_KEYS
    }
    actions = {a.dest: a for a in parser._actions}
    unknown = sorted(set(cfg) - set(actions))
    if unknown:
        raise KDError(
            f'--config {path!r} has unknown keys {unknown}; use timm-kd-train flag names with '
            'underscores'
        )
    for key, value in cfg.items():
        _check_number(path, actions[key], value)
    merged.update(cfg)
    return merged


def listify(args: argparse.Namespace) -> argparse.Namespace:
    """Scalars given in YAML for list-valued flags (`kd_loss: dkd`) become one-element lists."""
    for key in LIST_KEYS:
        value = getattr(args, key)
        if value is not None and not isinstance(value, (list, tuple)):
            setattr(args, key, [value])
    return args


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Checks and derived values after parsing the flags as given (the shared ones, or one --student's over
    them): refuse what cannot apply, fold timm's KD flags into ours, validate the losses early."""
    listify(args)
    args.data_dir = args.data_dir or args.data
    if not 0 < args.train_fraction <= 1 and not (args.train_fraction == 0 and args.unlabeled_data):
        raise KDError(
            '--train-fraction must be in (0, 1] (0 only with --unlabeled-data), got '
            f'{args.train_fraction}'
        )
    if args.train_fraction_keep_steps and args.train_fraction > 0:
        args.epochs = round(args.epochs / args.train_fraction)
    refuse_unsupported(args)
    resolve_timm_kd(args)
    if args.drop_connect is not None and args.drop_path is None:  # timm's deprecated name
        args.drop_path = args.drop_connect
    loss_config(
        args
    )  # fail early on bad loss names, weights, kwargs and hyperparameters (T > 0, ...)
    if args.teacher_checkpoint and not args.teacher:
        raise KDError(
            '--teacher-checkpoint needs --teacher ARCH, the architecture the checkpoint was '
            'trained with'
        )
    if args.teacher_fast:
        args.teacher_dtype = 'bfloat16' if args.teacher_dtype == 'float32' else args.teacher_dtype
        args.teacher_channels_last = True
        args.teacher_compile = args.teacher_compile or 'inductor'
    return args


def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Parse timm-kd-train arguments; returns (args, the parsed flags as YAML text for args.yaml).

    The text is taken before any value is derived, as timm does, so the file loads back through
    `--config` to the same run.
    """
    parser = build_parser()
    argv, teachers = split_teachers(
        list(sys.argv[1:] if argv is None else argv)
    )  # several --teacher: an ensemble
    config_only = argparse.ArgumentParser(add_help=False)
    config_only.add_argument('-c', '--config', default='')
    known, _ = config_only.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config(known.config, parser))
    args = parser.parse_args(argv + (['--teacher', teachers[0]['name']] if teachers else []))
    if teachers:
        args.teachers = teachers
    text = yaml.safe_dump(vars(args), default_flow_style=False)
    return finish_args(args), text
