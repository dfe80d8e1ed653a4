"""One student of a training run: its task, optimizer, schedule, EMA and checkpoint saver, resumed
from its checkpoint when there is one, all built from its typed `StudentSpec`. `build` makes what
all students share; `loop` trains them."""

import argparse
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from timm.loss import JsdCrossEntropy, create_classification_loss
from timm.models import safe_model_name
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import load_task_ema_checkpoint, resume_task_checkpoint

from ..checkpoint import load_state_dict, load_training_metadata, safe_globals
from ..engine import StudentRun
from ..errors import KDError, flat
from ..run import OutputSpec, RunSpec, StudentSpec
from ..runtime import Process, amp_setup, experiment_name, output_dir, resolve_lr
from ..saver import DurableCheckpointSaver, resume_candidates
from ..task import DistillationTask
from ..teacher import Teacher
from .student_model import check_checkpoint

_logger = logging.getLogger(__name__)


@dataclass
class StudentJob:
    """What training keeps per student besides its training state: its typed settings, output,
    saver, best."""

    spec: StudentSpec
    run: StudentRun
    start_epoch: int
    num_epochs: int
    out_dir: str = ''
    saver: Optional[DurableCheckpointSaver] = None
    best: Tuple[Optional[float], Optional[int]] = (None, None)
    # resumed from a mid-epoch recovery checkpoint: batches of start_epoch already trained
    skip_batches: int = 0
    resume: str = ''  # the checkpoint it resumed from


@dataclass(frozen=True)
class StreamPlace:
    """What every student takes from the shared stream: its updates per epoch and global batch
    (the lr rule, the schedule), whether the tracked metric decreases, the `stream_shape` a
    mid-epoch resume must match, and its epochs (a schedule that names none runs them)."""

    updates_per_epoch: int
    global_batch: float
    decreasing: bool
    shape: Dict[str, int]
    epochs: int


def resume_path(out: OutputSpec, allow_pickle: bool = False) -> str:
    """--resume as given, or for `--resume auto` the experiment's newest checkpoint that loads
    (last.pth.tar, a mid-epoch recovery-*.pth.tar, a numbered one), with a line naming each newer
    one passed over and why; '' when the folder has none, one line when none of them loads."""
    if out.resume != 'auto':
        return out.resume
    if not out.experiment:
        raise KDError('--resume auto needs --experiment NAME, the folder to resume from')
    folder = os.path.join(out.output or os.path.join('.', 'output', 'train'), out.experiment)
    groups = resume_candidates(folder)
    for names in groups:
        try:
            load_state_dict(names[0], allow_pickle=allow_pickle)
        except KDError as e:
            _logger.warning(f'--resume auto passes over {" = ".join(names)}: {e}')
            continue
        return names[0]
    if groups:
        raise KDError(
            f'--resume auto: no checkpoint in {folder!r} loads ({len(groups)} damaged, named '
            'above); restore one, or start another --experiment'
        )
    return ''


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
    run: RunSpec,
    out: OutputSpec,
    resume: str,
    task,
    optimizer,
    loss_scaler,
    rank: int,
    stream: Dict[str, int],
) -> Tuple[int, int, Optional[Dict[str, Any]]]:
    """Restore a student from `resume`; returns the epoch to start at, the batches of it already
    trained (a mid-epoch recovery checkpoint) and that epoch's running loss sums (None at an epoch
    boundary). `stream` is this run's `stream_shape`: a mid-epoch checkpoint must match it."""
    primary = rank == 0
    if not os.path.isfile(resume):
        raise KDError(
            f'--resume checkpoint not found: {resume!r}; pass OUTPUT/EXPERIMENT/last.pth.tar'
        )
    try:
        start_epoch = (
            resume_task_checkpoint(
                task,
                resume,
                optimizer=None if out.no_resume_opt else optimizer,
                loss_scaler=None if out.no_resume_opt else loss_scaler,
                log_info=primary,
            )
            or 0
        )
    except Exception as e:
        # a corrupt or unsafe file: its own line
        check_checkpoint('--resume', resume, run.process.allow_pickle)
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
                f"{run.views.workers}: the workers deal a streamed input's records, so the epochs "
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
    # written mid-epoch: continue that epoch after its trained batches, each rank from its own
    # running sums (the world size is part of the stream shape checked above)
    partial = _partial_sums(saver_state, rank)
    return (
        start_epoch - 1,
        (saver_state['recovery_update'] + 1) * run.process.grad_accum_steps,
        partial,
    )


