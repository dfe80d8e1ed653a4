"""The parser of `timm-kd-train` and its YAML configs.

Parsing is two-stage, as in timm: `--config` sets defaults, the command line overrides them.
`--config` takes a path or the name of a bundled recipe (`resnet50_a2`; `python -m timm_kd.recipes`
lists them). A YAML file's keys are flag names with underscores; `inherit: other.yaml` loads another
file first. An `args.yaml` written by timm's train.py or by us loads unchanged: keys that are
run-time state (`distributed`, `rank`, ...) are ignored; keys no flag has (a fork of timm's train.py
wrote them) are refused with their names, or dropped with --config-ignore-unknown (`config_keys`).
"""

import argparse
import difflib
import math
import os
import sys
from typing import List, Optional, Tuple

import yaml
from timm.optim import list_optimizers

from ...errors import KDError, flat
from ...hparams import find_recipe
from ...losses import list_kd_losses
from ...losses.config import loss_hyperparameters
from .config_keys import CONFIG_ALIASES, IGNORE_UNKNOWN, RUNTIME_KEYS, foreign_keys, old_timm_keys
from .declare import NEITHER, FlagParser
from .kd_flags import (
    TIMM_KD_TEMPERATURE,
    add_kd_flags,
    loss_config,
    resolve_timm_kd,
    split_teachers,
)
from .timm_flags import add_timm_flags, refuse_unsupported

LIST_KEYS = (
    'kd_loss',
    'kd_loss_weight',
    'kd_student_stages',
    'kd_teacher_stages',
    'kd_deep_supervision',
)


class _HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless
    the help already says what happens when unset."""

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
    parser = FlagParser(
        prog='timm-kd-train',
        usage='timm-kd-train DATA [--config FILE|RECIPE] [--model MODEL] [--teacher NAME] [flags]\n'
        "       (every flag of timm's train.py, then timm-kd's own, are listed below)",
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
        role=NEITHER,
        shared=True,
    )
    parser.add_argument(
        IGNORE_UNKNOWN,
        action='store_true',
        help="drop the --config keys that no flag has (a fork of timm's train.py wrote them), with "
        "one note, as timm's train.py does; unset, they are refused in one line",
        role=NEITHER,
    )
    add_timm_flags(parser)
    add_kd_flags(parser)
    return parser


def resolve_config_path(path: str) -> str:
    """A YAML path as given, else the bundled recipe
    of that name; one-line error if neither exists."""
    if os.path.isfile(path):
        return path
    recipe = find_recipe(path)
    if recipe is None:
        raise KDError(
            f'--config {path!r} is neither a file nor a bundled recipe; pass a YAML path or a name '
            f'that python -m timm_kd.recipes lists'
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
        raise KDError(f'--config {path!r} is not valid YAML ({flat(e, 120)})') from None
    except UnicodeDecodeError:
        raise KDError(
            f'--config {path!r} is not a text file; pass a YAML file of flag names and values '
            '(an args.yaml)'
        ) from None
    if not isinstance(cfg, dict):
        raise KDError(f'--config {path!r} must be a mapping of flag names to values')
    return cfg


def _expected(action: argparse.Action) -> Optional[str]:
    """The kind of YAML value a flag takes: 'bool', 'int', 'float', 'str', or None (its own)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return 'bool'
    if not isinstance(action, argparse._StoreAction) or action.dest == 'teachers':
        return None  # key=value dicts, repeated flags, the ensemble list: read by their actions
    if action.type in (int, float):
        return action.type.__name__
    return 'str' if action.type in (None, str) else None


def _as_argparse_reads(action: argparse.Action, value):
    """A YAML string for a flag that takes one number, converted as argparse converts a string
    default with the flag's type (so `min_lr: 1e-6`, which YAML 1.1 reads as text, trains as in
    timm); anything else as it is."""
    if isinstance(value, str) and action.type in (int, float) and action.nargs is None:
        try:
            return action.type(value)
        except ValueError:
            return value  # refused by `_check_value`
    return value


def _check_value(path: str, action: argparse.Action, value) -> None:
    """YAML values skip argparse's conversion: refuse a value of the wrong kind (a quoted boolean, a
    float where the flag takes an int, text for a number) or outside the flag's choices."""
    kind = _expected(action)
    if kind is None or value is None:
        return
    for v in value if isinstance(value, (list, tuple)) else [value]:
        ok = {
            'bool': isinstance(v, bool),
            'int': isinstance(v, int) and not isinstance(v, bool),
            'float': isinstance(v, (int, float)) and not isinstance(v, bool),
            'str': isinstance(v, str),
        }[kind]
        if not ok:
            hint = ' (write true or false, unquoted)' if kind == 'bool' else ''
            raise KDError(f'--config {path!r}: {action.dest} must be {kind}, got {v!r}{hint}')
        if action.choices is not None and v not in action.choices:
            raise KDError(
                f'--config {path!r}: {action.dest} must be one of {list(action.choices)}, got {v!r}'
            )


