"""Command-line arguments of train_kd.py: timm train.py's flag names plus the distillation flags.

Parsing is two-stage as in timm: `--config file.yaml` sets defaults, the command line overrides them. YAML keys
are the flag names with underscores (`kd_loss: [kd, dkd]`, `dkd_beta: 8`, `lr_base: 5.0e-3`). timm's KD flag
names are aliases: `--kd-model-name` = `--teacher`, `--distill-loss-weight` = `--kd-loss-weight`,
`--task-loss-weight` = `--ori-loss-weight`.
"""
import argparse
import inspect
import os
import shlex
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

import yaml
from timm.utils import ParseKwargs

from .errors import KDError
from .losses import get_kd_loss_class, list_kd_losses, loss_accepts

# YAML keys that users of timm's train.py or the VanillaKD reference write, mapped to our destination names.
CONFIG_ALIASES = {'kd_model_name': 'teacher', 'distill_loss_weight': 'kd_loss_weight',
                  'task_loss_weight': 'ori_loss_weight', 'teacher_pretrained': 'teacher_checkpoint'}


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Dataset')
    g.add_argument('data', nargs='?', metavar='DIR', help='path to dataset root (positional, same as --data-dir)')
    g.add_argument('--data-dir', metavar='DIR', help='path to dataset root')
    g.add_argument('--dataset', '-d', metavar='NAME', default='',
                   help='dataset type + name ("<type>/<name>"), e.g. torch/fashion_mnist; ImageFolder if empty')
    g.add_argument('--train-split', metavar='NAME', default='train')
    g.add_argument('--val-split', metavar='NAME', default='validation')
    g.add_argument('--dataset-download', action='store_true', default=False,
                   help='allow download of torch/ datasets that support it')
    g.add_argument('--class-map', default='', type=str, metavar='FILENAME')
    g.add_argument('--train-num-samples', default=None, type=int, help='for iterable datasets')
    g.add_argument('--val-num-samples', default=None, type=int, help='for iterable datasets')


def _add_subset_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Data scale (the small-data pitfall, VanillaKD Table 13)')
    g.add_argument('--train-fraction', type=float, default=1.0, metavar='F',
                   help='train on a stratified, seeded fraction F of the training set')
    g.add_argument('--train-fraction-keep-steps', action='store_true', default=False,
                   help='divide --epochs by F so the number of optimizer steps stays that of the full set '
                        '(the paper: 4000/2000/1200 epochs for 30%%/60%%/100%%)')


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Model')
    g.add_argument('--model', default='resnet50', type=str, metavar='MODEL', help='student model name')
    g.add_argument('--pretrained', action='store_true', default=False, help='start the student from pretrained')
    g.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH', help='student initial weights')
    g.add_argument('--resume', default='', type=str, metavar='PATH', help='resume full state from a checkpoint')
    g.add_argument('--no-resume-opt', action='store_true', default=False, help='do not restore optimizer state')
    g.add_argument('--num-classes', type=int, default=None, metavar='N')
    g.add_argument('--gp', default=None, type=str, metavar='POOL', help='global pool type')
    g.add_argument('--img-size', type=int, default=None, metavar='N')
    g.add_argument('--in-chans', type=int, default=None, metavar='N')
    g.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N', help='C H W')
    g.add_argument('--crop-pct', default=None, type=float, metavar='N')
    g.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    g.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    g.add_argument('--interpolation', default='', type=str, metavar='NAME')
    g.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='batch size per process')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
    g.add_argument('--channels-last', action='store_true', default=False)
    g.add_argument('--grad-accum-steps', type=int, default=1, metavar='N')
    g.add_argument('--grad-checkpointing', action='store_true', default=False)
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    g.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                   help='torch.compile backend (student and teacher)')
    g.add_argument('--torchcompile-mode', type=str, default=None, metavar='MODE',
                   help='torch.compile mode of --torchcompile and --teacher-compile, e.g. reduce-overhead '
                        '(CUDA graphs)')
    g.add_argument('--amp', action='store_true', default=False, help='mixed precision (autocast)')
    g.add_argument('--amp-dtype', default='float16', type=str, choices=['float16', 'bfloat16'])
    g.add_argument('--device', default=None, type=str, help='cuda or cpu; picked automatically if unset')
    g.add_argument('--sync-bn', action='store_true', default=False)
    g.add_argument('--dist-bn', type=str, default='reduce', help='"broadcast", "reduce", or "" (none)')


