"""timm-kd's own flags (teacher, losses, data scale) and how timm's KD flags map onto them.

Our flags carry the VanillaKD paper's defaults (T=1, weights 1:1). timm's flag names keep timm's
meaning: `--kd-model-name` leaves the temperature at timm's 4 unless `--kd-temperature` is given,
and `--task-loss-weight W` alone gives the KD term weight 1 - W, as timm's distillation task does.
"""

import argparse
import math
from typing import Any, Dict, List, Optional, Tuple

from timm.utils import ParseKwargs

from ...errors import KDError
from ...losses import list_kd_losses
from ...losses.config import kd_loss_config, loss_hyperparameters
from .declare import NEITHER, STUDENT, TEACHER

TIMM_KD_TEMPERATURE = 4.0  # timm train.py's --kd-temperature default


# The flags each --teacher has for itself: (field, flag names, argparse options). Here they are
# `teacher_<field>`; with several --teacher, `timm_kd.ensemble.split_teachers` reads them per
# teacher as `<field>`.
TEACHER_OWN_FLAGS = (
    (
        'checkpoint',
        ('--teacher-checkpoint', '--teacher-pretrained'),
        dict(
            default=None,
            metavar='PATH',
            help='teacher weights: a timm/timm-kd checkpoint (EMA preferred), a state_dict or '
            '.safetensors',
        ),
    ),
    (
        'weight',
        ('--teacher-weight',),
        dict(
            type=float,
            default=1.0,
            metavar='W',
            help='share of the --teacher before it in an ensemble (several --teacher; default '
            'equal)',
        ),
    ),
    (
        'kwargs',
        ('--teacher-kwargs',),
        dict(
            nargs='*',
            default={},
            action=ParseKwargs,
            metavar='KEY=VALUE',
            help='timm.create_model arguments of the teacher',
        ),
    ),
    (
        'no_ema',
        ('--teacher-no-ema',),
        dict(
            action='store_true',
            default=False,
            help='load the raw, not the EMA, weights of --teacher-checkpoint',
        ),
    ),
    (
        'mean',
        ('--teacher-mean',),
        dict(
            type=float,
            nargs='+',
            default=None,
            metavar='MEAN',
            help="teacher normalization mean (its pretrained cfg's if unset)",
        ),
    ),
    (
        'std',
        ('--teacher-std',),
        dict(
            type=float,
            nargs='+',
            default=None,
            metavar='STD',
            help="teacher normalization std (its pretrained cfg's if unset)",
        ),
    ),
    (
        'input_size',
        ('--teacher-input-size',),
        dict(
            type=int,
            nargs='+',
            default=None,
            metavar='N',
            help="teacher input H W (or C H W); its pretrained cfg's if unset",
        ),
    ),
    (
        'class_map',
        ('--teacher-class-map',),
        dict(
            default=None,
            metavar='FILE|auto',
            help="map the teacher's label set onto the data's: a file of one line per class "
            'naming its teacher classes (index, label name or description, several joined by |), '
            "or auto (by name against the teacher's label names)",
        ),
    ),
    (
        'dtype',
        ('--teacher-dtype',),
        dict(
            default='float32',
            choices=['float32', 'bfloat16', 'float16'],
            help='cast the teacher weights to this dtype',
        ),
    ),
)


def _flag_bool(value: str) -> bool:
    if str(value).lower() not in ('true', 'false', '1', '0', 'yes', 'no'):
        raise argparse.ArgumentTypeError(f'expected true or false, got {value!r}')
    return str(value).lower() in ('true', '1', 'yes')


def _flag_type(default: Any):
    if isinstance(default, bool):
        return _flag_bool
    if isinstance(default, int):
        return int
    return float if isinstance(default, float) else str