def load_config(
    path: str, parser: argparse.ArgumentParser, ignore: bool = False, _seen: Tuple[str, ...] = ()
) -> dict:
    """Read a YAML config (or bundled recipe) into parser defaults: `inherit:` first, then this
    file's keys. `ignore`: keys no flag has are dropped with one note instead of refused."""
    path = resolve_config_path(path) if not _seen else path
    if os.path.abspath(path) in _seen:
        raise KDError(f'--config {path!r} inherits itself')
    cfg = _read_yaml(path)
    bases = cfg.pop('inherit', None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged.update(
            load_config(
                os.path.join(os.path.dirname(path), base),
                parser,
                ignore,
                _seen + (os.path.abspath(path),),
            )
        )
    cfg = {
        CONFIG_ALIASES.get(k.replace('-', '_'), k.replace('-', '_')): v
        for k, v in cfg.items()
        if k.replace('-', '_') not in RUNTIME_KEYS
    }
    old_timm_keys(path, cfg)
    actions = {a.dest: a for a in parser._actions}
    unknown = sorted(set(cfg) - set(actions), key=str.lower)
    if unknown:
        foreign_keys(path, unknown, list(actions), ignore)
        for key in unknown:
            del cfg[key]
    for key, value in cfg.items():
        cfg[key] = _as_argparse_reads(actions[key], value)
        _check_value(path, actions[key], cfg[key])
    merged.update(cfg)
    return merged


def listify(args: argparse.Namespace) -> argparse.Namespace:
    """Scalars given in YAML for list-valued flags (`kd_loss: dkd`) become one-element lists."""
    for key in LIST_KEYS:
        value = getattr(args, key)
        if value is not None and not isinstance(value, (list, tuple)):
            setattr(args, key, [value])
    return args


# Flags that must be at least 1 (a batch, an epoch, a window of accumulation).
AT_LEAST_ONE = ('batch_size', 'validation_batch_size', 'epochs', 'grad_accum_steps', 'val_interval')
SCHEDULERS = ('constant', 'cosine', 'multistep', 'plateau', 'poly', 'rsqrt', 'step', 'tanh')


def check_numbers(args: argparse.Namespace) -> None:
    """One line for a NaN or infinite value of any float flag, and for counts below 1, before
    anything is built (a NaN lr would otherwise stop training an epoch later)."""
    for dest, value in sorted(vars(args).items()):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise KDError(f'--{dest.replace("_", "-")} {v} is not a finite number; pass one')
    for dest in AT_LEAST_ONE:
        value = getattr(args, dest)
        if value is not None and value < 1:
            raise KDError(f'--{dest.replace("_", "-")} {value}: it must be at least 1')
    if args.lr is not None and args.lr < 0:
        raise KDError(
            f'--lr {args.lr} is negative; pass a learning rate >= 0 (0 or unset: --lr-base)'
        )
    check_view_cycle(args.view_cycle, args.mixup_off_epoch)


def check_view_cycle(cycle: int, mixup_off_epoch: int) -> None:
    """--view-cycle N: N >= 0; beside --mixup-off-epoch, one line (a replayed epoch mixes as the
    epoch it replays, so mixing could not stop at its epoch)."""
    if cycle < 0:
        raise KDError(
            f'--view-cycle {cycle}: pass the number of epochs whose views repeat (0: off)'
        )
    if cycle and mixup_off_epoch:
        raise KDError(
            f'--view-cycle {cycle} with --mixup-off-epoch {mixup_off_epoch}: a replayed epoch '
            'mixes as the epoch it replays, so mixing cannot stop at an epoch; drop one of them'
        )


def check_names(args: argparse.Namespace) -> None:
    """One line for an optimizer or scheduler timm does not know, with the names it does."""
    opt = args.opt.lower().split('_')[-1]  # timm's 'lookahead_adamw' is adamw with a wrapper
    known = list_optimizers()
    if opt not in known:
        close = difflib.get_close_matches(opt, known, n=3)
        raise KDError(
            f'unknown --opt {args.opt!r}; '
            f'timm knows {", ".join(close) or ", ".join(known[:8])}, ... '
            '(python -c "import timm.optim; print(timm.optim.list_optimizers())")'
        )
    if args.sched not in SCHEDULERS:
        raise KDError(f'unknown --sched {args.sched!r}; choose one of {", ".join(SCHEDULERS)}')
    check_aa(args)


def check_aa(args: argparse.Namespace) -> None:
    """`--aa` as timm's transforms read it, or one line. 'None' (the string, as configs written by
    hand say it) means no policy."""
    if args.aa in ('None', 'none'):
        args.aa = None
    if not args.aa:
        return
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )

    make = (
        rand_augment_transform
        if args.aa.startswith('rand')
        else augment_and_mix_transform
        if args.aa.startswith('augmix')
        else auto_augment_transform
    )
    try:
        make(args.aa, dict(translate_const=100, img_mean=(124, 116, 104)))
    except Exception as e:  # timm asserts, or fails to parse a number
        raise KDError(
            f'--aa {args.aa!r} is no AutoAugment policy timm knows ({flat(e, 80)}); pass e.g. '
            'rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original, v0 or 3a, or leave --aa out'
        ) from None


