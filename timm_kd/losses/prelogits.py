"""Pre-logits regression: timm's feature distillation."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import KDError
from ..features import Features, FeatureSpec
from .registry import register_kd_loss, upcast


@register_kd_loss('prelogits', kind='feature')
class PreLogitsMSE(nn.Module):
    """Regression of the teacher's pooled pre-logits (the features the classifier reads), in the
    form of timm's `FeatureDistillationTask` (itself a FitNets-style hint, Romero et al., "FitNets:
    Hints for Thin Deep Nets", ICLR 2015, on the penultimate layer):

        loss = mean_{batch, d} ( P f_s - f_t )^2

    f_s (B x D_s) and f_t (B x D_t) are the student's and teacher's pooled pre-logits and P a
    learned linear projection D_s -> D_t (with bias), present only when the widths differ. P trains
    with the student and is dropped from exported weights.

    `student_dim` / `teacher_dim` (timm's `--kd-student-feature-dim` / `--kd-teacher-feature-dim`)
    state the widths; 0 takes the widths probed from the models, and a stated width that differs
    from the probed one is an error.
    """

    def __init__(
        self, student: FeatureSpec, teacher: FeatureSpec, student_dim: int = 0, teacher_dim: int = 0
    ):
        super().__init__()
        for who, stated, probed in (
            ('student', student_dim, student.pre_logits_dim),
            ('teacher', teacher_dim, teacher.pre_logits_dim),
        ):
            if stated and stated != probed:
                raise KDError(
                    f'the {who} feature width is {probed} (its pre-logits), not {stated}; '
                    f'drop --kd-{who}-feature-dim or pass {probed}'
                )
        d_s, d_t = student.pre_logits_dim, teacher.pre_logits_dim
        self.projection = nn.Linear(d_s, d_t) if d_s != d_t else None

    def forward(self, student: Features, teacher: Features) -> torch.Tensor:
        f_s = student.pre_logits
        if self.projection is not None:
            f_s = self.projection(f_s)
        return F.mse_loss(upcast(f_s), upcast(teacher.pre_logits.to(f_s.dtype)))