def add_loss_hyperparameter_flags(p: argparse.ArgumentParser) -> None:
    """One flag per loss hyperparameter: --dkd-beta,
    --rkd-angle-weight, ... (unset: the loss's own default)."""
    g = p.add_argument_group('Loss hyperparameters (used when the loss is in --kd-loss)')
    for name in list_kd_losses():
        for arg, default in loss_hyperparameters(name).items():
            flag = f'--{name}-{arg.replace("_", "-")}'
            if flag in p._option_string_actions:  # --kd-temperature is every loss's temperature
                continue
            g.add_argument(
                flag,
                dest=f'{name}_{arg}',
                default=None,
                metavar='V',
                type=_flag_type(default),
                help=f"{name}'s {arg.replace('_', ' ')} (the loss's default: {default})",
                role=STUDENT,
            )


def add_kd_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Teacher (timm-kd)')
    g.add_argument(
        '--teacher',
        default=None,
        metavar='NAME',
        help='teacher: timm name with tag, or hf-hub:org/name; none = plain training',
        role=TEACHER,
        shared=True,
    )
    for field, flags, options in TEACHER_OWN_FLAGS:
        g.add_argument(*flags, dest=f'teacher_{field}', **options, role=TEACHER, shared=True)
    g.add_argument(
        '--teacher-ensemble',
        choices=('prob', 'logit'),
        default='prob',
        help='ensemble target: the weighted mean of probabilities at --kd-temperature, or of '
        'logits',
        role=TEACHER,
        shared=True,
    )
    # set from several --teacher (args.yaml)
    g.add_argument('--teachers', default=None, help=argparse.SUPPRESS, role=TEACHER, shared=True)
    g.add_argument(
        '--unlabeled-data',
        default='',
        metavar='PATH',
        help='images with no labels, trained on with the KD terms only: a folder of images or a '
        'timm '
        'dataset spec read from the data root',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--unlabeled-ratio',
        type=float,
        default=None,
        metavar='R',
        help='unlabeled images per labeled one each epoch (default: all of them)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--teacher-cache',
        default=None,
        metavar='DIR',
        help='train from the teacher outputs stored by `python -m timm_kd.cache build` (no teacher '
        'runs; '
        'logit losses and deep supervision only)',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--teacher-channels-last',
        action='store_true',
        default=False,
        help='teacher in channels_last (implied by --channels-last)',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--teacher-compile',
        nargs='?',
        type=str,
        default=None,
        const='inductor',
        metavar='BACKEND',
        help='torch.compile the teacher only, its frozen weights folded into the graph',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--no-teacher-inference-mode',
        dest='teacher_inference_mode',
        action='store_false',
        default=True,
        help='run the teacher under no_grad instead of inference_mode',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--teacher-fast',
        action='store_true',
        default=False,
        help='--teacher-dtype bfloat16 --teacher-channels-last --teacher-compile',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--student',
        dest='students',
        action='append',
        default=[],
        metavar='"FLAGS"',
        help='one more student on the same data stream and teacher pass: repeat, each a quoted '
        'string of '
        'its own flags, e.g. --student="--model resnet18 --lr 0.4"',
        role=STUDENT,
        shared=True,
    )

    g = p.add_argument_group('Distillation losses (timm-kd; the paper: kd, T=1, weights 1:1)')
    g.add_argument(
        '--kd-loss',
        nargs='+',
        default=['kd'],
        metavar='NAME',
        help=f'one or more distillation losses: {", ".join(list_kd_losses())}',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-loss-weight',
        type=float,
        nargs='+',
        default=None,
        metavar='W',
        help='one weight per --kd-loss, or one for all (1 if unset)',
        role=STUDENT,
    )
    g.add_argument(
        '--ori-loss-weight',
        type=float,
        default=None,
        metavar='W',
        help='weight of the hard-label loss, 0 drops it (1 if unset)',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-loss-kwargs',
        nargs='*',
        default={},
        action=ParseKwargs,
        metavar='KEY=VALUE',
        help='loss hyperparameters: key=value (every chosen loss that takes it) or loss.key=value',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-student-stages',
        type=int,
        nargs='+',
        default=[-1],
        metavar='I',
        help='student stages (feature_info indices, -1 the last) of the feature losses',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-teacher-stages',
        type=int,
        nargs='+',
        default=[-1],
        metavar='I',
        help='teacher stages, paired one to one with --kd-student-stages',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-deep-supervision',
        type=int,
        nargs='*',
        default=[],
        metavar='I',
        help='student stages that get an auxiliary head distilled by the first logit loss',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-deep-supervision-weight',
        type=float,
        default=1.0,
        metavar='W',
        help='weight of the auxiliary heads',
        role=STUDENT,
    )
    g.add_argument(
        '--allow-unsafe-pickle',
        action='store_true',
        default=False,
        help='allow checkpoints that need arbitrary pickle (runs code from the file: trusted files '
        'only)',
        role=NEITHER,
        shared=True,
    )
    add_loss_hyperparameter_flags(p)

    g = p.add_argument_group('Data scale and stopping (timm-kd)')
    g.add_argument(
        '--train-fraction',
        type=float,
        default=1.0,
        metavar='F',
        help='train on a stratified, seeded fraction F of the training set (VanillaKD Table 13)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--train-fraction-keep-steps',
        action='store_true',
        default=False,
        help='divide --epochs by F so the number of optimizer steps stays that of the full set',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--view-cycle',
        type=int,
        default=0,
        metavar='N',
        help='epoch e trains on the views of epoch e mod N (order, augmentation, mixing): a '
        'teacher-output cache of N epochs serves any schedule (0: every epoch its own views)',
        role=NEITHER,
    )
    g.add_argument(
        '--stop-epoch',
        type=int,
        default=None,
        metavar='N',
        help='stop before epoch N without shortening the schedule (resume later to continue)',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--val-start-epoch',
        type=int,
        default=0,
        metavar='N',
        help='validate (and write checkpoints) from epoch N on, every --val-interval epochs, and '
        'always after the last; before it only --recovery-interval checkpoints are written',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--max-skipped-fraction',
        type=float,
        default=0.01,
        metavar='F',
        help="stop when more than this fraction of an epoch's training files cannot be read (timm "
        "replaces each with the next sample; their count is logged at the epoch's end)",
        role=NEITHER,
    )