def _add_optim_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Optimizer and schedule')
    g.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER')
    g.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON')
    g.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA')
    g.add_argument('--momentum', type=float, default=0.9, metavar='M')
    g.add_argument('--weight-decay', type=float, default=2e-5)
    g.add_argument('--clip-grad', type=float, default=None, metavar='NORM')
    g.add_argument('--clip-mode', type=str, default='norm', help='"norm", "value" or "agc"')
    g.add_argument('--layer-decay', type=float, default=None)
    g.add_argument('--opt-kwargs', dest='opt_args', nargs='*', default={}, action=ParseKwargs)
    g.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER')
    g.add_argument('--sched-on-updates', action='store_true', default=False)
    g.add_argument('--lr', type=float, default=None, metavar='LR',
                   help='learning rate; if unset, --lr-base scaled by the global batch size')
    g.add_argument('--lr-base', type=float, default=0.1, metavar='LR', help='lr at --lr-base-size')
    g.add_argument('--lr-base-size', type=int, default=256, metavar='DIV')
    g.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE', help='"linear" or "sqrt"')
    g.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct')
    g.add_argument('--lr-noise-pct', type=float, default=0.67)
    g.add_argument('--lr-noise-std', type=float, default=1.0)
    g.add_argument('--lr-cycle-mul', type=float, default=1.0)
    g.add_argument('--lr-cycle-decay', type=float, default=0.5)
    g.add_argument('--lr-cycle-limit', type=int, default=1)
    g.add_argument('--lr-k-decay', type=float, default=1.0)
    g.add_argument('--warmup-lr', type=float, default=1e-5)
    g.add_argument('--min-lr', type=float, default=0)
    g.add_argument('--epochs', type=int, default=300)
    g.add_argument('--epoch-repeats', type=float, default=0.)
    g.add_argument('--start-epoch', default=None, type=int)
    g.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+')
    g.add_argument('--decay-epochs', type=float, default=90)
    g.add_argument('--warmup-epochs', type=int, default=5)
    g.add_argument('--warmup-prefix', action='store_true', default=False)
    g.add_argument('--cooldown-epochs', type=int, default=0)
    g.add_argument('--patience-epochs', type=int, default=10)
    g.add_argument('--decay-rate', '--dr', type=float, default=0.1)


def _add_aug_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Augmentation and regularization')
    g.add_argument('--no-aug', action='store_true', default=False)
    g.add_argument('--train-crop-mode', type=str, default=None)
    g.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT')
    g.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO')
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--vflip', type=float, default=0.)
    g.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT')
    g.add_argument('--aa', type=str, default=None, metavar='NAME', help='e.g. rand-m7-mstd0.5-inc1')
    g.add_argument('--aug-repeats', type=float, default=0, help='repeated augmentation count')
    g.add_argument('--bce-loss', action='store_true', default=False, help='hard-label loss is BCE')
    g.add_argument('--bce-sum', action='store_true', default=False)
    g.add_argument('--bce-target-thresh', type=float, default=None)
    g.add_argument('--bce-pos-weight', type=float, default=None)
    g.add_argument('--reprob', type=float, default=0., metavar='PCT')
    g.add_argument('--remode', type=str, default='pixel')
    g.add_argument('--recount', type=int, default=1)
    g.add_argument('--resplit', action='store_true', default=False)
    g.add_argument('--mixup', type=float, default=0.0)
    g.add_argument('--cutmix', type=float, default=0.0)
    g.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', type=str, default='batch')
    g.add_argument('--mixup-off-epoch', default=0, type=int)
    g.add_argument('--smoothing', type=float, default=0.1)
    g.add_argument('--train-interpolation', type=str, default='random')
    g.add_argument('--drop', type=float, default=0.0)
    g.add_argument('--drop-path', type=float, default=None)
    g.add_argument('--drop-block', type=float, default=None)
    g.add_argument('--model-ema', action='store_true', default=False)
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--model-ema-warmup', action='store_true', default=False)


