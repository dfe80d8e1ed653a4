"""Distillation losses, created by name: `create_kd_loss('kd', temperature=1.0)`.

Each loss is a small module registered with `@register_kd_loss(name, kind)`, its formula and paper
in its docstring. Logit losses: `loss(student_logits, teacher_logits, target)`. Feature losses:
`loss(student_features, teacher_features)` on `timm_kd.features.Features`.
"""

from .at import AttentionTransfer
from .bkd import BinaryCrossEntropyKD, BinaryKLDivergence
from .cc import CorrelationCongruence
from .crd import ContrastiveRepresentationKD
from .dist import DIST
from .dkd import DecoupledKD
from .fitnet import FitNet
from .hard import HardLabelKD
from .kd import KLDivergenceKD
from .ls import LogitStandardizedKD
from .prelogits import PreLogitsMSE
from .registry import (
    create_kd_loss,
    get_kd_loss_class,
    list_kd_losses,
    loss_accepts,
    register_kd_loss,
)
from .review import ReviewKD
from .rkd import RelationalKD

__all__ = [
    'create_kd_loss',
    'get_kd_loss_class',
    'list_kd_losses',
    'loss_accepts',
    'register_kd_loss',
    'KLDivergenceKD',
    'BinaryCrossEntropyKD',
    'BinaryKLDivergence',
    'DecoupledKD',
    'DIST',
    'LogitStandardizedKD',
    'HardLabelKD',
    'FitNet',
    'AttentionTransfer',
    'CorrelationCongruence',
    'RelationalKD',
    'ContrastiveRepresentationKD',
    'ReviewKD',
    'PreLogitsMSE',
]
