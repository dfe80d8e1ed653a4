"""`fit(run)`: build a typed run and train it epoch by epoch, with timm train.py's epoch logic
(validation interval, summary.csv, best-checkpoint tracking, scheduler steps, mixup-off epoch,
recovery checkpoints, wandb)."""

import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, Dict, List

import torch
import yaml
from timm.utils import distribute_bn, random_seed

from ..cache import CachedTeacher, check_logit_losses_only
from ..cache.hub import open_cache
from ..data import dataset_class_names
from ..decoding import decoded_images
from ..engine import LoopSettings, check_finite, train_one_epoch, validate
from ..ensemble import create_teachers
from ..errors import Interrupted, KDError
from ..locks import FolderLock
from ..reliability import Preemption, append_summary, summary_row, truncate_summary, write_text
from ..replay import order_digest, stream_readers
from ..run import RunSpec, StudentSpec, run_record
from ..runtime import Process, amp_setup, init_process, over_ranks
from ..stream import TrainingStream
from ..student import create_kd_student
from ..unlabeled import check_unlabeled_run
from .build import DTYPES, Setup, setup_process, setup_run, training_stream
from .reporting import init_wandb, save_images, wandb_row
from .student_job import StreamPlace, StudentJob, check_same_start, setup_student, stream_shape

_logger = logging.getLogger('timm_kd.train')


@dataclass
class Training:
    """Everything the epochs need, built once by `build_training`."""

    run: RunSpec
    process: Process
    jobs: List[StudentJob]
    teacher: Any
    stream: TrainingStream
    eval_loader: Any
    settings: LoopSettings  # autocast, DDP, logging, scheduled batch sizes' loss scale
    eval_metric: str
    start_epoch: int
    skip_batches: int
    stop_epoch: int
    num_epochs: int
    recovery_stream: Dict[str, int]  # what a mid-epoch position is counted in (`stream_shape`)
    skipped: int = 0  # training files replaced because they could not be read, so far


def fit(run: RunSpec) -> List[Dict[str, Any]]:
    """Train `run` (from `timm_kd.parse_run(argv)`, or built in code) as `timm-kd-train` trains
    it: resumed where its students' `--resume` says, each student's folder written as the program
    writes it. Returns the rows of summary.csv, in the order they were written (with several
    students, each row names its student's experiment under 'student'), on every process.

    Bad input raises `timm_kd.KDError` with one line that names the problem and the fix.
    """
    if not run.students:
        raise KDError(
            'the run has no student; give RunSpec.students a StudentSpec (timm_kd.parse_run '
            'builds one from --model)'
        )
    setup_process(run.process)
    process = init_process(run.process.device)
    _logger.info(process.describe())
    random_seed(run.process.seed, process.rank)
    training = build_training(setup_run(run, process), process)
    locks = accept_run(training)
    rows: List[Dict[str, Any]] = []
    try:
        loop = training.run.loop
        wandb_run = (
            init_wandb(training.run, training.jobs[0])
            if loop.log_wandb and process.is_primary
            else None
        )
        with Preemption(process.distributed, process.device) as preemption:  # SIGTERM/SIGINT
            for epoch in range(training.start_epoch, training.stop_epoch):
                epoch_rows = train_epoch(training, epoch, preemption)
                rows.extend(epoch_rows)
                if wandb_run is not None and epoch_rows:
                    wandb_run.log(wandb_row(epoch_rows))
        if process.is_primary:
            _report(training)
        if wandb_run is not None:
            wandb_run.finish()
    finally:
        for lock in locks:
            lock.release()
    if process.distributed:
        torch.distributed.barrier()  # every rank ends together (a restarted group forms cleanly)
        torch.distributed.destroy_process_group()
    return rows


def accept_run(t: Training) -> List[FolderLock]:
    """The run is accepted: only now does it change its experiment folders. Each is locked for
    this run; what a killed run left half done is mended (temporary files dropped, an interrupted
    checkpoint save finished); then, if there is something to train, summary rows from the start
    epoch on (written after the checkpoint it resumes from, or by an earlier run) are dropped and
    args.yaml is written."""
    if not t.process.is_primary:
        return []
    locks: List[FolderLock] = []
    try:
        for job in t.jobs:
            locks.append(FolderLock(job.out_dir, 'run.lock', 'the experiment folder'))
            job.saver.remove_temporary_files()
            if job.resume:
                job.saver.finish_pending_save(job.resume)
            if t.start_epoch < t.stop_epoch:  # with nothing to train, the records stay as they are
                truncate_summary(os.path.join(job.out_dir, 'summary.csv'), t.start_epoch)
                if job.spec.args_yaml:
                    text = _args_yaml(job.spec, t.process.device.type, t.run.num_classes)
                    write_text(os.path.join(job.out_dir, 'args.yaml'), text)
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