def _partial_sums(saver_state: Dict[str, Any], rank: int) -> Dict[str, Any]:
    """This rank's running sums and count of the epoch a recovery checkpoint was written in (one
    of an earlier version holds the total over ranks: rank 0 takes it)."""
    if 'partial_sums_by_rank' in saver_state:
        return {
            'sums': saver_state['partial_sums_by_rank'][rank],
            'count': saver_state['partial_counts_by_rank'][rank],
        }
    sums = saver_state.get('partial_sums') or {}
    return {
        'sums': {k: v if rank == 0 else 0.0 for k, v in sums.items()},
        'count': saver_state.get('partial_count', 0.0) if rank == 0 else 0.0,
    }


def setup_student(
    spec: StudentSpec,
    run: RunSpec,
    kd_student,
    teacher: Optional[Teacher],
    place: StreamPlace,
    process: Process,
) -> StudentJob:
    """One student's task, optimizer, schedule, EMA and (on the primary process) checkpoint saver,
    from its `spec`."""
    device, primary = process.device, process.is_primary
    task = _task(spec, run.views.aug_splits, kd_student, teacher, device, primary)
    opt = spec.optimizer
    lr = resolve_lr(
        opt.lr, opt.lr_base, opt.lr_base_size, place.global_batch, opt.opt, opt.lr_base_scale
    )
    optimizer = create_optimizer_v2(kd_student, **{**dict(opt.kwargs), 'lr': lr})
    _, loss_scaler = amp_setup(run.process.amp, run.process.amp_dtype, device)
    if primary:  # the start-up lines timm's train.py prints
        _log_start(spec, run, kd_student, optimizer, lr)
    resume = resume_path(spec.output, run.process.allow_pickle)
    start_epoch, skip_batches, partial = (
        resume_student(
            run, spec.output, resume, task, optimizer, loss_scaler, process.rank, place.shape
        )  # fmt: skip
        if resume
        else (0, 0, None)
    )
    if spec.ema.enabled:
        task.setup_ema(
            decay=spec.ema.decay,
            use_warmup=spec.ema.warmup,
            device='cpu' if spec.ema.force_cpu else None,
        )
        if resume:
            load_task_ema_checkpoint(task, resume)
    if spec.compile:
        task.compile(backend=spec.compile, mode=spec.compile_mode)
    if process.distributed:
        task.prepare_distributed(
            device_ids=[device.index] if device.type == 'cuda' else None,
            broadcast_buffers=spec.ddp_broadcast_buffers,
        )
    start_epoch = start_epoch if spec.schedule.start_epoch is None else spec.schedule.start_epoch
    lr_scheduler, num_epochs = _schedule(spec, optimizer, place, start_epoch, primary)
    student_run = StudentRun(
        task,
        optimizer,
        lr_scheduler,
        loss_scaler,
        clip_grad=opt.clip_grad,
        clip_mode=opt.clip_mode,
        partial=partial,
    )
    job = StudentJob(spec, student_run, start_epoch, num_epochs, skip_batches=skip_batches)
    job.resume = resume
    if primary:
        job.out_dir = output_dir(
            spec.output.output,
            experiment_name(
                spec.output.experiment, spec.model, run.student_data_config['input_size']
            ),
        )
        job.saver = _saver(job, kd_student, optimizer, loss_scaler, task, place.decreasing)
        _logger.info(f'Output: {job.out_dir}; training epochs {start_epoch}..{num_epochs - 1}')
    return job


