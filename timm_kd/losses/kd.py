"""Vanilla logit distillation."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_kd_loss, upcast


@register_kd_loss('kd')
class KLDivergenceKD(nn.Module):
    """Vanilla KD (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015).

        loss = T^2 * mean_batch( sum_classes p_t * (log p_t - log p_s) ),
        p_t = softmax(z_t / T),  log p_s = log_softmax(z_s / T)

    i.e. KL(p_teacher || p_student), summed over classes and averaged over the batch. The T^2 factor
    keeps the gradient scale independent of T. VanillaKD (Hao et al., 2023) uses T=1 with weight 1
    next to the hard-label loss; their official implementation computes exactly this quantity (KL
    summed over classes, batch mean).

    `target` is accepted for a uniform call signature and ignored: the loss depends on logits only.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.temperature = temperature

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor = None,
    ) -> torch.Tensor:
        t = self.temperature
        log_p_s = F.log_softmax(upcast(student_logits) / t, dim=-1)
        log_p_t = F.log_softmax(upcast(teacher_logits) / t, dim=-1)
        # kl_div(input=log q, target=log p, log_target=True) = p * (log p - log q), elementwise
        kl = F.kl_div(log_p_s, log_p_t, reduction='none', log_target=True).sum(-1).mean()
        return kl * (t * t)

    def extra_repr(self) -> str:
        return f'temperature={self.temperature}'