def _args_yaml(spec: StudentSpec, device: str, num_classes: int) -> str:
    """A student's args.yaml (its flags as given, `StudentSpec.args_yaml`) with what the run
    derived where the flags left it unset, so that timm's train.py reads the file and trains what
    this run did: the device it used and the class count read from the data (timm would take
    1000)."""
    cfg = yaml.safe_load(spec.args_yaml)
    if cfg.get('device') is None:
        cfg['device'] = device
    if cfg.get('num_classes') is None and num_classes:
        cfg['num_classes'] = num_classes
    return yaml.safe_dump(cfg, default_flow_style=False)


def build_training(setup: Setup, process: Process) -> Training:
    """The teacher (live, ensemble or cached), each
    student's task and job, the stream, the start."""
    run, device = setup.run, process.device
    losses = [spec.losses for spec in run.students]
    class_names = dataset_class_names(setup.train_set)
    if run.teachers.cache:  # no teacher runs: its answers were stored by `timm_kd.cache build`
        check_logit_losses_only([name for spec in losses for name in spec.names])
        teacher = CachedTeacher(open_cache(run.teachers.cache), process.rank, device)
    else:
        with torch.random.fork_rng(devices=[]):  # the teacher's random init leaves training's alone
            teacher = create_teachers(
                run.teachers, run.num_classes, run.in_chans, run.student_data_config, device,
                class_names,
                reads_logits=any(spec.reads_teacher_logits() for spec in losses),
            )  # fmt: skip
    if run.data.unlabeled_data:
        check_unlabeled_run(teacher is not None, losses)
    kd_students = [
        create_kd_student(
            model,
            teacher,
            spec,
            input_size=run.student_data_config['input_size'],
            num_classes=run.num_classes,
            num_samples=len(setup.train_set),
        )  # fmt: skip
        for model, spec in zip(setup.models, losses)
    ]
    # after the shape probes: compiles for training
    if teacher is not None and run.teachers.compile:
        teacher.compile(backend=run.teachers.compile, mode=run.teachers.compile_mode)
    needs_index = any(spec.needs('needs_index') for spec in losses)
    stream, eval_loader, replayable = training_stream(setup, process, needs_index)
    scheduled, accum = run.views.train_img_sizes is not None, run.process.grad_accum_steps
    loader = stream.loader
    batch_reference = (
        loader.batch_sampler.average_batch_size if scheduled else float(run.views.batch_size)
    )
    updates_per_epoch = (len(loader) + accum - 1) // accum
    global_batch = batch_reference * process.world_size * accum
    eval_metric = run.loop.eval_metric if eval_loader is not None else 'loss'
    readers = stream_readers(setup.train_set, run.views.workers)
    recovery_stream = stream_shape(run, process.world_size, readers)
    place = StreamPlace(
        updates_per_epoch, global_batch, eval_metric == 'loss', recovery_stream, run.views.epochs
    )
    jobs = [
        setup_student(spec, run, kd_student, teacher, place, process)
        for spec, kd_student in zip(run.students, kd_students)
    ]
    for index, job in enumerate(jobs):
        job.run.name = job.spec.name
        if job.saver is not None:
            job.saver.label_names = class_names
            job.saver.run_record = run_record(run, index)
    (start_epoch, skip_batches), num_epochs = check_same_start(jobs), jobs[0].num_epochs
    stop = run.loop.stop_epoch
    stop_epoch = min(num_epochs, stop) if stop else num_epochs
    if run.teachers.cache:
        views = sorted({stream.view_epoch(e) for e in range(start_epoch, stop_epoch)})
        _check_cache(teacher, setup, replayable, views, process)
    if skip_batches and not replayable and process.is_primary:
        _logger.warning(
            f'Resuming mid-epoch on {run.data.dataset}, whose views timm draws (not replayed): the '
            f'epoch goes on after its first {skip_batches} batches of a new pass, so it is not the '
            'uninterrupted run to the bit; wds/ or map-style input resumes exactly'
        )
    if start_epoch >= stop_epoch:
        given = jobs[0].spec.schedule.start_epoch  # --start-epoch (a config's start_epoch) wins
        where = (
            f'--start-epoch {given} (start_epoch in a --config)'
            if given is not None
            else f'the checkpoint is at epoch {start_epoch}'
        )
        _logger.warning(
            f'Nothing to train: {where} and the run stops at {stop_epoch} (--epochs '
            f'{num_epochs}); raise --epochs to train on'
            + ('' if given is None else ', or lower or drop start_epoch')
        )
    amp_autocast, _ = amp_setup(run.process.amp, run.process.amp_dtype, device)
    out_dir, loop = jobs[0].out_dir, run.loop
    settings = LoopSettings(
        num_epochs=num_epochs, amp_autocast=amp_autocast, distributed=process.distributed,
        is_primary=process.is_primary, log_interval=loop.log_interval,
        on_log=(lambda i, x: save_images(out_dir, i, x))
        if loop.save_images and process.is_primary else None,
        batch_loss_scale=loop.variable_batch_loss_scale if scheduled else 'none',
        batch_size_reference=batch_reference, tta=loop.tta,
    )  # fmt: skip
    return Training(run, process, jobs, teacher, stream, eval_loader, settings, eval_metric,
                    start_epoch, skip_batches, stop_epoch, num_epochs, recovery_stream)  # fmt: skip