def _task(
    spec: StudentSpec, splits: int, kd_student, teacher, device, primary: bool
) -> DistillationTask:
    """The student's distillation task with timm's hard-label loss (JSD over the run's `splits`
    AugMix views with --jsd-loss)."""
    c, losses = spec.criterion, spec.losses
    if c.jsd and splits < 2:
        raise KDError('--jsd-loss compares the AugMix splits of each image: add --aug-splits 2 '
                      '(or more), or drop --jsd-loss')  # fmt: skip
    criterion = (
        JsdCrossEntropy(num_splits=splits, smoothing=c.smoothing)
        if c.jsd
        else create_classification_loss(
            loss_type='bce' if c.bce else 'ce',
            smoothing=c.smoothing,
            soft_targets=c.soft_targets,
            bce_target_thresh=c.bce_target_thresh,
            bce_sum=c.bce_sum,
            pos_weight=c.bce_pos_weight,
        )
    )
    return DistillationTask(
        kd_student,
        criterion,
        teacher=teacher,
        kd_loss_weights=losses.weights_dict(teacher is not None),
        ori_loss_weight=losses.ori_weight,
        aux_loss_weight=losses.deep_supervision_weight,
        device=device,
        verbose=primary,
    ).to(device)


def _log_start(spec: StudentSpec, run: RunSpec, kd_student, optimizer, lr: float) -> None:
    params = sum(p.numel() for p in kd_student.student.parameters())
    _logger.info(f'Model {safe_model_name(spec.model)} created, param count:{params}')
    _logger.info(
        f'Created {type(optimizer).__name__} ({spec.optimizer.opt}) optimizer: lr {lr:.3e}, '
        f'weight decay {dict(spec.optimizer.kwargs).get("weight_decay")}'
    )
    _logger.info(
        f'Using native Torch AMP ({run.process.amp_dtype}). Training in mixed precision.'
        if run.process.amp
        else f'AMP not enabled. Training in {run.process.model_dtype or "float32"}.'
    )


def _schedule(spec: StudentSpec, optimizer, place: StreamPlace, start_epoch: int, primary: bool):
    """timm's scheduler of the student's schedule (plateau mode following the tracked metric),
    stepped to `start_epoch`; returns it and the epoch count."""
    kwargs = {
        'num_epochs': place.epochs,
        **dict(spec.schedule.kwargs),
        'plateau_mode': 'min' if place.decreasing else 'max',
    }
    if kwargs['num_epochs'] != place.epochs:
        raise KDError(
            f'the schedule of student {spec.model!r} runs {kwargs["num_epochs"]} epochs but the '
            f'stream has {place.epochs} (LoaderOptions.epochs); give both the same count, as '
            '--epochs does'
        )
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **kwargs, updates_per_epoch=place.updates_per_epoch
    )
    if primary and lr_scheduler is not None:
        per = 'epoch' if lr_scheduler.t_in_epochs else 'update'
        _logger.info(f'Scheduled epochs: {num_epochs}. LR stepped per {per}.')
    if lr_scheduler is not None and start_epoch > 0:
        if not kwargs['step_on_epochs']:
            lr_scheduler.step_update(start_epoch * place.updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
    return lr_scheduler, num_epochs


def _saver(job: StudentJob, kd_student, optimizer, loss_scaler, task, decreasing: bool):
    """The student's checkpoint saver, restored from the checkpoint it resumes."""
    flags = json.loads(job.spec.flags) if job.spec.flags else None
    saver = DurableCheckpointSaver(
        model=kd_student.student,
        optimizer=optimizer,
        args=argparse.Namespace(**flags) if flags else None,  # as timm's checkpoints hold them
        amp_scaler=loss_scaler,
        checkpoint_dir=job.out_dir,
        recovery_dir=job.out_dir,
        decreasing=decreasing,
        max_history=job.spec.output.checkpoint_hist,
        task=task,
    )
    if job.resume:
        with safe_globals():
            saver.load_state_dict_from_checkpoint(job.resume)
    return saver


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