def _add_misc_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Miscellaneous')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--worker-seeding', type=str, default='all')
    g.add_argument('--log-interval', type=int, default=50)
    g.add_argument('--checkpoint-hist', type=int, default=10)
    g.add_argument('-j', '--workers', type=int, default=4)
    g.add_argument('--pin-mem', action='store_true', default=False)
    g.add_argument('--no-prefetcher', action='store_true', default=False)
    g.add_argument('--output', default='', type=str, metavar='PATH', help='output root (default ./output/train)')
    g.add_argument('--experiment', default='', type=str, metavar='NAME', help='output sub-folder name')
    g.add_argument('--eval-metric', default='top1', type=str)
    g.add_argument('--local_rank', '--local-rank', default=0, type=int)


def _add_kd_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Knowledge distillation')
    g.add_argument('--teacher', '--kd-model-name', dest='teacher', default=None, metavar='NAME',
                   help='teacher: timm name with tag, or hf-hub:org/name; no teacher = plain training')
    g.add_argument('--teacher-checkpoint', default=None, metavar='PATH',
                   help='teacher weights: timm/train_kd.py checkpoint (EMA preferred), state_dict or .safetensors')
    g.add_argument('--teacher-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='teacher timm.create_model kwargs, key=value (as --model-kwargs)')
    g.add_argument('--teacher-no-ema', action='store_true', default=False,
                   help='load the raw, not the EMA, weights from --teacher-checkpoint')
    g.add_argument('--teacher-mean', type=float, nargs='+', default=None, metavar='MEAN')
    g.add_argument('--teacher-std', type=float, nargs='+', default=None, metavar='STD')
    g.add_argument('--teacher-input-size', type=int, nargs='+', default=None, metavar='N',
                   help='teacher input H W (or C H W); default from its pretrained cfg')
    g.add_argument('--teacher-dtype', default='float32', choices=['float32', 'bfloat16', 'float16'],
                   help='cast the teacher weights (not only autocast)')
    g.add_argument('--teacher-channels-last', action='store_true', default=False,
                   help='teacher in channels_last (implied by --channels-last)')
    g.add_argument('--teacher-compile', nargs='?', type=str, default=None, const='inductor', metavar='BACKEND',
                   help='torch.compile the teacher only, weights frozen into the graph (--torchcompile: everything)')
    g.add_argument('--no-teacher-inference-mode', dest='teacher_inference_mode', action='store_false', default=True,
                   help='run the teacher under no_grad instead of inference_mode')
    g.add_argument('--teacher-fast', action='store_true', default=False,
                   help='the fast teacher path: --teacher-dtype bfloat16 --teacher-channels-last --teacher-compile')
    g.add_argument('--student', dest='students', action='append', default=[], metavar='"FLAGS"',
                   help='train several students on one data stream and one teacher pass per batch: repeat once per '
                        'student, each a quoted string of per-student flags that override the shared ones, e.g. '
                        '--student "--model resnet18 --lr 0.4" --student "--model resnet34 --kd-loss dkd"')
    g.add_argument('--kd-loss', nargs='+', default=['kd'], metavar='NAME',
                   help=f'one or more distillation losses: {", ".join(list_kd_losses())}')
    g.add_argument('--kd-loss-weight', '--distill-loss-weight', dest='kd_loss_weight', type=float, nargs='+',
                   default=[1.0], metavar='W', help='one weight per --kd-loss (one value: the same for all)')
    g.add_argument('--kd-temperature', type=float, default=None,
                   help='softmax temperature T of every loss that has one (default: each loss own, kd: 1)')
    g.add_argument('--ori-loss-weight', '--task-loss-weight', dest='ori_loss_weight', type=float, default=1.0,
                   help='weight of the hard-label loss; 0 drops it')
    g.add_argument('--kd-loss-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='loss hyperparameters: key=value (every loss that takes key) or name.key=value')
    g.add_argument('--kd-student-stages', type=int, nargs='+', default=[-1], metavar='I',
                   help='student stages (feature_info indices, -1 = last) for feature losses')
    g.add_argument('--kd-teacher-stages', type=int, nargs='+', default=[-1], metavar='I',
                   help='teacher stages, paired one to one with --kd-student-stages')
    g.add_argument('--kd-deep-supervision', type=int, nargs='*', default=[], metavar='I',
                   help='student stages that get an auxiliary head distilled by the first logit loss')
    g.add_argument('--kd-deep-supervision-weight', type=float, default=1.0, help='weight of the auxiliary heads')
    _add_loss_hyperparameter_args(p)
    g.add_argument('--allow-unsafe-pickle', action='store_true', default=False,
                   help='allow checkpoints that need arbitrary pickle (runs code from the file: trusted files only)')


_NOT_FLAGS = {'student', 'teacher', 'num_samples', 'base_kwargs'}


def _loss_hyperparameters(name: str) -> Dict[str, Any]:
    """Constructor arguments of a registered loss that become `--NAME-ARG` flags, with their defaults."""
    params = inspect.signature(get_kd_loss_class(name)).parameters.values()
    return {q.name: q.default for q in params if q.name not in _NOT_FLAGS and q.default is not q.empty
            and q.kind is q.POSITIONAL_OR_KEYWORD}


def _flag_bool(value: str) -> bool:
    if str(value).lower() not in ('true', 'false', '1', '0', 'yes', 'no'):
        raise argparse.ArgumentTypeError(f'expected true or false, got {value!r}')
    return str(value).lower() in ('true', '1', 'yes')


def _add_loss_hyperparameter_args(p: argparse.ArgumentParser) -> None:
    """One flag per loss hyperparameter, generated from the registry: --dkd-beta, --rkd-angle-weight, ..."""
    g = p.add_argument_group('Loss hyperparameters (used when the loss is in --kd-loss; default: the loss own)')
    for name in list_kd_losses():
        for arg, default in _loss_hyperparameters(name).items():
            if f'--{name}-{arg.replace("_", "-")}' in p._option_string_actions:  # --kd-temperature: all losses
                continue
            kind = _flag_bool if isinstance(default, bool) else float if isinstance(default, (int, float)) else str
            g.add_argument(f'--{name}-{arg.replace("_", "-")}', dest=f'{name}_{arg}', default=None, metavar='V',
                           type=kind, help=f'(default {default})')


def kd_loss_config(args: argparse.Namespace) -> Tuple[Dict[str, float], Dict[str, Dict[str, Any]]]:
    """Per-loss weights and keyword arguments from the KD flags.

    Precedence, lowest first: the loss's own defaults, --kd-temperature, `key=value` in --kd-loss-kwargs (to
    every chosen loss that takes `key`), the generated `--NAME-ARG` flags, `NAME.key=value`.
    """
    names = args.kd_loss
    for name in names:
        if name not in list_kd_losses():
            raise KDError(f'unknown --kd-loss {name!r}; choose one of: {", ".join(list_kd_losses())}')
    if len(set(names)) != len(names):
        raise KDError(f'--kd-loss lists a loss twice: {names}')
    weights = args.kd_loss_weight
    if len(weights) not in (1, len(names)):
        raise KDError(f'--kd-loss-weight has {len(weights)} values for {len(names)} losses; give one per loss or one')
    kwargs: Dict[str, Dict[str, Any]] = {n: {} for n in names}
    for name in names:
        if args.kd_temperature is not None and loss_accepts(name, 'temperature'):
            kwargs[name]['temperature'] = args.kd_temperature
    for key, value in args.kd_loss_kwargs.items():
        if '.' in key:
            continue
        takers = [n for n in names if loss_accepts(n, key)]
        if not takers:
            raise KDError(f'--kd-loss-kwargs {key}={value}: none of {names} takes {key!r}')
        for n in takers:
            kwargs[n][key] = value
    for name in names:
        for arg, default in _loss_hyperparameters(name).items():
            value = getattr(args, f'{name}_{arg}', None)
            if value is not None and not (name == 'kd' and arg == 'temperature'):
                kwargs[name][arg] = int(value) if type(default) is int else value
    for key, value in args.kd_loss_kwargs.items():
        if '.' in key:
            name, arg = key.split('.', 1)
            if name not in names:
                raise KDError(f'--kd-loss-kwargs {key}={value}: {name!r} is not in --kd-loss {names}')
            kwargs[name][arg] = value
    return dict(zip(names, weights * len(names) if len(weights) == 1 else weights)), kwargs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='timm-kd: knowledge distillation for timm image classifiers')
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE', help='YAML file of defaults')
    for add in (_add_data_args, _add_subset_args, _add_model_args, _add_optim_args, _add_aug_args, _add_misc_args,
                _add_kd_args):
        add(parser)
    return parser


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as e:
        raise KDError(f'cannot read --config {path!r}: {e.strerror}; pass an existing YAML file') from None
    except yaml.YAMLError as e:
        raise KDError(f'--config {path!r} is not valid YAML ({" ".join(str(e).split())[:120]})') from None
    if not isinstance(cfg, dict):
        raise KDError(f'--config {path!r} must be a mapping of flag names to values')
    return cfg


def load_config(path: str, parser: argparse.ArgumentParser, _seen: Tuple[str, ...] = ()) -> dict:
    """Read a YAML config into parser defaults, resolving timm's KD key names and rejecting unknown keys.

    `inherit: other.yaml` (a path relative to this file, or a list of them) loads those first; this file's keys
    win. The recipes in hparams/ use it: a checkpoint's file inherits its training strategy.
    """
    if os.path.abspath(path) in _seen:
        raise KDError(f'--config {path!r} inherits itself')
    cfg = _read_yaml(path)
    bases = cfg.pop('inherit', None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged.update(load_config(os.path.join(os.path.dirname(path), base), parser, _seen + (os.path.abspath(path),)))
    cfg = {CONFIG_ALIASES.get(k.replace('-', '_'), k.replace('-', '_')): v for k, v in cfg.items()}
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise KDError(f'--config {path!r} has unknown keys {unknown}; use train_kd.py flag names with underscores')
    merged.update(cfg)
    return merged


def _listify(args: argparse.Namespace) -> argparse.Namespace:
    for key in ('kd_loss', 'kd_loss_weight', 'kd_student_stages', 'kd_teacher_stages', 'kd_deep_supervision'):
        if not isinstance(getattr(args, key), (list, tuple)):  # a scalar from YAML
            setattr(args, key, [getattr(args, key)])
    return args


def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Parse train_kd.py arguments; returns (args, args as YAML text for args.yaml)."""
    parser = build_parser()
    config_only = argparse.ArgumentParser(add_help=False)
    config_only.add_argument('-c', '--config', default='')
    known, _ = config_only.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config(known.config, parser))
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or args.data
    _listify(args)
    if not 0 < args.train_fraction <= 1:
        raise KDError(f'--train-fraction must be in (0, 1], got {args.train_fraction}')
    if args.train_fraction_keep_steps:
        args.epochs = round(args.epochs / args.train_fraction)
    kd_loss_config(args)  # fail early on bad loss names, weights or kwargs
    if args.teacher_checkpoint and not args.teacher:
        raise KDError('--teacher-checkpoint needs --teacher ARCH, the architecture the checkpoint was trained with')
    if args.teacher_fast:
        args.teacher_dtype = 'bfloat16' if args.teacher_dtype == 'float32' else args.teacher_dtype
        args.teacher_channels_last = True
        args.teacher_compile = args.teacher_compile or 'inductor'
    return args, yaml.safe_dump(vars(args), default_flow_style=False)


# What every student of one run shares: the data stream (data, augmentation, batch, input size and
# normalization), the epochs, the teacher (every teacher_* flag) and the process setup. Everything else (model,
# optimizer, schedule, losses, EMA, output) may differ per --student.
SHARED_BY_STUDENTS = {
    'config', 'data', 'data_dir', 'dataset', 'train_split', 'val_split', 'dataset_download', 'class_map',
    'train_num_samples', 'val_num_samples', 'train_fraction', 'train_fraction_keep_steps', 'num_classes',
    'img_size', 'in_chans', 'input_size', 'crop_pct', 'mean', 'std', 'interpolation', 'batch_size',
    'validation_batch_size', 'channels_last', 'grad_accum_steps', 'torchcompile', 'torchcompile_mode', 'amp',
    'amp_dtype', 'device', 'sync_bn', 'dist_bn', 'epochs', 'epoch_repeats', 'start_epoch', 'cooldown_epochs',
    'no_aug', 'train_crop_mode', 'scale', 'ratio', 'hflip', 'vflip', 'color_jitter', 'aa', 'aug_repeats',
    'reprob', 'remode', 'recount', 'resplit', 'mixup', 'cutmix', 'cutmix_minmax', 'mixup_prob',
    'mixup_switch_prob', 'mixup_mode', 'mixup_off_epoch', 'train_interpolation', 'smoothing', 'seed',
    'worker_seeding', 'workers', 'pin_mem', 'no_prefetcher', 'output', 'log_interval', 'local_rank',
    'allow_unsafe_pickle', 'students'}


def student_args(args: argparse.Namespace) -> List[Tuple[argparse.Namespace, str]]:
    """(args, args.yaml text) of each student: `args` itself, or one per `--student "FLAGS"`.

    A student's flags are parsed over the shared arguments; its output folder is EXPERIMENT/<its --experiment, or
    its index and model>.
    """
    if not args.students:
        return [(args, yaml.safe_dump(vars(args), default_flow_style=False))]
    if args.resume:
        raise KDError('--resume with --student: give each student its own --resume inside its --student "..."')
    parser = build_parser()
    parser.set_defaults(**vars(args))
    parent = args.experiment or datetime.now().strftime('%Y%m%d-%H%M%S') + '-students'
    out = []
    for i, flags in enumerate(args.students):
        try:
            ns = parser.parse_args(shlex.split(flags))
        except SystemExit:
            raise KDError(f'--student {flags!r}: not valid train_kd.py flags (see the error above)') from None
        changed = sorted(k for k in vars(args) if (k in SHARED_BY_STUDENTS or k.startswith('teacher'))
                         and getattr(ns, k) != getattr(args, k))
        if changed:
            raise KDError(f'--student {flags!r} sets {", ".join("--" + k.replace("_", "-") for k in changed)}, which '
                          f'all students share (one data stream, one teacher); set it outside --student')
        kd_loss_config(_listify(ns))
        name = ns.experiment if ns.experiment != args.experiment else f'{i}-{ns.model.replace("/", "_")}'
        ns.experiment, ns.students = os.path.join(parent, name), []
        out.append((ns, yaml.safe_dump(vars(ns), default_flow_style=False)))
    return out