def _check_cache(teacher, setup: Setup, replayable: bool, epochs: List[int], process: Process):
    """One line for a run the cache cannot serve (views that do not replay, another run, view
    epochs it lacks); then each sample the loader reads is checked against the build's checksums."""
    cache, run = teacher.cache, setup.run
    if not replayable:
        raise KDError(
            f'--teacher-cache {run.teachers.cache!r} needs views that replay, and these are '
            "timm's own (--train-img-sizes, --use-multi-epochs-loader, or a streamed dataset "
            'other than wds/): drop them, or train with the live --teacher'
        )
    cache.check(run, setup.train_set, process.world_size, epochs, process.rank)
    expected, images = cache.sample_checksums(), decoded_images(setup.train_set)
    if expected is not None and images is not None:  # before the loader starts its workers
        images.verify(expected, f'--teacher-cache {run.teachers.cache!r}')


def train_epoch(t: Training, epoch: int, preemption: Preemption) -> List[Dict[str, Any]]:
    """One epoch: train every student on the stream, then validate, record and checkpoint each as
    timm does. Returns the summary rows it wrote (none between validation epochs)."""
    skip = t.skip_batches if epoch == t.start_epoch else 0
    views = t.stream.view_epoch(epoch)
    if views != epoch and t.process.is_primary:
        cycle = t.run.views.view_cycle
        _logger.info(f'Epoch {epoch} replays the views of epoch {views} (--view-cycle {cycle})')
    if isinstance(t.teacher, CachedTeacher):
        order = order_digest(t.stream.loader, views)
        t.teacher.start_epoch(views, skip * t.run.views.batch_size, order)
    train_metrics = train_one_epoch(
        epoch, [job.run for job in t.jobs], t.stream, teacher=t.teacher, settings=t.settings,
        after_update=lambda update: _after_update(t, epoch, update, preemption),
        skip_batches=skip,
    )  # fmt: skip
    _report_skipped(t, epoch)
    loop = t.run.loop
    validating = epoch + 1 == t.num_epochs or (
        epoch >= loop.val_start_epoch and (epoch + 1) % loop.val_interval == 0
    )
    rows: List[Dict[str, Any]] = []
    for job, metrics in zip(t.jobs, train_metrics):
        check_finite(metrics, epoch, len(t.stream) - 1, job.run)  # before anything is recorded
        _distribute_bn(t, job)
        if validating:
            rows.append(_end_of_epoch(t, job, epoch, metrics))
        elif job.run.lr_scheduler is not None:
            job.run.lr_scheduler.step(epoch + 1, metric=None)
    return rows


