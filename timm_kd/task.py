"""The distillation training task: hard-label loss plus KD loss, as one `timm.task.TrainingTask`."""
import logging
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from timm.task import TrainingTask

from .teacher import Teacher

_logger = logging.getLogger(__name__)


class DistillationTask(TrainingTask):
    """loss = ori_loss_weight * hard_label_loss(s, y) + kd_loss_weight * kd_loss(s, t, y)

    VanillaKD (Hao et al., 2023, Sec. 2.1 and 3.4) keeps both terms with weight 1. The teacher sees exactly the
    batch the student sees (after augmentation and mixup/cutmix), through its own `InputAdapter`, in eval mode
    and without autograd. Only the student is wrapped by DDP, compiled as the trainable module, averaged by EMA
    and written to checkpoints; the teacher is never saved.

    Without a teacher the task is plain supervised training (the scratch baseline). With `ori_loss_weight=0`
    the hard-label loss is not computed at all.

    Returns a dict with 'loss' (to backward), 'output' (student logits) and each weighted-in component
    ('task_loss', 'kd_loss') as tensors, so logging needs no host sync per step.
    """

    def __init__(
            self,
            student: nn.Module,
            criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            teacher: Optional[Teacher] = None,
            kd_loss: Optional[nn.Module] = None,
            kd_loss_weight: float = 1.0,
            ori_loss_weight: float = 1.0,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        if (teacher is None) != (kd_loss is None):
            raise ValueError('teacher and kd_loss must be given together')
        if teacher is None and ori_loss_weight == 0:
            raise ValueError('with no teacher and ori_loss_weight=0 there is nothing to train on')
        self.trainable_module = student
        self.criterion = criterion
        self.teacher = teacher
        self.kd_loss = kd_loss
        self.kd_loss_weight = kd_loss_weight
        self.ori_loss_weight = ori_loss_weight
        if verbose:
            _logger.info(f'DistillationTask: {ori_loss_weight} * {type(criterion).__name__}'
                         + (f' + {kd_loss_weight} * {kd_loss}' if teacher is not None else ' (no teacher)'))

    def train(self, mode: bool = True) -> 'DistillationTask':
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'DistillationTask':
        """Wrap the student alone in DDP; the frozen teacher runs locally on each rank."""
        from torch.nn.parallel import DistributedDataParallel as DDP
        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        """Compile the student (train and eval share one forward) and the teacher's model."""
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = self.trainable_module
        if self.teacher is not None:
            self.teacher.model = torch.compile(self.teacher.model, backend=backend, mode=mode, **compile_kwargs)
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        student_logits = self.trainable_module(input)
        result = {'output': student_logits}
        loss = student_logits.new_zeros((), dtype=torch.float32)
        if self.ori_loss_weight:
            result['task_loss'] = self.criterion(student_logits, target)
            loss = loss + self.ori_loss_weight * result['task_loss']
        if self.teacher is not None:
            teacher_logits = self.teacher(input).logits
            result['kd_loss'] = self.kd_loss(student_logits, teacher_logits, target)
            loss = loss + self.kd_loss_weight * result['kd_loss']
        result['loss'] = loss
        return result
