"""`main`: parse, build, and train epoch by epoch, with timm train.py's epoch logic (validation interval,
summary.csv, best-checkpoint tracking, scheduler steps, mixup-off epoch, recovery checkpoints, wandb)."""

import logging
import os
import signal
from typing import Any, Dict, List, Optional

import torch
import torchvision
from timm.utils import distribute_bn, random_seed, setup_default_logging, update_summary

from ...cache import CachedTeacher, TeacherCache, check_logit_losses_only
from ...data import (
    disable_mixup,
    set_loader_epoch,
)
from ...dataset_views import IndexedTargets
from ...engine import check_finite, train_one_epoch, validate
from ...ensemble import create_teachers
from ...errors import Interrupted, one_line_errors
from ...reliability import Preemption, reseed, truncate_summary
from ...runtime import amp_setup, init_process
from ...student import create_kd_student
from ...unlabeled import check_unlabeled_run
from .build import (
    StudentJob,
    check_same_start,
    model_dtype,
    replayable_loaders,
    setup_process_flags,
    setup_run,
    setup_student,
)
from .config import parse_args
from .kd_flags import loss_config
from .students import student_args

_logger = logging.getLogger('timm_kd.train')


def _init_wandb(args, jobs: List[StudentJob]):
    """A wandb run for this training (timm's --log-wandb); a warning, as in timm, when wandb is not installed."""
    try:
        import wandb
    except ImportError:
        _logger.warning(
            '--log-wandb: wandb is not installed, metrics are not logged to wandb; '
            'pip install "timm-kd[wandb]"'
        )
        return None
    return wandb.init(
        project=args.wandb_project,
        name=os.path.basename(jobs[0].out_dir),
        config=vars(args),
        tags=args.wandb_tags,
        resume='must' if args.wandb_resume_id else None,
        id=args.wandb_resume_id or None,
    )


