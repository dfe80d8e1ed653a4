#!/usr/bin/env python3
"""Knowledge distillation for timm image classifiers: `python train_kd.py DATA --model M --teacher T`.

Accepts timm train.py's flag names; without --teacher it trains the student plainly. With `--student "FLAGS"`
repeated it trains several students on one data stream and one teacher pass per batch. This file only wires
library pieces together; the logic lives in `timm_kd` (see `timm_kd.engine` for the training step).
"""
import logging
import os
import sys

import torch
from timm.data import resolve_data_config
from timm.loss import create_classification_loss
from timm.models import create_model
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import load_task_ema_checkpoint, resume_task_checkpoint
from timm.utils import CheckpointSaver, distribute_bn, random_seed, setup_default_logging, update_summary

from timm_kd import DistillationTask, KDError, create_kd_student, create_teacher
from timm_kd.checkpoint import safe_globals
from timm_kd.cli import kd_loss_config, parse_args, student_args
from timm_kd.data import IndexedTargets, create_datasets, create_loaders, dataset_num_classes, mixup_args
from timm_kd.engine import StudentRun, train_one_epoch, validate
from timm_kd.runtime import amp_setup, init_device, output_dir, resolve_lr

_logger = logging.getLogger('train_kd')


def create_student(args, in_chans: int, device: torch.device) -> torch.nn.Module:
    student = create_model(
        args.model, pretrained=args.pretrained, in_chans=in_chans, num_classes=args.num_classes,
        drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block, global_pool=args.gp,
        checkpoint_path=args.initial_checkpoint or None, **args.model_kwargs)
    if args.grad_checkpointing:
        student.set_grad_checkpointing(True)
    student.to(device)
    if args.channels_last:
        student.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    return student


def setup_run(args, args_text: str, kd_student, loss_weights: dict, teacher, data_config, updates_per_epoch: int,
              device: torch.device, primary: bool):
    """One student's task, optimizer, schedule, EMA and checkpoint saver; returns (run, start epoch, epochs)."""
    criterion = create_classification_loss(
        loss_type='bce' if args.bce_loss else 'ce', smoothing=args.smoothing,
        soft_targets=mixup_args(args, args.num_classes) is not None, bce_target_thresh=args.bce_target_thresh,
        bce_sum=args.bce_sum, pos_weight=args.bce_pos_weight)
    task = DistillationTask(kd_student, criterion, teacher=teacher, kd_loss_weights=loss_weights,
                            ori_loss_weight=args.ori_loss_weight, aux_loss_weight=args.kd_deep_supervision_weight,
                            device=device, verbose=primary).to(device)

    resolve_lr(args)
    optimizer = create_optimizer_v2(kd_student, **optimizer_kwargs(cfg=args))
    _, loss_scaler = amp_setup(args, device)
    start_epoch = 0
    if args.resume:
        if not os.path.isfile(args.resume):
            raise KDError(f'--resume checkpoint not found: {args.resume!r}; pass OUTPUT/EXPERIMENT/last.pth.tar')
        start_epoch = resume_task_checkpoint(task, args.resume, optimizer=None if args.no_resume_opt else optimizer,
                                             loss_scaler=loss_scaler, log_info=primary) or 0
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup, device=device)
        if args.resume:
            load_task_ema_checkpoint(task, args.resume)
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        task.prepare_distributed(device_ids=[device.index] if device.type == 'cuda' else None)

    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args),
                                                   updates_per_epoch=updates_per_epoch)
    start_epoch = args.start_epoch if args.start_epoch is not None else start_epoch
    if lr_scheduler is not None and start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
    run = StudentRun(task, optimizer, lr_scheduler, loss_scaler, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                     args=args)
    if primary:
        run.out_dir = output_dir(args, data_config['input_size'])
        run.saver = CheckpointSaver(model=kd_student.student, optimizer=optimizer, args=args, amp_scaler=loss_scaler,
                                    checkpoint_dir=run.out_dir, recovery_dir=run.out_dir,
                                    decreasing=args.eval_metric == 'loss', max_history=args.checkpoint_hist, task=task)
        if args.resume:
            with safe_globals():
                run.saver.load_state_dict_from_checkpoint(args.resume)
        with open(os.path.join(run.out_dir, 'args.yaml'), 'w') as f:
            f.write(args_text)
        _logger.info(f'Output: {run.out_dir}; training epochs {start_epoch}..{num_epochs - 1}')
    return run, start_epoch, num_epochs


