"""One training epoch and one evaluation pass over a `TrainingTask`; the loop train_kd.py runs."""
import logging
import time
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Callable, Dict, Optional

import torch
from timm.task import evaluation_sample_limit
from timm.utils import dispatch_clip_grad, reduce_tensor

_logger = logging.getLogger(__name__)


def _to_device(input, target, device, channels_last):
    input, target = input.to(device, non_blocking=True), target.to(device, non_blocking=True)
    if channels_last:
        input = input.contiguous(memory_format=torch.channels_last)
    return input, target


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def train_one_epoch(
        epoch: int,
        task,
        loader,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        num_epochs: int,
        lr_scheduler=None,
        loss_scaler=None,
        amp_autocast: Callable = nullcontext,
        mixup_fn: Optional[Callable] = None,
        clip_grad: Optional[float] = None,
        clip_mode: str = 'norm',
        grad_accum_steps: int = 1,
        channels_last: bool = False,
        distributed: bool = False,
        log_interval: int = 50,
        is_primary: bool = True,
        labels: Optional[torch.Tensor] = None,
) -> Dict[str, float]:
    """Train `task` for one epoch; returns the epoch's mean of every loss component the task reports.

    With `labels` (a device tensor of every sample's class) the loader yields sample indices as targets
    (`timm_kd.data.IndexedTargets`, for CRD): they are passed to the task as `index` and mapped to labels.

    Loss components are summed on the device and read back only at log intervals and at the end of the epoch,
    so the step itself has no host-device synchronisation.
    """
    task.train()
    task.set_epoch(epoch)
    num_batches = len(loader)
    updates_per_epoch = (num_batches + grad_accum_steps - 1) // grad_accum_steps
    num_updates = epoch * updates_per_epoch
    sums: Dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=device)
    start = time.time()
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        input, target = _to_device(input, target, device, channels_last)
        index = None
        if labels is not None:
            index, target = target, labels[target]
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)
        last_batch = batch_idx == num_batches - 1
        need_update = last_batch or (batch_idx + 1) % grad_accum_steps == 0

        # --- the training step ---
        with nullcontext() if need_update else task.no_sync():
            with amp_autocast():
                result = task(input, target, index=index)
            loss = result['loss'] / grad_accum_steps
            if loss_scaler is not None:
                loss_scaler(loss, optimizer, clip_grad=clip_grad, clip_mode=clip_mode,
                            parameters=task.get_clip_parameters(), need_update=need_update)
            else:
                loss.backward()
                if need_update:
                    if clip_grad is not None:
                        dispatch_clip_grad(task.get_clip_parameters(), value=clip_grad, mode=clip_mode)
                    optimizer.step()
        if need_update:
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            task.update_ema(step=num_updates)
            if lr_scheduler is not None:
                lr_scheduler.step_update(num_updates=num_updates)
        # --- end of step ---

        batch_size = input.shape[0]
        count += batch_size
        for key, value in result.items():
            if key.endswith('loss'):
                sums[key] = sums.get(key, 0.) + value.detach().float() * batch_size
        if is_primary and (batch_idx % log_interval == 0 or last_batch):
            elapsed = time.time() - start
            per_batch = elapsed / (batch_idx + 1)
            remaining = per_batch * ((num_batches - batch_idx - 1) + (num_epochs - epoch - 1) * num_batches)
            losses = '  '.join(f'{k}: {(v / count).item():.4f}' for k, v in sums.items())
            lr = optimizer.param_groups[0]['lr']
            _logger.info(f'Train: {epoch} [{batch_idx + 1:>4d}/{num_batches}]  {losses}  lr: {lr:.3e}  '
                         f'{batch_size / per_batch:.1f} img/s  ETA {_format_eta(remaining)}')
    if distributed:
        count = reduce_tensor(count, 1)  # sum over ranks
        sums = {k: reduce_tensor(v, 1) for k, v in sums.items()}
    return OrderedDict((k, (v / count).item()) for k, v in sums.items())


@torch.no_grad()
def validate(
        task,
        loader,
        *,
        device: torch.device,
        ema: bool = False,
        amp_autocast: Callable = nullcontext,
        channels_last: bool = False,
        distributed: bool = False,
        log_suffix: str = '',
        is_primary: bool = True,
) -> Dict[str, Any]:
    """Loss, top-1 and top-5 (percent) of the student (or its EMA) on `loader`, reduced over ranks."""
    model = task.get_eval_model(ema=ema)
    model.eval()
    evaluator = task.create_evaluator(max_samples=evaluation_sample_limit(loader))
    for input, target in loader:
        input, target = _to_device(input, target, device, channels_last)
        with amp_autocast():
            output = model(input)
        evaluator.update(output.float(), target)
    metrics = evaluator.compute(distributed=distributed)
    if is_primary:
        _logger.info(f'Eval{log_suffix}: ' + '  '.join(f'{k}: {v:.4f}' for k, v in metrics.items()))
    return metrics