def resolve_timm_kd(args: argparse.Namespace) -> None:
    """Fold timm's KD flags into ours, in place, with timm's meaning; consumes them
    so that a second call (a student's arguments parsed over these) changes nothing.

    - `--kd-model-name` is the teacher; with it the temperature defaults to timm's 4.
    - `--distill-loss-weight D`: KD weight D. `--task-loss-weight W`: hard-label weight W, and KD
      weight 1 - W unless D (or --kd-loss-weight) is given.
    - `--kd-distill-type feature` (timm's feature task) is our `prelogits` loss, its widths
      `--kd-student-feature-dim`/`--kd-teacher-feature-dim`; `token` (timm's token task) trains
      the distillation token with `kd` (soft) or `hard` (`--kd-token-distill-type hard`). Each
      replaces the default loss; with --kd-loss given, that stands.
    - Unset ours default to the paper's: weights 1:1.
    """
    if args.kd_model_name:
        if args.teacher and args.teacher != args.kd_model_name:
            raise KDError(
                f'--teacher {args.teacher!r} and --kd-model-name {args.kd_model_name!r} name two '
                f'teachers; give one'
            )
        args.teacher = args.kd_model_name
        if args.kd_temperature is None:
            args.kd_temperature = TIMM_KD_TEMPERATURE
    # without a teacher timm ignores its task flags, and so do we
    teacher = bool(args.teacher or args.teacher_cache)
    default_loss = args.kd_loss in (None, ['kd']) and teacher
    for who in ('student', 'teacher'):  # the widths timm's feature task is given
        if teacher and getattr(args, f'kd_{who}_feature_dim') is not None:
            setattr(args, f'prelogits_{who}_dim', getattr(args, f'kd_{who}_feature_dim'))
    if args.kd_distill_type == 'feature' and default_loss:
        args.kd_loss = ['prelogits']
    elif args.kd_distill_type == 'token' and args.kd_token_distill_type == 'hard' and default_loss:
        args.kd_loss = ['hard']
    if args.task_loss_weight is not None:
        if args.ori_loss_weight is not None and args.ori_loss_weight != args.task_loss_weight:
            raise KDError(
                '--ori-loss-weight and --task-loss-weight both set the hard-label weight; give one'
            )
        args.ori_loss_weight = args.task_loss_weight
    if args.distill_loss_weight is not None:
        if args.kd_loss_weight is not None and args.kd_loss_weight != [args.distill_loss_weight]:
            raise KDError(
                '--kd-loss-weight and --distill-loss-weight both set the KD weight; give one'
            )
        args.kd_loss_weight = [args.distill_loss_weight]
    elif args.task_loss_weight is not None and args.kd_loss_weight is None:
        args.kd_loss_weight = [1.0 - args.task_loss_weight]
    args.task_loss_weight = args.distill_loss_weight = None
    if args.ori_loss_weight is None:
        args.ori_loss_weight = 1.0
    if args.kd_loss_weight is None:
        args.kd_loss_weight = [1.0]


