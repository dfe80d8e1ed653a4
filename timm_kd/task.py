"""The distillation training task: hard-label loss plus
weighted KD losses, as one `timm.task.TrainingTask`."""

import logging
from typing import Callable, Dict, Mapping, Optional

import torch
import torch.nn as nn
from timm.task import TrainingTask
from timm.utils import ModelEmaV3, unwrap_model

from .student import KDStudent
from .teacher import Teacher, TeacherOutput

_logger = logging.getLogger(__name__)


class DistillationTask(TrainingTask):
    """loss = ori_loss_weight * hard_label_loss(s, y)
    + sum_i w_i * kd_loss_i + aux_weight * aux_loss

    VanillaKD (Hao et al., 2023, Sec. 2.1 and 3.4) uses one loss, `kd`, next to the hard-label loss,
    both with weight 1. The teacher sees exactly the batch the student sees (after augmentation and
    mixup/cutmix), through its own `InputAdapter`, in eval mode and without autograd. `student` is
    the plain timm model or a `KDStudent` (the student plus the learnable parts of feature losses
    and deep-supervision heads, built by `timm_kd.create_kd_student`). That module is what DDP wraps
    and the optimizer trains; only the student itself is evaluated, averaged by EMA and saved as the
    model weights; the KD parts go to the checkpoint's task state (resume) and never to exported
    weights. The teacher is never saved.

    Without a teacher the task is plain supervised training (the scratch baseline). With
    `ori_loss_weight=0` the hard-label loss is not computed at all. Returns a dict with 'loss' (to
    backward), 'output' (student logits) and each component ('task_loss', '<name>_loss', 'aux_loss')
    as tensors: no host sync per step.
    """

    def __init__(
        self,
        student: nn.Module,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        teacher: Optional[Teacher] = None,
        kd_loss_weights: Optional[Mapping[str, float]] = None,
        ori_loss_weight: float = 1.0,
        aux_loss_weight: float = 1.0,
        device: Optional[torch.device] = None,
        verbose: bool = True,
    ):
        super().__init__(device=device, verbose=verbose)
        kd_student = student if isinstance(student, KDStudent) else KDStudent(student)
        if (teacher is None) != (len(kd_student.kd_losses) == 0):
            raise ValueError('a teacher needs at least one KD loss, and KD losses need a teacher')
        if teacher is None and ori_loss_weight == 0:
            raise ValueError('with no teacher and ori_loss_weight=0 there is nothing to train on')
        self.trainable_module = kd_student
        self.criterion = criterion
        self.teacher = teacher
        self.teacher_stages = kd_student.teacher_stages
        self.weights = {
            f'{n}_loss': (kd_loss_weights or {}).get(n, 1.0) for n in kd_student.kd_losses
        }
        self.weights['aux_loss'] = aux_loss_weight
        self.ori_loss_weight = ori_loss_weight
        if verbose:
            terms = [f'{ori_loss_weight} * {type(criterion).__name__}'] + [
                f'{w} * {k[:-5]}'
                for k, w in self.weights.items()
                if k != 'aux_loss' or kd_student.aux_heads
            ]
            _logger.info(
                'DistillationTask: ' + ' + '.join(terms) + ('' if teacher else ' (no teacher)')
            )

    @property
    def kd_student(self) -> KDStudent:
        return unwrap_model(self.trainable_module)

    def train(self, mode: bool = True) -> 'DistillationTask':
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def set_epoch(self, epoch: int) -> None:
        self.kd_student.set_epoch(epoch)

    def prepare_distributed(
        self, device_ids: Optional[list] = None, **ddp_kwargs
    ) -> 'DistillationTask':
        """Wrap the student and its KD parts in DDP; the
        frozen teacher runs locally on each rank."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(
        self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs
    ) -> nn.Module:
        """Compile the training forward (student + KD losses), the student
        for eval, and the teacher (once, if several students share it)."""
        student = self.kd_student.student
        self.trainable_module = torch.compile(
            self.trainable_module, backend=backend, mode=mode, **compile_kwargs
        )
        self.eval_model = torch.compile(student, backend=backend, mode=mode, **compile_kwargs)
        if self.teacher is not None:
            self.teacher.compile(backend=backend, mode=mode, **compile_kwargs)
        return self.eval_model

    # --- the student alone is evaluated, EMA-averaged and saved; KD parts are task state ---
    def get_eval_model(
        self, module: Optional[nn.Module] = None, ema: bool = False
    ) -> Optional[nn.Module]:
        if module is None and not ema and not hasattr(self, 'eval_model'):
            return self.kd_student.student
        return super().get_eval_model(module=module, ema=ema)

    def setup_ema(
        self, decay: float = 0.9999, use_warmup: bool = False, device=None, **kwargs
    ) -> nn.Module:
        self.trainable_module_ema = ModelEmaV3(
            self.kd_student.student, decay=decay, use_warmup=use_warmup, device=device, **kwargs
        )
        return self.trainable_module_ema

    def update_ema(self, step: Optional[int] = None) -> None:
        if self.has_ema():
            self.trainable_module_ema.update(unwrap_model(self.kd_student.student), step=step)

    def get_clip_parameters(self, exclude_head: bool = False):
        params = list(self.kd_student.student.parameters())
        params = params[:-2] if exclude_head else params
        return params + [
            p for n, p in self.kd_student.named_parameters() if not n.startswith('student.')
        ]

    def get_task_state(
        self, module: Optional[nn.Module] = None, ema: bool = False
    ) -> Dict[str, dict]:
        return {} if ema else self.kd_student.kd_state_dict()

    def load_task_state(
        self, state, strict: bool = True, module: Optional[nn.Module] = None, ema: bool = False
    ):
        if state and not ema:
            self.kd_student.load_kd_state_dict(state, strict=strict)

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        index: Optional[torch.Tensor] = None,
        teacher_out: Optional[TeacherOutput] = None,
        labeled: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """One training forward. `teacher_out` is the teacher's output on `input` when the caller
        has already run it (several students sharing one teacher pass, `Teacher.forward_many`); else
        the task runs it. `labeled` (a boolean row mask) restricts the hard-label loss to images
        with known labels: unlabeled images (`timm_kd.unlabeled`) get the KD terms only."""
        if teacher_out is None and self.teacher is not None:
            teacher_out = self.teacher(input, stages=self.teacher_stages)
        student_logits, kd_losses = self.trainable_module(input, teacher_out, target, index)
        result = {'output': student_logits}
        loss = student_logits.new_zeros((), dtype=torch.float32)
        if self.ori_loss_weight:
            if labeled is None:
                result['task_loss'] = self.criterion(student_logits, target)
            # labeled rows weigh as in a fully labeled batch (a host sync, unlabeled only)
            elif bool(labeled.any()):
                share = labeled.float().mean()
                result['task_loss'] = (
                    self.criterion(student_logits[labeled], target[labeled]) * share
                )
            else:  # no labeled row in the batch: no hard-label term
                result['task_loss'] = student_logits.sum() * 0.0
            loss = loss + self.ori_loss_weight * result['task_loss']
        for key, value in kd_losses.items():
            result[key] = value
            loss = loss + self.weights[key] * value
        result['loss'] = loss
        return result