def _end_of_epoch(t: Training, job: StudentJob, epoch: int, metrics) -> Dict[str, Any]:
    """Validate (the EMA's result when there is one), then as timm: the summary row with the lr the
    epoch trained with, the checkpoint, the scheduler step. Returns the row (with the student's
    name when the run has several)."""
    run = job.run
    eval_metrics = None
    if t.eval_loader is not None:
        process = t.run.process
        kwargs = dict(
            device=t.process.device, settings=t.settings, channels_last=process.channels_last,
            input_dtype=DTYPES[process.model_dtype] if process.model_dtype else None,
            log_suffix=f' [{run.name}]' if run.name else '',
        )  # fmt: skip
        eval_metrics = validate(run.task, t.eval_loader, **kwargs)
        if run.task.has_ema() and not job.spec.ema.force_cpu:
            kwargs['log_suffix'] += ' (EMA)'
            eval_metrics = validate(run.task, t.eval_loader, ema=True, **kwargs)
    metric = (eval_metrics or metrics)[t.eval_metric]
    row = summary_row(epoch, metrics, eval_metrics, lr=run.mean_lr())
    if t.process.is_primary:
        append_summary(os.path.join(job.out_dir, 'summary.csv'), row)
        job.best = job.saver.save_checkpoint(epoch, metric=metric)
    if run.lr_scheduler is not None:
        run.lr_scheduler.step(epoch + 1, metric)
    return {**row, 'student': run.name} if run.name else row


def _report_skipped(t: Training, epoch: int) -> None:
    """The training files that could not be read this epoch (timm replaced each with the next
    sample): a warning with their count over all ranks, and one line past
    --max-skipped-fraction."""
    images = decoded_images(getattr(t.stream.loader, 'loader', t.stream.loader).dataset)
    if images is None:
        return
    new, t.skipped = images.skipped - t.skipped, images.skipped
    count = over_ranks(float(new), t.process)  # every rank takes part, so all decide alike
    if not count:
        return
    seen = len(t.stream) * t.run.views.batch_size * t.process.world_size
    line = (
        f'epoch {epoch}: {int(count)} of {seen} training files could not be read (named '
        'above) and were replaced by the next sample'
    )
    limit = t.run.loop.max_skipped_fraction
    if count > limit * seen:
        raise KDError(
            f'{line}: more than --max-skipped-fraction {limit:g}; repair or '
            'remove them (the log names each), or raise --max-skipped-fraction'
        )
    if t.process.is_primary:
        _logger.warning(line)


def _distribute_bn(t: Training, job: StudentJob) -> None:
    """timm's --dist-bn: BatchNorm statistics broadcast or averaged over ranks (the EMA's too)."""
    dist_bn = t.run.loop.dist_bn
    if (
        not t.process.distributed
        or dist_bn not in ('broadcast', 'reduce')
        or job.spec.create.sync_bn
    ):
        return
    task, reduce = job.run.task, dist_bn == 'reduce'
    distribute_bn(task.kd_student.student, t.process.world_size, reduce)
    if task.has_ema() and not job.spec.ema.force_cpu:
        distribute_bn(task.get_eval_model(ema=True), t.process.world_size, reduce)


def _after_update(t: Training, epoch: int, update: int, preemption: Preemption) -> None:
    """After each optimizer update: a recovery checkpoint every --recovery-interval updates, and on
    SIGTERM/SIGINT (the ranks agree at recovery and log intervals) one more, then stop."""
    loop, process = t.run.loop, t.process
    if loop.synchronize_step and process.device.type == 'cuda':
        torch.cuda.synchronize()
    recovery = bool(loop.recovery_interval) and (update + 1) % loop.recovery_interval == 0
    signum = preemption.requested(check_ranks=recovery or (update + 1) % loop.log_interval == 0)
    if recovery or signum:
        for job in t.jobs:
            sums, counts = job.run.sums_by_rank(process.distributed)  # every rank takes part
            if job.saver is not None:
                job.saver.extra_state = {
                    'recovery_update': update,
                    'recovery_stream': t.recovery_stream,
                    'partial_counts_by_rank': counts,
                    'partial_sums_by_rank': sums,
                }
                job.saver.save_recovery(epoch, batch_idx=update)
                job.saver.extra_state = None
    if signum:
        saver = t.jobs[0].saver
        where = (
            f'continue with --resume {saver.curr_recovery_file}'
            if saver is not None
            else f'rank {process.rank}; rank 0 wrote the recovery checkpoint'
        )
        raise Interrupted(
            f'stopped by {signal.Signals(signum).name} in epoch {epoch} after update {update}; '
            f'{where}',
            signum,
        )


def _report(t: Training) -> None:
    for job in t.jobs:
        if job.best[0] is not None:
            _logger.info(
                f'*** Best {t.eval_metric}: {job.best[0]:.4f} (epoch {job.best[1]}) '
                f'in {job.out_dir}'
            )
    if t.stop_epoch < t.num_epochs:
        last = os.path.join(t.jobs[0].out_dir, 'last.pth.tar')
        _logger.info(
            f'Stopped before epoch {t.stop_epoch} of {t.num_epochs} (--stop-epoch); continue with '
            f'--resume {last}'
        )