def main(argv: Optional[List[str]] = None) -> Any:
    setup_default_logging()
    args, args_text = parse_args(argv)
    setup_process_flags(args)
    process = init_process(args.device)
    device, primary = process.device, process.is_primary
    random_seed(args.seed, process.rank)
    students = student_args(args, args_text)

    setup = setup_run(args, [sargs for sargs, _ in students], process)
    run, train_set, eval_set, models = setup.run, setup.train_set, setup.eval_set, setup.models
    num_classes, data_config = run.num_classes, run.student_data_config
    if run.teachers.cache:  # no teacher runs: its answers were stored by `timm_kd.cache build`
        cache = TeacherCache(run.teachers.cache)
        check_logit_losses_only([n for sargs, _ in students for n in sargs.kd_loss])
        teacher = CachedTeacher(cache, process.rank, device)
    else:
        with torch.random.fork_rng(devices=[]):  # the teacher's random init leaves training's alone
            teacher = create_teachers(
                run.teachers, num_classes, setup.in_chans, data_config, device
            )
    loss_configs = [
        loss_config(sargs) if teacher is not None else ({}, {}) for sargs, _ in students
    ]
    kd_students = [
        create_kd_student(
            student,
            teacher,
            list(weights),
            kwargs,
            input_size=data_config['input_size'],
            student_stages=sargs.kd_student_stages,
            teacher_stages=sargs.kd_teacher_stages,
            aux_stages=sargs.kd_deep_supervision,
            num_classes=num_classes,
            num_samples=len(train_set),
        )
        for (sargs, _), student, (weights, kwargs) in zip(students, models, loss_configs)
    ]
    if (
        teacher is not None and args.teacher_compile
    ):  # after the shape probes above, so it compiles for training
        teacher.compile(backend=args.teacher_compile, mode=args.torchcompile_mode)
    needs_index = any(kd_student.needs_index for kd_student in kd_students)
    if args.unlabeled_data:
        check_unlabeled_run(
            teacher is not None, [n for sargs, _ in students for n in sargs.kd_loss], needs_index
        )
    base_set = train_set
    if needs_index:
        train_set = IndexedTargets(train_set)
    labels = train_set.targets.to(device) if needs_index else None
    input_dtype = model_dtype(args)
    train_loader, eval_loader, mixup_fn, _ = replayable_loaders(
        args, train_set, eval_set, data_config, num_classes, process
    )
    scheduled = args.train_img_sizes is not None
    batch_reference = (
        train_loader.batch_sampler.average_batch_size if scheduled else float(args.batch_size)
    )
    updates_per_epoch = (len(train_loader) + args.grad_accum_steps - 1) // args.grad_accum_steps
    global_batch = batch_reference * process.world_size * args.grad_accum_steps
    eval_metric = args.eval_metric if eval_loader is not None else 'loss'
    jobs = [
        setup_student(
            sargs,
            text,
            kd_student,
            weights,
            teacher,
            data_config,
            updates_per_epoch,
            global_batch,
            process,
            decreasing=eval_metric == 'loss',
        )
        for (sargs, text), kd_student, (weights, _) in zip(students, kd_students, loss_configs)
    ]
    for job, (sargs, _) in zip(jobs, students):
        job.run.name = os.path.basename(sargs.experiment) if args.students else ''
    (start_epoch, skip_batches), num_epochs = check_same_start(jobs), jobs[0].num_epochs
    stop_epoch = min(num_epochs, args.stop_epoch) if args.stop_epoch else num_epochs
    if args.teacher_cache:
        cache.check(run, base_set, process.world_size, range(start_epoch, stop_epoch), process.rank)
    amp_autocast, _ = amp_setup(args.amp, args.amp_dtype, device)
    eval_kwargs = dict(
        device=device,
        amp_autocast=amp_autocast,
        channels_last=args.channels_last,
        input_dtype=input_dtype,
        distributed=process.distributed,
        is_primary=primary,
    )
    wandb_run = _init_wandb(args, jobs) if args.log_wandb and primary else None

    def after_update(update_idx: int) -> None:  # reads `epoch` of the loop below
        if args.synchronize_step and device.type == 'cuda':
            torch.cuda.synchronize()
        recovery = bool(args.recovery_interval) and (update_idx + 1) % args.recovery_interval == 0
        signum = preemption.requested(
            check_ranks=recovery or (update_idx + 1) % args.log_interval == 0
        )
        if recovery or signum:
            for job in jobs:
                sums, count = job.run.global_sums(process.distributed)  # every rank takes part
                if job.saver is not None:
                    job.saver.extra_state = {
                        'recovery_update': update_idx,
                        'partial_count': count.item(),
                        'partial_sums': {k: v.item() for k, v in sums.items()},
                    }
                    job.saver.save_recovery(epoch, batch_idx=update_idx)
                    job.saver.extra_state = None
        reseed(
            args.seed, epoch, process.rank, update_idx
        )  # the rest of the epoch no longer depends on the past
        if signum:
            where = (
                f'continue with --resume {jobs[0].saver.curr_recovery_file}'
                if jobs[0].saver is not None
                else f'rank {process.rank}; rank 0 wrote the recovery checkpoint'
            )
            raise Interrupted(
                f'stopped by {signal.Signals(signum).name} in epoch {epoch} after update '
                f'{update_idx}; '
                f'{where}',
                signum,
            )

    def save_images(batch_idx: int, input: torch.Tensor) -> None:
        torchvision.utils.save_image(
            input.float(),
            os.path.join(jobs[0].out_dir, f'train-batch-{batch_idx}.jpg'),
            padding=0,
            normalize=True,
        )

    if start_epoch >= stop_epoch:
        _logger.warning(
            f'Nothing to train: the checkpoint is at epoch {start_epoch} and the run stops at '
            f'{stop_epoch} (--epochs {num_epochs}); raise --epochs to train on'
        )
    if primary and (
        start_epoch or skip_batches
    ):  # a resume: rows from its epoch on were written after the checkpoint
        for job in jobs:
            truncate_summary(os.path.join(job.out_dir, 'summary.csv'), start_epoch)
    with Preemption(
        process.distributed, device
    ) as preemption:  # SIGTERM/SIGINT: recovery checkpoint, exit
        for epoch in range(start_epoch, stop_epoch):
            reseed(args.seed, epoch, process.rank)
            set_loader_epoch(train_loader, epoch)
            if args.teacher_cache:
                teacher.start_epoch(
                    epoch, skip_batches * args.batch_size if epoch == start_epoch else 0
                )
            if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
                disable_mixup(mixup_fn)
            train_metrics = train_one_epoch(
                epoch,
                [job.run for job in jobs],
                train_loader,
                device=device,
                num_epochs=num_epochs,
                teacher=teacher,
                amp_autocast=amp_autocast,
                mixup_fn=mixup_fn,
                grad_accum_steps=args.grad_accum_steps,
                channels_last=args.channels_last,
                input_dtype=input_dtype,
                distributed=process.distributed,
                log_interval=args.log_interval,
                is_primary=primary,
                labels=labels,
                batch_loss_scale=args.variable_batch_loss_scale if scheduled else 'none',
                batch_size_reference=batch_reference,
                after_update=after_update,
                on_log=save_images if args.save_images and primary else None,
                skip_batches=skip_batches if epoch == start_epoch else 0,
                unlabeled=bool(args.unlabeled_data),
                after_skip=lambda: reseed(
                    args.seed, epoch, process.rank, skip_batches // args.grad_accum_steps - 1
                ),
            )
            validating = (epoch + 1) % args.val_interval == 0 or epoch + 1 == num_epochs
            wandb_row: Dict[str, float] = {}
            for job, student, metrics in zip(jobs, models, train_metrics):
                run = job.run
                check_finite(
                    metrics, epoch, len(train_loader) - 1, run
                )  # before anything is recorded or saved
                if (
                    process.distributed
                    and args.dist_bn in ('broadcast', 'reduce')
                    and not args.sync_bn
                ):
                    distribute_bn(student, process.world_size, args.dist_bn == 'reduce')
                    if (
                        run.task.has_ema() and not args.model_ema_force_cpu
                    ):  # as timm: the EMA's statistics too
                        distribute_bn(
                            run.task.get_eval_model(ema=True),
                            process.world_size,
                            args.dist_bn == 'reduce',
                        )
                if not validating:
                    if run.lr_scheduler is not None:
                        run.lr_scheduler.step(epoch + 1, metric=None)
                    continue
                eval_metrics = None
                if eval_loader is not None:
                    suffix = f' [{run.name}]' if run.name else ''
                    eval_metrics = validate(run.task, eval_loader, log_suffix=suffix, **eval_kwargs)
                    if run.task.has_ema() and not args.model_ema_force_cpu:
                        eval_metrics = validate(
                            run.task,
                            eval_loader,
                            ema=True,
                            log_suffix=suffix + ' (EMA)',
                            **eval_kwargs,
                        )
                metric = (eval_metrics or metrics)[eval_metric]
                if primary:  # as timm: the lr the epoch trained with, then the checkpoint, then the scheduler step
                    update_summary(
                        epoch,
                        metrics,
                        eval_metrics,
                        os.path.join(job.out_dir, 'summary.csv'),
                        lr=run.mean_lr(),
                    )
                    wandb_row.update(
                        _wandb_row(run.name, epoch, metrics, eval_metrics, run.mean_lr())
                    )
                    job.best = job.saver.save_checkpoint(epoch, metric=metric)
                if run.lr_scheduler is not None:
                    run.lr_scheduler.step(epoch + 1, metric)
            if wandb_run is not None and wandb_row:
                wandb_run.log(wandb_row)
    if primary:
        for job in jobs:
            if job.best[0] is not None:
                _logger.info(
                    f'*** Best {eval_metric}: {job.best[0]:.4f} (epoch {job.best[1]}) in '
                    f'{job.out_dir}'
                )
        if stop_epoch < num_epochs:
            _logger.info(
                f'Stopped before epoch {stop_epoch} of {num_epochs} (--stop-epoch); continue with '
                '--resume '
                f'{os.path.join(jobs[0].out_dir, "last.pth.tar")}'
            )
    if wandb_run is not None:
        wandb_run.finish()
    if process.distributed:
        torch.distributed.destroy_process_group()
    return jobs[0].best if len(jobs) == 1 else [job.best for job in jobs]


def _wandb_row(
    name: str,
    epoch: int,
    train: Dict[str, float],
    evaluation: Optional[Dict[str, float]],
    lr: float,
) -> Dict[str, float]:
    """summary.csv's row for wandb; with several students each key gets the student's name as prefix."""
    row = {
        'epoch': epoch,
        **{f'train_{k}': v for k, v in train.items()},
        **{f'eval_{k}': v for k, v in (evaluation or {}).items()},
        'lr': lr,
    }
    return {f'{name}/{k}' if name else k: v for k, v in row.items()}


def cli(argv: Optional[List[str]] = None) -> None:
    """Console entry point (`timm-kd-train`, `python -m timm_kd.train`): bad input is one line and exit 2."""
    with one_line_errors():
        main(argv)