def main(argv=None):
    setup_default_logging()
    args, _ = parse_args(argv)
    device = init_device(args)
    primary = args.rank == 0
    random_seed(args.seed, args.rank)
    students = student_args(args)

    train_set, eval_set = create_datasets(args)
    args.num_classes = args.num_classes or dataset_num_classes(train_set)
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    models = []
    for sargs, _ in students:
        sargs.num_classes = args.num_classes
        models.append(create_student(sargs, in_chans, device))
        args.num_classes = models[-1].num_classes
    # one data stream: its preprocessing is resolved from the first student
    data_config = resolve_data_config(vars(args), model=models[0], verbose=primary)

    teacher = None
    if args.teacher:
        teacher = create_teacher(
            args.teacher, num_classes=args.num_classes, in_chans=in_chans, checkpoint=args.teacher_checkpoint,
            use_ema=not args.teacher_no_ema, student_mean=data_config['mean'], student_std=data_config['std'],
            student_input_size=data_config['input_size'], mean=args.teacher_mean, std=args.teacher_std,
            input_size=args.teacher_input_size, dtype=args.teacher_dtype,
            channels_last=args.channels_last or args.teacher_channels_last, inference_mode=args.teacher_inference_mode,
            device=device, allow_pickle=args.allow_unsafe_pickle, model_kwargs=args.teacher_kwargs)
    loss_configs = [kd_loss_config(sargs) if teacher is not None else ({}, {}) for sargs, _ in students]
    kd_students = []
    for (sargs, _), student, (loss_weights, loss_kwargs) in zip(students, models, loss_configs):
        kd_students.append(create_kd_student(
            student, teacher, list(loss_weights), loss_kwargs, input_size=data_config['input_size'],
            student_stages=sargs.kd_student_stages, teacher_stages=sargs.kd_teacher_stages,
            aux_stages=sargs.kd_deep_supervision, num_classes=args.num_classes, num_samples=len(train_set)))
    if teacher is not None and args.teacher_compile:  # after the shape probes above, so it compiles for training
        teacher.compile(backend=args.teacher_compile, mode=args.torchcompile_mode)
    needs_index = any(kd_student.needs_index for kd_student in kd_students)
    if needs_index:
        train_set = IndexedTargets(train_set)
    train_loader, eval_loader, mixup_fn = create_loaders(
        args, train_set, eval_set, data_config, args.num_classes, device)
    labels = train_set.targets.to(device) if needs_index else None
    updates_per_epoch = (len(train_loader) + args.grad_accum_steps - 1) // args.grad_accum_steps
    runs, start_epochs, num_epochs = [], set(), 0
    for (sargs, text), kd_student, (loss_weights, _) in zip(students, kd_students, loss_configs):
        run, start_epoch, num_epochs = setup_run(sargs, text, kd_student, loss_weights, teacher, data_config,
                                                 updates_per_epoch, device, primary)
        run.name = os.path.basename(sargs.experiment) if args.students else ''
        runs.append(run)
        start_epochs.add(start_epoch)
    if len(start_epochs) > 1:
        raise KDError(f'the students resume from different epochs {sorted(start_epochs)}; one data stream needs '
                      f'one epoch: resume every student from checkpoints of the same epoch')
    amp_autocast, _ = amp_setup(args, device)
    eval_kwargs = dict(device=device, amp_autocast=amp_autocast, channels_last=args.channels_last,
                       distributed=args.distributed, is_primary=primary)

    for epoch in range(start_epochs.pop(), num_epochs):
        if args.distributed and hasattr(train_loader.sampler, 'set_epoch'):
            train_loader.sampler.set_epoch(epoch)
        if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixer = train_loader if args.prefetcher else mixup_fn
            if mixer is not None:
                mixer.mixup_enabled = False
        train_metrics = train_one_epoch(
            epoch, runs, train_loader, device=device, num_epochs=num_epochs, teacher=teacher,
            amp_autocast=amp_autocast, mixup_fn=mixup_fn, grad_accum_steps=args.grad_accum_steps,
            channels_last=args.channels_last, distributed=args.distributed, log_interval=args.log_interval,
            is_primary=primary, labels=labels)
        for run, student, metrics in zip(runs, models, train_metrics):
            if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                distribute_bn(student, args.world_size, args.dist_bn == 'reduce')
            suffix = f' [{run.name}]' if run.name else ''
            eval_metrics = validate(run.task, eval_loader, log_suffix=suffix, **eval_kwargs)
            if run.task.has_ema():
                eval_metrics = validate(run.task, eval_loader, ema=True, log_suffix=suffix + ' (EMA)', **eval_kwargs)
            if run.lr_scheduler is not None:
                run.lr_scheduler.step(epoch + 1, eval_metrics[run.args.eval_metric])
            if primary:
                update_summary(epoch, metrics, eval_metrics, os.path.join(run.out_dir, 'summary.csv'),
                               lr=run.optimizer.param_groups[0]['lr'])
                run.best = run.saver.save_checkpoint(epoch, metric=eval_metrics[run.args.eval_metric])
    if primary:
        for run in runs:
            if run.best and run.best[0] is not None:
                _logger.info(f'*** Best {run.args.eval_metric}: {run.best[0]:.4f} (epoch {run.best[1]}) in '
                             f'{run.out_dir}')
    if args.distributed:
        torch.distributed.destroy_process_group()
    return runs[0].best if len(runs) == 1 else [run.best for run in runs]


if __name__ == '__main__':
    try:
        main()
    except KDError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
