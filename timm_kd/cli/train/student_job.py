"""One student of a training run: its task, optimizer, schedule, EMA and checkpoint saver, resumed
from its checkpoint when there is one. `build` makes what all students share; `loop` trains them."""

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from timm.loss import create_classification_loss
from timm.models import safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import load_task_ema_checkpoint, resume_task_checkpoint

from ...checkpoint import load_training_metadata, safe_globals
from ...data import mixup_args
from ...engine import StudentRun
from ...errors import KDError, flat
from ...run import RunSpec
from ...runtime import Process, amp_setup, experiment_name, output_dir, resolve_lr
from ...saver import DurableCheckpointSaver, resumable_checkpoint
from ...task import DistillationTask
from ...teacher import Teacher
from .build import check_checkpoint, loader_options

_logger = logging.getLogger(__name__)


@dataclass
class StudentJob:
    """What the training script keeps per student besides
    its training state: flags, output, saver, best."""

    args: argparse.Namespace
    run: StudentRun
    start_epoch: int
    num_epochs: int
    out_dir: str = ''
    saver: Optional[DurableCheckpointSaver] = None
    best: Tuple[Optional[float], Optional[int]] = (None, None)
    # resumed from a mid-epoch recovery checkpoint: batches of start_epoch already trained
    skip_batches: int = 0
    args_text: str = ''  # its args.yaml, written when the run is accepted
    resume: str = ''  # the checkpoint it resumed from


def resume_path(args: argparse.Namespace) -> str:
    """--resume as given, or for `--resume auto` the experiment's newest checkpoint,
    last.pth.tar or a mid-epoch recovery-*.pth.tar ('' when there is none)."""
    if args.resume != 'auto':
        return args.resume
    if not args.experiment:
        raise KDError('--resume auto needs --experiment NAME, the folder to resume from')
    folder = os.path.join(args.output or os.path.join('.', 'output', 'train'), args.experiment)
    return resumable_checkpoint(folder)


def stream_shape(run: RunSpec, world_size: int, readers: Optional[int]) -> Dict[str, int]:
    """What a mid-epoch position (a count of updates) is counted in; for a streamed input (`wds/`)
    also its `readers` (`timm_kd.replay.stream_readers`), which order the epoch too."""
    shape = {
        'batch_size': run.views.batch_size,
        'grad_accum_steps': run.process.grad_accum_steps,
        'world_size': world_size,
    }
    return shape if readers is None else {**shape, 'workers': readers}


def _shape(stream: Dict[str, int]) -> str:
    parts = [
        f'--batch-size {stream["batch_size"]}',
        f'--grad-accum-steps {stream["grad_accum_steps"]}',
        f'{stream["world_size"]} process(es)',
    ]
    if 'workers' in stream:
        parts.append(f'--workers {stream["workers"]} (streamed input)')
    return ', '.join(parts[:-1]) + ' and ' + parts[-1]


def resume_student(
    args: argparse.Namespace,
    resume: str,
    task,
    optimizer,
    loss_scaler,
    primary: bool,
    stream: Dict[str, int],
) -> Tuple[int, int, Optional[Dict[str, Any]]]:
    """Restore a student from `resume`; returns the epoch to start at, the batches of it already
    trained (a mid-epoch recovery checkpoint) and that epoch's running loss sums (None at an epoch
    boundary). `stream` is this run's `stream_shape`: a mid-epoch checkpoint must match it."""
    if not os.path.isfile(resume):
        raise KDError(
            f'--resume checkpoint not found: {resume!r}; pass OUTPUT/EXPERIMENT/last.pth.tar'
        )
    try:
        start_epoch = (
            resume_task_checkpoint(
                task,
                resume,
                optimizer=None if args.no_resume_opt else optimizer,
                loss_scaler=None if args.no_resume_opt else loss_scaler,
                log_info=primary,
            )
            or 0
        )
    except Exception as e:
        # a corrupt or unsafe file: its own line
        check_checkpoint('--resume', resume, args.allow_unsafe_pickle)
        # weights or KD parts of another model / loss set
        if isinstance(e, (RuntimeError, KeyError, ValueError)):
            raise KDError(
                f'--resume {resume!r} does not fit this run ({flat(e, 150)}); resume with the '
                f'--model, --kd-loss and stage flags it was trained with'
            ) from None
        raise
    metadata = load_training_metadata(resume)
    saver_state = metadata.get('saver') or {}
    if saver_state.get('recovery_update') is None:
        before = metadata.get('args', {}).get('workers')
        changed = before is not None and max(1, before) != stream.get('workers', max(1, before))
        if changed and primary:
            _logger.warning(
                f'--resume {resume!r} was trained with --workers {before}, this run has '
                f"{args.workers}: the workers deal a streamed input's records, so the epochs "
                'from here are ordered otherwise than in the uninterrupted run'
            )
        return start_epoch, 0, None
    written = saver_state.get('recovery_stream', stream)
    if written != stream:  # the position counts batches of the stream it was written in
        raise KDError(
            f'--resume {resume!r} was written mid-epoch by a run with {_shape(written)}, this run '
            f'has {_shape(stream)}; resume with the same, or from the last epoch boundary '
            f'(last.pth.tar) to change them'
        )
    # written mid-epoch: continue that epoch after its trained
    # batches; the sums are over all ranks, rank 0 has them
    sums = saver_state.get('partial_sums') or {}
    partial = {
        'sums': {k: v if primary else 0.0 for k, v in sums.items()},
        'count': saver_state.get('partial_count', 0.0) if primary else 0.0,
    }
    return start_epoch - 1, (saver_state['recovery_update'] + 1) * args.grad_accum_steps, partial


