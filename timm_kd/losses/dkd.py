"""Decoupled knowledge distillation."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import hard_labels, register_kd_loss, upcast


@register_kd_loss('dkd')
class DecoupledKD(nn.Module):
    """DKD (Zhao et al., "Decoupled Knowledge Distillation",
    CVPR 2022): loss = alpha * TCKD + beta * NCKD.

        b = [p_gt, 1 - p_gt]               binary target/non-target probabilities (softmax at T)
        TCKD = T^2 * KL(b_t || b_s)
        NCKD = T^2 * KL(p~_t || p~_s),     p~ = softmax over the non-target classes only
        both summed over their classes and averaged over the batch.

    Dense targets (mixup/cutmix/label smoothing) use their argmax as the ground-truth class, as the
    official VanillaKD code does (losses/dkd.py); its NCKD masks the target class by subtracting
    1000 from its logit before the softmax, which we reproduce (instead of -inf) so values match
    theirs to 1e-6. Defaults alpha=1, beta=2, T=1 are VanillaKD's ImageNet setting (their Table 5
    tunes lr/wd, not these).
    """

    needs_labels = True  # the target class splits the distribution

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 2.0,
        temperature: float = 1.0,
        mask_offset: float = 1000.0,
    ):
        super().__init__()
        self.alpha, self.beta, self.temperature, self.mask_offset = (
            alpha,
            beta,
            temperature,
            mask_offset,
        )

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        t = self.temperature
        z_s, z_t = upcast(student_logits) / t, upcast(teacher_logits) / t
        gt = F.one_hot(hard_labels(target), z_s.shape[-1]).to(z_s.dtype)
        p_s, p_t = z_s.softmax(-1), z_t.softmax(-1)
        b_s = torch.stack([(p_s * gt).sum(-1), (p_s * (1 - gt)).sum(-1)], dim=-1)
        b_t = torch.stack([(p_t * gt).sum(-1), (p_t * (1 - gt)).sum(-1)], dim=-1)
        tckd = (b_t * (b_t.log() - b_s.log())).sum(-1).mean()
        log_q_s = F.log_softmax(z_s - self.mask_offset * gt, dim=-1)
        log_q_t = F.log_softmax(z_t - self.mask_offset * gt, dim=-1)
        nckd = F.kl_div(log_q_s, log_q_t, reduction='none', log_target=True).sum(-1).mean()
        return (self.alpha * tckd + self.beta * nckd) * (t * t)
