"""Hard-label distillation: the teacher's decision as the label."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_kd_loss, upcast


@register_kd_loss('hard')
class HardLabelKD(nn.Module):
    """Hard distillation (Touvron et al., "Training data-efficient image transformers &
    distillation through attention" (DeiT), ICML 2021, Sec. 4):

        loss = mean_batch( CE(z_s, argmax_c z_t) )

    the cross-entropy of the student against the teacher's top-1 class on the very batch the
    student sees (after mixup/cutmix, as DeiT does), with no temperature. With a distillation token
    (`--kd-distill-type token`) it trains the distillation head, as timm's `TokenDistillationTask`
    with `distill_type='hard'` does.

    `target` is accepted for a uniform call signature and ignored.
    """

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor = None,
    ) -> torch.Tensor:
        return F.cross_entropy(upcast(student_logits), teacher_logits.argmax(dim=-1))