def check_kd_flags_have_a_teacher(args: argparse.Namespace) -> None:
    """One line for our distillation flags given to a run without a teacher, where they would be
    ignored (timm's own KD flags keep timm's meaning: timm ignores them without a teacher too)."""
    if args.teacher or args.kd_model_name or args.teacher_cache:
        return
    given = {
        '--kd-loss': args.kd_loss != ['kd'],
        '--kd-loss-weight': args.kd_loss_weight not in (None, [1.0]),  # [1.0]: the default
        '--kd-loss-kwargs': bool(args.kd_loss_kwargs),
        '--kd-student-stages': list(args.kd_student_stages) != [-1],
        '--kd-teacher-stages': list(args.kd_teacher_stages) != [-1],
        '--kd-deep-supervision': bool(args.kd_deep_supervision),
    }
    for name in list_kd_losses():  # at the loss's own default it changes nothing: args.yaml
        for arg, default in loss_hyperparameters(name).items():  # writes kd_temperature 1.0
            value = getattr(args, f'{name}_{arg}', None)
            given[f'--{name}-{arg.replace("_", "-")}'] = value is not None and value != default
    flags = [flag for flag, used in given.items() if used]
    if flags:
        raise KDError(
            f'{flags[0]} is a distillation setting but the run has no teacher; pass --teacher NAME '
            f'(or --teacher-cache DIR), or drop {flags[0]}'
        )


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Checks and derived values after parsing the flags as given (the shared ones, or one
    --student's over them): refuse what cannot apply, fold timm's KD flags into ours, validate the
    losses early."""
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
    check_numbers(args)
    check_names(args)
    resolve_timm_kd(args)
    if args.drop_connect is not None and args.drop_path is None:  # timm's deprecated name
        args.drop_path = args.drop_connect
    # fail early on bad loss names, weights, kwargs and hyperparameters (T > 0, ...)
    loss_config(args)
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


def args_yaml(text: str, args: argparse.Namespace) -> str:
    """args.yaml: the flags as given, with a value where timm's train.py needs one and ours were
    unset, so that timm can read the file (and train what we did) and it reloads here to the same
    run: the KD temperature (unset: each loss at its own default, which is then written as that
    loss's flag, `--ls-temperature 2.0`, and `kd_temperature` as the value the kd loss and an
    ensemble read: 1, or timm's 4 with --kd-model-name). Training adds the device and the class
    count it derived (`timm_kd.training.loop`)."""
    cfg = yaml.safe_load(text)
    if cfg.get('kd_temperature') is None:
        _, kwargs = loss_config(args)
        for name in args.kd_loss:
            default = loss_hyperparameters(name).get('temperature')
            if name != 'kd' and default is not None and cfg.get(f'{name}_temperature') is None:
                cfg[f'{name}_temperature'] = kwargs[name].get('temperature', default)
        cfg['kd_temperature'] = TIMM_KD_TEMPERATURE if cfg.get('kd_model_name') else 1.0
    return yaml.safe_dump(cfg, default_flow_style=False)


def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Parse timm-kd-train arguments; returns (args, the parsed flags as YAML text for args.yaml).

    The text is taken before any value is derived, as timm does, so the file loads back through
    `--config` to the same run.
    """
    parser = build_parser()
    # several --teacher: an ensemble
    argv, teachers = split_teachers(list(sys.argv[1:] if argv is None else argv))
    config_only = argparse.ArgumentParser(add_help=False)
    config_only.add_argument('-c', '--config', default='')
    config_only.add_argument(IGNORE_UNKNOWN, action='store_true')
    known, _ = config_only.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config(known.config, parser, known.config_ignore_unknown))
    args = parser.parse_args(argv + (['--teacher', teachers[0]['name']] if teachers else []))
    typed_data = args.data is not None and args.data != parser.get_default('data')
    if typed_data and not any(a.split('=')[0] == '--data-dir' for a in argv):
        args.data_dir = args.data  # DATA on the command line beats a config's data_dir
    if teachers:
        args.teachers = teachers
    text = yaml.safe_dump(vars(args), default_flow_style=False)
    return finish_args(args), text
