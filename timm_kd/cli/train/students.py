"""Several students on one data stream and one teacher pass: `--student "FLAGS"`, repeated.

Each student's flags are parsed over the shared ones. What the students share (the data stream, the
epochs, the teacher, the process setup) must not be set inside `--student`; everything else (model,
optimizer, schedule, losses, EMA, output) may differ.
"""

import argparse
import os
import shlex
from datetime import datetime
from typing import List, Tuple

import yaml

from ...errors import KDError
from .config import build_parser, finish_args

SHARED_BY_STUDENTS = {
    'config',
    'data',
    'data_dir',
    'dataset',
    'train_split',
    'val_split',
    'dataset_download',
    'class_map',
    'train_num_samples',
    'val_num_samples',
    'input_img_mode',
    'input_key',
    'target_key',
    'dataset_trust_remote_code',
    'train_fraction',
    'train_fraction_keep_steps',
    'unlabeled_data',
    'unlabeled_ratio',
    'num_classes',
    'img_size',
    'in_chans',
    'input_size',
    'crop_pct',
    'mean',
    'std',
    'interpolation',
    'batch_size',
    'aug_splits',
    'validation_batch_size',
    'channels_last',
    'grad_accum_steps',
    'torchcompile',
    'torchcompile_mode',
    'amp',
    'amp_dtype',
    'model_dtype',
    'device',
    'device_modules',
    'sync_bn',
    'dist_bn',
    'no_ddp_bb',
    'synchronize_step',
    'fuser',
    'fast_norm',
    'epochs',
    'epoch_repeats',
    'start_epoch',
    'stop_epoch',
    'cooldown_epochs',
    'no_aug',
    'train_crop_mode',
    'scale',
    'ratio',
    'hflip',
    'vflip',
    'color_jitter',
    'color_jitter_prob',
    'grayscale_prob',
    'gaussian_blur_prob',
    'aa',
    'aug_repeats',
    'reprob',
    'remode',
    'recount',
    'resplit',
    'mixup',
    'cutmix',
    'cutmix_minmax',
    'mixup_prob',
    'mixup_switch_prob',
    'mixup_mode',
    'mixup_off_epoch',
    'train_interpolation',
    'smoothing',
    'seed',
    'worker_seeding',
    'workers',
    'pin_mem',
    'no_prefetcher',
    'use_multi_epochs_loader',
    'output',
    'log_interval',
    'val_interval',
    'recovery_interval',
    'save_images',
    'local_rank',
    'allow_unsafe_pickle',
    'students',
    'log_wandb',
    'wandb_project',
    'wandb_tags',
    'wandb_resume_id',
    'train_img_sizes',
    'train_batch_sizes',
    'train_size_probs',
    'train_size_schedule',
    'train_size_schedule_spread',
    'train_size_random_mix',
    'train_batches_per_epoch',
    'variable_batch_loss_scale',
}


def _is_shared(dest: str) -> bool:
    return dest in SHARED_BY_STUDENTS or dest.startswith('teacher') or dest == 'kd_model_name'


def student_args(args: argparse.Namespace, args_text: str) -> List[Tuple[argparse.Namespace, str]]:
    """(args, args.yaml text) of each student: `args` itself, or one per `--student "FLAGS"`.

    `args_text` is the shared flags as parsed (before derived values); each student's flags are
    parsed over it, so a student is exactly "the shared args.yaml plus its own flags". Its output
    folder is EXPERIMENT/<its --experiment, or its index and model>.
    """
    if not args.students:
        return [(args, args_text)]
    if args.resume:
        raise KDError(
            '--resume with --student: give each student its own --resume inside its --student "..."'
        )
    parser = build_parser()
    parser.set_defaults(**yaml.safe_load(args_text))
    parent = args.experiment or datetime.now().strftime('%Y%m%d-%H%M%S') + '-students'
    out = []
    for i, flags in enumerate(args.students):
        try:
            ns = parser.parse_args(shlex.split(flags))
        except SystemExit:
            raise KDError(
                f'--student {flags!r}: not valid timm-kd-train flags (see the error above)'
            ) from None
        raw = dict(vars(ns))  # as parsed, for its args.yaml
        finish_args(ns)
        changed = sorted(
            k for k in vars(args) if _is_shared(k) and getattr(ns, k) != getattr(args, k)
        )
        if changed:
            raise KDError(
                f'--student {flags!r} sets '
                f'{", ".join("--" + k.replace("_", "-") for k in changed)}, which '
                f'all students share (one data stream, one teacher); set it outside --student'
            )
        name = (
            ns.experiment
            if ns.experiment != args.experiment
            else f'{i}-{ns.model.replace("/", "_")}'
        )
        ns.experiment, ns.students = os.path.join(parent, name), []
        raw.update(experiment=ns.experiment, students=[])
        out.append((ns, yaml.safe_dump(raw, default_flow_style=False)))
    return out
