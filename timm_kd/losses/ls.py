"""Logit standardization, a pre-process for logit losses."""

import torch
import torch.nn as nn

from .registry import create_kd_loss, get_kd_loss_class, register_kd_loss, upcast


def standardize(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score of each row: (z - mean) / (std + eps),
    with the unbiased std as the official code uses."""
    return (z - z.mean(dim=-1, keepdim=True)) / (z.std(dim=-1, keepdim=True) + eps)


@register_kd_loss('ls')
class LogitStandardizedKD(nn.Module):
    """Logit standardization (Sun et al., "Logit
    Standardization in Knowledge Distillation", CVPR 2024).

        loss = base( Z(z_s), Z(z_t), target ),   Z(z) = (z - mean(z)) / (std(z) + 1e-7)

    Student and teacher logits are z-scored per image before the base logit loss (`kd` by default,
    or `dkd`), so the student matches the teacher's logit *relations*, not its logit range.
    `temperature` (default 2, the paper's ImageNet base temperature) and any other keyword (e.g.
    alpha, beta for dkd) go to the base loss. Matches the official code's `normalize` (torch.std,
    unbiased) followed by its kd/dkd loss.
    """

    def __init__(
        self, base: str = 'kd', temperature: float = 2.0, eps: float = 1e-7, **base_kwargs
    ):
        super().__init__()
        if base == 'ls' or get_kd_loss_class(base).kind != 'logit':
            raise ValueError(
                f"the base of 'ls' must be another logit loss (e.g. 'kd', 'dkd'), got {base!r}"
            )
        self.base = create_kd_loss(base, temperature=temperature, **base_kwargs)
        self.eps = eps

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor = None,
    ) -> torch.Tensor:
        z_s = standardize(upcast(student_logits), self.eps)
        z_t = standardize(upcast(teacher_logits), self.eps)
        return self.base(z_s, z_t, target)
