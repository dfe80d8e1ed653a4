"""One training epoch of one or several students and
one evaluation pass: the loop of `timm_kd.train`."""

import logging
import math
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from timm.task import evaluation_sample_limit
from timm.utils import dispatch_clip_grad, reduce_tensor

from .errors import NonFiniteError
from .stream import Batch, TrainingStream, to_device
from .teacher import TeacherLike

_logger = logging.getLogger(__name__)


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


@dataclass
class StudentRun:
    """One student's training state: its task (student,
    KD losses, EMA), optimizer, schedule and clipping.

    `train_one_epoch` trains one or several of these on one data stream, with one teacher pass per
    batch.
    """

    task: Any
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any = None
    loss_scaler: Any = None
    clip_grad: Optional[float] = None
    clip_mode: str = 'norm'
    name: str = ''
    num_updates: int = 0
    # loss components summed over this epoch's samples
    sums: Dict[str, torch.Tensor] = field(default_factory=dict)
    count: Any = 0.0  # samples seen this epoch (a device tensor while training)
    partial: Optional[Dict[str, Any]] = (
        None  # sums and count up to a recovery checkpoint, restored after skipping
    )

    def global_sums(self, distributed: bool) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """This epoch's loss sums and sample count so far, summed over the DDP processes."""
        if not distributed:
            return self.sums, self.count
        return {k: reduce_tensor(v, 1) for k, v in sorted(self.sums.items())}, reduce_tensor(
            self.count, 1
        )

    def sums_by_rank(self, distributed: bool) -> Tuple[List[Dict[str, float]], List[float]]:
        """This epoch's loss sums and sample count so far of every DDP process, in rank order: what
        a mid-epoch recovery checkpoint keeps, so that each rank resumes with its own sums and the
        epoch's total is added up in the uninterrupted run's order (a total restored on one rank
        would be added in another order, and round otherwise in float32)."""
        keys = list(self.sums)  # in the order the step added them (the summary's columns)
        local = torch.stack([self.sums[k].float() for k in keys] + [self.count.float()])
        gathered = [local]
        if distributed:
            gathered = [torch.zeros_like(local) for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather(gathered, local)
        rows = [row.tolist() for row in gathered]
        return [dict(zip(keys, row[:-1])) for row in rows], [row[-1] for row in rows]

    def mean_lr(self) -> float:
        """The mean learning rate over the optimizer's
        parameter groups (what timm logs and writes)."""
        lrs = [group['lr'] for group in self.optimizer.param_groups]
        return sum(lrs) / len(lrs)

    def start_epoch(self, epoch: int, updates_per_epoch: int, device: torch.device) -> None:
        self.task.train()
        self.task.set_epoch(epoch)
        self.num_updates = epoch * updates_per_epoch
        self.sums, self.count = {}, torch.zeros((), device=device)
        self.optimizer.zero_grad()

    def resume_mid_epoch(self, updates_done: int, device: torch.device) -> None:
        """After a mid-epoch recovery checkpoint: the updates already made this epoch, the lr the
        uninterrupted run trains the next batch with, and the epoch's running sums so far."""
        self.num_updates += updates_done
        if self.lr_scheduler is not None:
            self.lr_scheduler.step_update(num_updates=self.num_updates)
        if self.partial:
            self.sums = {k: torch.tensor(v, device=device) for k, v in self.partial['sums'].items()}
            self.count = torch.tensor(self.partial['count'], device=device)
            self.partial = None

    def finish_update(self) -> None:
        """After an optimizer step: clear the gradients, count the update, EMA and lr per update."""
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        self.task.update_ema(step=self.num_updates)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step_update(num_updates=self.num_updates)

    def add_to_sums(self, result: Dict[str, torch.Tensor], teacher_out: Any, n: int) -> None:
        """Sample-weighted sums of the loss components, and the top-1 agreement with the teacher on
        the training views (in percent), on the device."""
        for key, value in result.items():
            if key.endswith('loss'):
                self.sums[key] = self.sums.get(key, 0.0) + value.detach().float() * n
        if teacher_out is not None:
            same = result['output'].detach().argmax(-1) == teacher_out.logits.argmax(-1)
            agree = same.sum() * 100.0
            self.sums['teacher_agreement'] = self.sums.get('teacher_agreement', 0.0) + agree
        self.count += n

    def backward_and_step(self, loss: torch.Tensor, need_update: bool) -> None:
        """Backward (AMP-scaled when a loss scaler is set), then clip and step on update batches, as
        timm's loop: AGC clipping leaves the classifier out, second-order optimizers get the graph
        of the gradients."""
        second_order = getattr(self.optimizer, 'is_second_order', False)
        params = None
        if self.clip_grad is not None:
            params = self.task.get_clip_parameters(exclude_head='agc' in self.clip_mode)
        if self.loss_scaler is not None:
            self.loss_scaler(
                loss,
                self.optimizer,
                clip_grad=self.clip_grad,
                clip_mode=self.clip_mode,
                parameters=params,
                create_graph=second_order,
                need_update=need_update,
            )
            return
        loss.backward(create_graph=second_order)
        if need_update:
            if self.clip_grad is not None:
                dispatch_clip_grad(params, value=self.clip_grad, mode=self.clip_mode)
            self.optimizer.step()


@dataclass(frozen=True)
class LoopSettings:
    """How the epochs run in this process, the same in every epoch: autocast, DDP, logging, and
    the loss scale of scheduled batch sizes (`batch_loss_scale` 'linear' or 'sqrt': each batch's
    loss scaled by its size over `batch_size_reference`)."""

    num_epochs: int = 1  # for the ETA
    amp_autocast: Callable = nullcontext
    distributed: bool = False
    is_primary: bool = True
    log_interval: int = 50
    on_log: Optional[Callable[[int, torch.Tensor], None]] = None  # (batch index, input) at a log
    batch_loss_scale: str = 'none'
    batch_size_reference: Optional[float] = None
    tta: int = 0  # timm's --tta: validation averages each run of this many consecutive outputs


def train_one_epoch(
    epoch: int,
    runs: Sequence[StudentRun],
    stream: TrainingStream,
    *,
    teacher: Optional[TeacherLike] = None,
    settings: LoopSettings = LoopSettings(),
    after_update: Optional[Callable[[int], None]] = None,
    skip_batches: int = 0,
) -> List[Dict[str, float]]:
    """Train every student of `runs` for one epoch of `stream`; returns, per run, the epoch mean of
    each loss component.

    Each batch goes once through the `teacher` (`forward_many`: the union of the stages every
    student asks for), then through each student's own step (`training_step`). As in timm's loop:
    the loss is divided by the number of batches in its accumulation window (the last window of an
    epoch may be shorter), and with `batch_loss_scale` 'linear' or 'sqrt' (scheduled batch sizes)
    each batch's loss is scaled by its size over `batch_size_reference` (`settings`).
    `after_update(update)` runs after every optimizer update (recovery checkpoints),
    `settings.on_log(batch_index, input)` at each log interval on the primary process.

    Loss components (and, with a teacher, the student's top-1 agreement with it on the training
    views, `teacher_agreement` in percent) are summed on the device and read back only at log
    intervals and at the end of the epoch, so the step itself has no host-device synchronisation;
    a NaN or infinite sum there stops training with a `NonFiniteError` naming the epoch, batch,
    component and lr. `skip_batches` (a resume from a mid-epoch recovery checkpoint): the epoch's
    first batches were trained before; the stream drops them, the runs restore their update count,
    lr and running sums, so the rest of the epoch is the uninterrupted run's.
    """
    batches = stream.epoch(epoch, skip_batches)  # the epoch's random streams start here
    num_batches, accum = len(stream), stream.grad_accum_steps
    for run in runs:
        run.start_epoch(epoch, (num_batches + accum - 1) // accum, stream.device)
        if skip_batches:
            run.resume_mid_epoch(skip_batches // accum, stream.device)
    start = time.time()
    for batch_idx, batch in batches:
        need_update = stream.is_update(batch_idx)
        scale = _loss_scale(batch_idx, len(batch), num_batches, accum, settings.batch_loss_scale,
                            settings.batch_size_reference)  # fmt: skip
        training_step(runs, teacher, batch, scale, need_update, settings.amp_autocast)
        if need_update and after_update is not None:
            after_update(batch_idx // accum)
        logs = batch_idx % settings.log_interval == 0 or batch_idx == num_batches - 1
        if settings.is_primary and logs:
            per_batch = (time.time() - start) / (batch_idx + 1 - skip_batches)
            _log_progress(runs, epoch, batch_idx, num_batches, settings.num_epochs, per_batch,
                          len(batch))  # fmt: skip
            if settings.on_log is not None:
                settings.on_log(batch_idx, batch.input)
    for run in runs:
        if hasattr(run.optimizer, 'sync_lookahead'):
            run.optimizer.sync_lookahead()
    return [
        OrderedDict((k, (v / total).item()) for k, v in sums.items())
        for sums, total in (run.global_sums(settings.distributed) for run in runs)
    ]


def training_step(
    runs: Sequence[StudentRun],
    teacher: Optional[TeacherLike],
    batch: Batch,
    scale: float,
    need_update: bool,
    amp_autocast: Callable = nullcontext,
) -> None:
    """One teacher pass, then each student's forward, backward and (on update batches) update."""
    teacher_outs = [None] * len(runs)
    if teacher is not None:  # at the teacher's own precision (`timm_kd.teacher.Teacher`)
        stages = [run.task.teacher_stages for run in runs]
        teacher_outs = teacher.forward_many(batch.input, stages)
    for run, teacher_out in zip(runs, teacher_outs):
        with nullcontext() if need_update else run.task.no_sync():
            with amp_autocast():
                result = run.task(batch.input, batch.target, index=batch.index,
                                  teacher_out=teacher_out, labeled=batch.labeled)  # fmt: skip
            loss = result['loss'] * scale if scale != 1.0 else result['loss']
            run.backward_and_step(loss, need_update)
        if need_update:
            run.finish_update()
        # agreement only with a teacher answering over the student's classes (not a headless one,
        # nor one of another label set teaching by its features)
        same_classes = teacher is not None and teacher.num_classes == result['output'].shape[-1]
        run.add_to_sums(result, teacher_out if same_classes else None, len(batch))


def _loss_scale(batch_idx, batch_size, num_batches, accum, batch_loss_scale, reference) -> float:
    """1 / the batches in this batch's accumulation window (the last may be shorter), times the
    batch's size over `reference` (linear or sqrt) with scheduled batch sizes."""
    last_window = num_batches % accum  # batches in a last, shorter window (0: none)
    in_last = last_window and batch_idx >= num_batches - last_window
    scale = 1.0 / (last_window if in_last else accum)
    if batch_loss_scale != 'none' and reference:
        scale *= (batch_size / reference) ** (0.5 if batch_loss_scale == 'sqrt' else 1.0)
    return scale


def _log_progress(runs, epoch, batch_idx, num_batches, num_epochs, per_batch, batch_size) -> None:
    """timm's progress line, then each run's running loss means (checked to be finite) and lr."""
    remaining = per_batch * ((num_batches - batch_idx - 1) + (num_epochs - epoch - 1) * num_batches)
    _logger.info(
        f'Train: {epoch} [{batch_idx + 1:>4d}/{num_batches}]  {batch_size / per_batch:.1f} img/s'
        f'  ETA {_format_eta(remaining)}'
    )
    for run in runs:
        means = {k: (v / run.count).item() for k, v in run.sums.items()}
        check_finite(means, epoch, batch_idx, run)
        losses = '  '.join(f'{k}: {v:.4f}' for k, v in means.items())
        _logger.info(f'  {run.name + "  " if run.name else ""}{losses}  lr: {run.mean_lr():.3e}')


def check_finite(losses: Dict[str, float], epoch: int, batch_idx: int, run: StudentRun) -> None:
    """Stop with one line when a loss component (a running mean) is NaN or infinite."""
    for key, value in losses.items():
        if not math.isfinite(value):
            raise NonFiniteError(
                f'{key} is {value} in epoch {epoch} by batch '
                f'{batch_idx}{" of student " + run.name if run.name else ""}'
                f' (lr {run.mean_lr():.3e}); training stopped and no checkpoint of it was written: '
                'resume from the '
                f'last good one with a lower --lr, --clip-grad, or a check of the loss settings'
            )


@torch.no_grad()
def validate(
    task,
    loader,
    *,
    device: torch.device,
    settings: LoopSettings = LoopSettings(),
    ema: bool = False,
    channels_last: bool = False,
    input_dtype: Optional[torch.dtype] = None,
    log_suffix: str = '',
) -> Dict[str, Any]:
    """Loss, top-1 and top-5 (percent) of the student (or its EMA) on `loader`, reduced over ranks
    (under the autocast, DDP and logging of `settings`).

    With `settings.tta` = r > 1, as timm's train.py: each run of r consecutive outputs of a batch is
    averaged and scored against the first of their targets (timm's reduction, meant for a loader
    that repeats each image r times; a batch's remainder of fewer than r images is dropped)."""
    model = task.get_eval_model(ema=ema)
    model.eval()
    r = settings.tta if settings.tta > 1 else 1
    limit = evaluation_sample_limit(loader)
    evaluator = task.create_evaluator(max_samples=None if limit is None else -(-limit // r))
    for input, target in loader:
        input, target = to_device(input, target, device, channels_last, input_dtype)
        with settings.amp_autocast():
            output = model(input)
        if r > 1:
            output = output.unfold(0, r, r).mean(dim=2)
            target = target[0 : len(output) * r : r]
        evaluator.update(output.float(), target)
    metrics = evaluator.compute(distributed=settings.distributed)
    if settings.is_primary:
        _logger.info(f'Eval{log_suffix}: ' + '  '.join(f'{k}: {v:.4f}' for k, v in metrics.items()))
    return metrics
