"""What each flag of `timm-kd-train` is to the teacher, in one table.

- `TEACHER`: changes what the teacher sees or answers (the data, the views, the student's
  preprocessing the batch arrives in, the teacher itself), or is counted as such to be safe. It
  counts in a teacher-output cache's identity: a cached run that differs in it is refused in one
  line (`timm_kd.cache.TeacherCache.check`).
- `STUDENT`: the student's training alone (model, optimizer, schedule, losses, precision). A cached
  run that differs in it trains from the cache as the live run would.
- `NEITHER`: where things go and how the run is driven (paths, logging, workers, speed switches,
  settings of a refused loader, `--view-cycle`: which built epoch's views an epoch replays, each
  the same views with or without it), and validation's preprocessing (`--crop-pct`;
  `--interpolation`, which the training views use only under --no-aug or without
  --train-interpolation: then it counts, `timm_kd.cache.fingerprint`).
- `REFUSED`: a flag of timm's train.py that cannot apply to distillation (`timm_flags.UNSUPPORTED`).

`tests/test_flag_roles.py` flips every flag and checks the table against the cache's behaviour, so
a flag missing here (a new timm flag) fails the suite the day it arrives; the list of what a cache's
identity holds in docs/teacher-cache.md is written from this table (`make docs`).
"""

import argparse
from typing import Dict, List

from .timm_flags import UNSUPPORTED

TEACHER, STUDENT, NEITHER, REFUSED = 'teacher', 'student', 'neither', 'refused'

_BY_ROLE = {
    TEACHER: """
        dataset train_split train_num_samples class_map input_img_mode input_key target_key
        epoch_repeats train_fraction unlabeled_data unlabeled_ratio
        model num_classes img_size in_chans input_size mean std
        batch_size model_dtype seed no_prefetcher
        use_multi_epochs_loader no_aug train_crop_mode scale ratio hflip vflip color_jitter
        color_jitter_prob grayscale_prob gaussian_blur_prob aa aug_repeats reprob remode recount
        resplit aug_splits mixup cutmix cutmix_minmax mixup_prob mixup_switch_prob mixup_mode
        mixup_off_epoch train_interpolation
        train_img_sizes train_batch_sizes train_size_probs train_size_schedule
        train_size_schedule_spread train_size_random_mix train_batches_per_epoch
        teacher teachers kd_model_name teacher_checkpoint teacher_weight teacher_kwargs
        teacher_no_ema teacher_mean teacher_std teacher_input_size teacher_dtype teacher_ensemble
        teacher_fast teacher_class_map
    """,
    STUDENT: """
        pretrained pretrained_path initial_checkpoint no_resume_opt gp validation_batch_size
        channels_last fuser grad_checkpointing fast_norm model_kwargs head_init_scale
        head_init_bias torchcompile_mode torchcompile amp amp_dtype
        opt opt_eps opt_betas momentum weight_decay clip_grad clip_mode layer_decay
        layer_decay_min_scale layer_decay_no_opt_scale opt_kwargs
        sched sched_on_updates lr lr_base lr_base_size lr_base_scale lr_noise lr_noise_pct
        lr_noise_std lr_cycle_mul lr_cycle_decay lr_cycle_limit lr_k_decay warmup_lr min_lr
        epochs start_epoch decay_milestones decay_epochs warmup_epochs warmup_prefix
        cooldown_epochs patience_epochs decay_rate
        bce_loss bce_sum bce_target_thresh bce_pos_weight drop drop_connect drop_path drop_block
        bn_momentum bn_eps sync_bn dist_bn model_ema model_ema_force_cpu model_ema_decay
        model_ema_warmup eval_metric variable_batch_loss_scale
        distill_loss_weight task_loss_weight kd_temperature kd_token_distill_type students
        kd_distill_type kd_student_feature_dim kd_teacher_feature_dim jsd_loss split_bn
        torchscript
        kd_loss kd_loss_weight ori_loss_weight kd_loss_kwargs kd_student_stages kd_teacher_stages
        kd_deep_supervision kd_deep_supervision_weight train_fraction_keep_steps
        smoothing grad_accum_steps
    """,
    NEITHER: """
        help config config_ignore_unknown data data_dir val_split val_num_samples dataset_download
        dataset_trust_remote_code resume device no_ddp_bb synchronize_step local_rank
        device_modules log_interval val_interval recovery_interval checkpoint_hist workers
        save_images pin_mem output experiment log_wandb wandb_project
        wandb_tags wandb_resume_id teacher_cache teacher_channels_last teacher_compile
        teacher_inference_mode allow_unsafe_pickle stop_epoch max_skipped_fraction
        naflex_train_seq_lens naflex_max_seq_len naflex_patch_sizes naflex_patch_size_probs
        naflex_loss_scale naflex_patchify_channels_first tta worker_seeding
        crop_pct interpolation view_cycle
    """,
}
FLAG_ROLES: Dict[str, str] = {
    **{dest: role for role, names in _BY_ROLE.items() for dest in names.split()},
    **{dest: REFUSED for dest in UNSUPPORTED},
}
# The generated flags of each loss's hyperparameters (`--dkd-beta`, ...) are the student's.
LOSS_HYPERPARAMETERS = 'Loss hyperparameters'


def flag_roles(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """Every destination of `parser` with its role; a flag the table lacks maps to None."""
    roles = {}
    for group in parser._action_groups:
        for action in group._group_actions:
            generated = (group.title or '').startswith(LOSS_HYPERPARAMETERS)
            roles[action.dest] = STUDENT if generated else FLAG_ROLES.get(action.dest)
    return roles


def identity_markdown(parser: argparse.ArgumentParser) -> str:
    """The list of the flags a teacher-output cache's identity holds, by parser group."""
    lines: List[str] = []
    for group in parser._action_groups:
        flags = [
            max(action.option_strings, key=len) if action.option_strings else action.dest.upper()
            for action in group._group_actions
            if FLAG_ROLES.get(action.dest) == TEACHER and action.help != argparse.SUPPRESS
        ]
        if flags:
            lines.append(f'- {group.title}: ' + ', '.join(f'`{f}`' for f in flags))
    return '\n'.join(lines) + '\n'


MARKERS = (
    '<!-- identity flags: written by `make docs` -->',
    '<!-- end of identity flags -->',
)
