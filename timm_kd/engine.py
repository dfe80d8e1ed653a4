"""One training epoch of one or several students and one evaluation pass: the loop of `timm_kd.train`."""

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
from .unlabeled import labeled_mask

_logger = logging.getLogger(__name__)


def to_device(input, target, device, channels_last, dtype=None):
    input, target = (
        input.to(device, dtype=dtype, non_blocking=True),
        target.to(device, non_blocking=True),
    )
    if channels_last:
        input = input.contiguous(memory_format=torch.channels_last)
    return input, target


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


@dataclass
class StudentRun:
    """One student's training state: its task (student, KD losses, EMA), optimizer, schedule and clipping.

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
    sums: Dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # loss components summed over this epoch's samples
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

    def mean_lr(self) -> float:
        """The mean learning rate over the optimizer's parameter groups (what timm logs and writes)."""
        lrs = [group['lr'] for group in self.optimizer.param_groups]
        return sum(lrs) / len(lrs)

    def backward_and_step(self, loss: torch.Tensor, need_update: bool) -> None:
        """Backward (AMP-scaled when a loss scaler is set), then clip and step on update batches, as timm's loop:
        AGC clipping leaves the classifier out, second-order optimizers get the graph of the gradients."""
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


def train_one_epoch(
    epoch: int,
    runs: Sequence[StudentRun],
    loader,
    *,
    device: torch.device,
    num_epochs: int,
    teacher=None,
    amp_autocast: Callable = nullcontext,
    mixup_fn: Optional[Callable] = None,
    grad_accum_steps: int = 1,
    channels_last: bool = False,
    input_dtype: Optional[torch.dtype] = None,
    distributed: bool = False,
    log_interval: int = 50,
    is_primary: bool = True,
    labels: Optional[torch.Tensor] = None,
    batch_loss_scale: str = 'none',
    batch_size_reference: Optional[float] = None,
    after_update: Optional[Callable[[int], None]] = None,
    on_log: Optional[Callable[[int, torch.Tensor], None]] = None,
    skip_batches: int = 0,
    after_skip: Optional[Callable[[], None]] = None,
    unlabeled: bool = False,
) -> List[Dict[str, float]]:
    """Train every student of `runs` for one epoch; returns, per run, the epoch mean of each loss component.

    Each batch goes once through the `teacher` (`Teacher.forward_many`: the union of the stages
    every student asks for), then through each student's own step. With `labels` (a device tensor of
    every sample's class) the loader yields sample indices as targets
    (`timm_kd.data.IndexedTargets`, for CRD): they are passed to the tasks as `index` and mapped to
    labels.

    As in timm's loop: the loss is divided by the number of batches in its accumulation window (the
    last window of an epoch may be shorter), and with `batch_loss_scale` 'linear' or 'sqrt'
    (scheduled batch sizes) each batch's loss is scaled by its size over `batch_size_reference`.
    `after_update(update_index)` runs after every optimizer update (recovery checkpoints),
    `on_log(batch_index, input)` at each log interval on the primary process.

    Loss components (and, with a teacher, the student's top-1 agreement with it on the training
    views, `teacher_agreement` in percent) are summed on the device and read back only at log
    intervals and at the end of the epoch, so the step itself has no host-device synchronisation; a
    NaN or infinite sum there stops training with a `NonFiniteError` naming the epoch, batch,
    component and lr. `skip_batches` (a resume from a mid-epoch recovery checkpoint) draws the
    epoch's first batches from the loader without training on them, so the rest of the epoch sees
    the same data as the uninterrupted run; then `after_skip()` runs. With `unlabeled`, targets of
    -1 mark unlabeled images (`timm_kd.unlabeled`): they get the KD terms only.
    """
    num_batches = len(loader)
    last_window = (
        num_batches % grad_accum_steps
    )  # batches in a last, shorter accumulation window (0: none)
    for run in runs:
        run.task.train()
        run.task.set_epoch(epoch)
        run.num_updates = epoch * ((num_batches + grad_accum_steps - 1) // grad_accum_steps)
        run.sums, run.count = {}, torch.zeros((), device=device)
        run.optimizer.zero_grad()
    start = time.time()
    for batch_idx, (input, target) in enumerate(loader):
        if batch_idx < skip_batches:
            if batch_idx == skip_batches - 1:
                for run in runs:
                    run.num_updates += skip_batches // grad_accum_steps
                    if (
                        run.lr_scheduler is not None
                    ):  # the lr the uninterrupted run trains the next batch with
                        run.lr_scheduler.step_update(num_updates=run.num_updates)
                    if run.partial:  # the running sums of the interrupted epoch, so its row is the uninterrupted one
                        run.sums = {
                            k: torch.tensor(v, device=device)
                            for k, v in run.partial['sums'].items()
                        }
                        run.count, run.partial = (
                            torch.tensor(run.partial['count'], device=device),
                            None,
                        )
                if after_skip is not None:
                    after_skip()
            continue
        input, target = to_device(input, target, device, channels_last, input_dtype)
        index = None
        if labels is not None:
            index, target = target, labels[target]
        labeled = None
        if unlabeled:
            labeled, target = target >= 0, target.clamp(min=0)
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)
        if labeled is not None:
            labeled = labeled_mask(labeled, mixed=mixup_fn is not None and mixup_fn.mixup_enabled)
        last_batch = batch_idx == num_batches - 1
        need_update = last_batch or (batch_idx + 1) % grad_accum_steps == 0
        window = (
            last_window
            if last_window and batch_idx >= num_batches - last_window
            else grad_accum_steps
        )
        scale = 1.0 / window
        if batch_loss_scale != 'none' and batch_size_reference:
            scale *= (input.shape[0] / batch_size_reference) ** (
                0.5 if batch_loss_scale == 'sqrt' else 1.0
            )

        # --- the training step: one teacher pass, then each student's forward, backward and update ---
        teacher_outs = [None] * len(runs)
        if teacher is not None:
            with amp_autocast():
                teacher_outs = teacher.forward_many(
                    input, [run.task.teacher_stages for run in runs]
                )
        for run, teacher_out in zip(runs, teacher_outs):
            with nullcontext() if need_update else run.task.no_sync():
                with amp_autocast():
                    result = run.task(
                        input, target, index=index, teacher_out=teacher_out, labeled=labeled
                    )
                run.backward_and_step(
                    result['loss'] * scale if scale != 1.0 else result['loss'], need_update
                )
            if need_update:
                run.optimizer.zero_grad(set_to_none=True)
                run.num_updates += 1
                run.task.update_ema(step=run.num_updates)
                if run.lr_scheduler is not None:
                    run.lr_scheduler.step_update(num_updates=run.num_updates)
            for key, value in result.items():
                if key.endswith('loss'):
                    run.sums[key] = run.sums.get(key, 0.0) + value.detach().float() * input.shape[0]
            if (
                teacher_out is not None
            ):  # top-1 agreement with the teacher on the training views, in percent
                agree = (
                    result['output'].detach().argmax(-1) == teacher_out.logits.argmax(-1)
                ).sum() * 100.0
                run.sums['teacher_agreement'] = run.sums.get('teacher_agreement', 0.0) + agree
            run.count += input.shape[0]
        if need_update and after_update is not None:
            after_update(batch_idx // grad_accum_steps)
        # --- end of step ---

        if is_primary and (batch_idx % log_interval == 0 or last_batch):
            elapsed = time.time() - start
            per_batch = elapsed / (batch_idx + 1 - skip_batches)
            remaining = per_batch * (
                (num_batches - batch_idx - 1) + (num_epochs - epoch - 1) * num_batches
            )
            _logger.info(
                f'Train: {epoch} [{batch_idx + 1:>4d}/{num_batches}]  '
                f'{input.shape[0] / per_batch:.1f} img/s'
                f'  ETA {_format_eta(remaining)}'
            )
            for run in runs:
                means = {k: (v / run.count).item() for k, v in run.sums.items()}
                check_finite(means, epoch, batch_idx, run)
                losses = '  '.join(f'{k}: {v:.4f}' for k, v in means.items())
                _logger.info(
                    f'  {run.name + "  " if run.name else ""}{losses}  lr: {run.mean_lr():.3e}'
                )
            if on_log is not None:
                on_log(batch_idx, input)
    for run in runs:
        if hasattr(run.optimizer, 'sync_lookahead'):
            run.optimizer.sync_lookahead()
    return [
        OrderedDict((k, (v / total).item()) for k, v in sums.items())
        for sums, total in (run.global_sums(distributed) for run in runs)
    ]


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
    ema: bool = False,
    amp_autocast: Callable = nullcontext,
    channels_last: bool = False,
    input_dtype: Optional[torch.dtype] = None,
    distributed: bool = False,
    log_suffix: str = '',
    is_primary: bool = True,
) -> Dict[str, Any]:
    """Loss, top-1 and top-5 (percent) of the student (or its EMA) on `loader`, reduced over ranks."""
    model = task.get_eval_model(ema=ema)
    model.eval()
    evaluator = task.create_evaluator(max_samples=evaluation_sample_limit(loader))
    for input, target in loader:
        input, target = to_device(input, target, device, channels_last, input_dtype)
        with amp_autocast():
            output = model(input)
        evaluator.update(output.float(), target)
    metrics = evaluator.compute(distributed=distributed)
    if is_primary:
        _logger.info(f'Eval{log_suffix}: ' + '  '.join(f'{k}: {v:.4f}' for k, v in metrics.items()))
    return metrics
