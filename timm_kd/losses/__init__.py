"""Distillation losses, created by name: `create_kd_loss('kd', temperature=1.0)`.

Each loss is a small module registered with `@register_kd_loss(name, kind)`, its formula and paper in its
docstring. Logit losses: `loss(student_logits, teacher_logits, target)`. Feature losses:
`loss(student_features, teacher_features)` on `timm_kd.features.Features`.
"""
from .registry import create_kd_loss, get_kd_loss_class, list_kd_losses, loss_accepts, register_kd_loss
from .kd import KLDivergenceKD
from .bkd import BinaryCrossEntropyKD, BinaryKLDivergence
from .dkd import DecoupledKD
from .dist import DIST
from .ls import LogitStandardizedKD
from .fitnet import FitNet
from .at import AttentionTransfer
from .cc import CorrelationCongruence
from .rkd import RelationalKD
from .crd import ContrastiveRepresentationKD
from .review import ReviewKD

__all__ = ['create_kd_loss', 'get_kd_loss_class', 'list_kd_losses', 'loss_accepts', 'register_kd_loss',
           'KLDivergenceKD', 'BinaryCrossEntropyKD', 'BinaryKLDivergence', 'DecoupledKD', 'DIST',
           'LogitStandardizedKD', 'FitNet', 'AttentionTransfer', 'CorrelationCongruence', 'RelationalKD',
           'ContrastiveRepresentationKD', 'ReviewKD']