def loss_config(args: argparse.Namespace) -> Tuple[Dict[str, float], Dict[str, Dict[str, Any]]]:
    """(weight, kwargs) of each distillation loss a
    student's flags ask for (after `resolve_timm_kd`)."""
    return kd_loss_config(
        args.kd_loss,
        args.kd_loss_weight,
        temperature=args.kd_temperature,
        loss_kwargs=args.kd_loss_kwargs,
        flags=vars(args),
    )


def _teacher_parser() -> argparse.ArgumentParser:
    """The flags one --teacher of an ensemble has for
    itself, as `<field>` (kd_flags.TEACHER_OWN_FLAGS)."""

    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for field, flags, options in TEACHER_OWN_FLAGS:
        # unset: the shared --teacher-dtype (or --teacher-fast) applies to this teacher
        if field == 'dtype':
            options = dict(options, default=None)
        p.add_argument(*flags, dest=field, **options)
    return p


def split_teachers(argv: List[str]) -> Tuple[List[str], Optional[List[Dict[str, Any]]]]:
    """With `--teacher` given twice or more: the other
    arguments, and one dict per teacher of its own flags."""
    starts = [i for i, a in enumerate(argv) if a == '--teacher' or a.startswith('--teacher=')]
    own_flags = {f for _, flags, _ in TEACHER_OWN_FLAGS for f in flags}
    given = [a.split('=', 1)[0] for a in argv if a.split('=', 1)[0] in own_flags]
    if '--teacher-weight' in given and len(starts) < 2:
        raise KDError(
            '--teacher-weight weighs the teachers of an ensemble; with one --teacher it means '
            'nothing: drop it, or give several --teacher'
        )
    if len(starts) < 2:
        return argv, None
    early = [a for a in argv[: starts[0]] if a.split('=', 1)[0] in own_flags]
    if early:
        raise KDError(
            f'{early[0].split("=", 1)[0]} comes before the first --teacher; with several --teacher '
            "each one's flags follow it: move it after the --teacher it belongs to"
        )
    rest, teachers = argv[: starts[0]], []
    parser = _teacher_parser()
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(argv)
        token = argv[start]
        name, segment = (
            (token.split('=', 1)[1], argv[start + 1 : end])
            if '=' in token
            else (argv[start + 1] if start + 1 < end else '', argv[start + 2 : end])
        )
        if not name or name.startswith('-'):
            raise KDError('--teacher needs a model name after it')
        flags = [a.split('=', 1)[0] for a in segment if a.split('=', 1)[0] in own_flags]
        twice = sorted({f for f in flags if flags.count(f) > 1})
        if twice:
            raise KDError(
                f'{twice[0]} is given twice for --teacher {name}; give each teacher flag once'
            )
        own, others = parser.parse_known_args(segment)
        if not math.isfinite(own.weight) or own.weight < 0:
            raise KDError(
                f'--teacher-weight {own.weight} of {name!r} is not a number >= 0; pass one'
            )
        teachers.append(dict(name=name, **vars(own)))
        rest += others
    return rest, teachers