def setup_student(  # noqa: PLR0913
    args: argparse.Namespace,
    args_text: str,
    kd_student,
    loss_weights: Dict[str, float],
    teacher: Optional[Teacher],
    data_config: Dict[str, Any],
    updates_per_epoch: int,
    global_batch: float,
    process: Process,
    decreasing: bool,
    stream: Dict[str, int],
) -> StudentJob:
    """One student's task, optimizer, schedule, EMA and (on the primary process) checkpoint
    saver; `stream` is the run's `stream_shape`, what a mid-epoch resume must match."""
    device, primary = process.device, process.is_primary
    criterion = create_classification_loss(
        loss_type='bce' if args.bce_loss else 'ce',
        smoothing=args.smoothing,
        soft_targets=mixup_args(loader_options(args), 0) is not None,
        bce_target_thresh=args.bce_target_thresh,
        bce_sum=args.bce_sum,
        pos_weight=args.bce_pos_weight,
    )
    task = DistillationTask(
        kd_student,
        criterion,
        teacher=teacher,
        kd_loss_weights=loss_weights,
        ori_loss_weight=args.ori_loss_weight,
        aux_loss_weight=args.kd_deep_supervision_weight,
        device=device,
        verbose=primary,
    ).to(device)

    lr = resolve_lr(
        args.lr, args.lr_base, args.lr_base_size, global_batch, args.opt, args.lr_base_scale
    )
    opt_kwargs = {**optimizer_kwargs(cfg=args), 'lr': lr}  # the flags stay as given
    optimizer = create_optimizer_v2(kd_student, **opt_kwargs, **args.opt_kwargs)
    _, loss_scaler = amp_setup(args.amp, args.amp_dtype, device)
    if primary:  # the start-up lines timm's train.py prints
        params = sum(p.numel() for p in kd_student.student.parameters())
        _logger.info(f'Model {safe_model_name(args.model)} created, param count:{params}')
        _logger.info(
            f'Created {type(optimizer).__name__} ({args.opt}) optimizer: lr {lr:.3e}, weight decay '
            f'{args.weight_decay}'
        )
        _logger.info(
            f'Using native Torch AMP ({args.amp_dtype}). Training in mixed precision.'
            if args.amp
            else f'AMP not enabled. Training in {args.model_dtype or "float32"}.'
        )
    resume = resume_path(args)
    start_epoch, skip_batches, partial = (
        resume_student(args, resume, task, optimizer, loss_scaler, primary, stream)
        if resume
        else (0, 0, None)
    )
    if args.model_ema:
        task.setup_ema(
            decay=args.model_ema_decay,
            use_warmup=args.model_ema_warmup,
            device='cpu' if args.model_ema_force_cpu else None,
        )
        if resume:
            load_task_ema_checkpoint(task, resume)
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
    if process.distributed:
        task.prepare_distributed(
            device_ids=[device.index] if device.type == 'cuda' else None,
            broadcast_buffers=not args.no_ddp_bb,
        )

    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer,
        **scheduler_kwargs(args, decreasing_metric=decreasing),
        updates_per_epoch=updates_per_epoch,
    )
    if primary and lr_scheduler is not None:
        per = 'epoch' if lr_scheduler.t_in_epochs else 'update'
        _logger.info(f'Scheduled epochs: {num_epochs}. LR stepped per {per}.')
    start_epoch = args.start_epoch if args.start_epoch is not None else start_epoch
    if lr_scheduler is not None and start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
    run = StudentRun(
        task,
        optimizer,
        lr_scheduler,
        loss_scaler,
        clip_grad=args.clip_grad,
        clip_mode=args.clip_mode,
        partial=partial,
    )
    job = StudentJob(args, run, start_epoch, num_epochs, skip_batches=skip_batches)
    job.args_text, job.resume = args_text, resume
    if primary:
        job.out_dir = output_dir(
            args.output, experiment_name(args.experiment, args.model, data_config['input_size'])
        )
        job.saver = DurableCheckpointSaver(
            model=kd_student.student,
            optimizer=optimizer,
            args=args,
            amp_scaler=loss_scaler,
            checkpoint_dir=job.out_dir,
            recovery_dir=job.out_dir,
            decreasing=decreasing,
            max_history=args.checkpoint_hist,
            task=task,
        )
        if resume:
            with safe_globals():
                job.saver.load_state_dict_from_checkpoint(resume)
        _logger.info(f'Output: {job.out_dir}; training epochs {start_epoch}..{num_epochs - 1}')
    return job


def check_same_start(jobs: List[StudentJob]) -> Tuple[int, int]:
    """The (epoch, batches already trained in it) every
    student resumes at; they share one data stream."""
    starts = sorted({(job.start_epoch, job.skip_batches) for job in jobs})
    if len(starts) > 1:
        raise KDError(
            f'the students resume from different points {starts} (epoch, batch); one data stream '
            f'needs one start: resume every student from checkpoints of the same epoch'
        )
    return starts[0]
