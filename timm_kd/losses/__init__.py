"""Distillation losses, created by name: `create_kd_loss('kd', temperature=1.0)`.

Each loss is a small module registered with `@register_kd_loss(name)`; logit losses are called as
`loss(student_logits, teacher_logits, target)` and return a scalar.
"""
from .registry import create_kd_loss, list_kd_losses, register_kd_loss
from .kd import KLDivergenceKD

__all__ = ['create_kd_loss', 'list_kd_losses', 'register_kd_loss', 'KLDivergenceKD']
