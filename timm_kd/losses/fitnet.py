"""FitNets hints."""

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..features import Features, FeatureSpec, check_pairs, projector, resize_to
from .registry import register_kd_loss


@register_kd_loss('fitnet', kind='feature')
class FitNet(nn.Module):
    """FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

        loss = sum_k mean( (resize(r_k(F_s,k)) - F_t,k)^2 )

    for each paired stage k: a learnable regressor r_k (1x1 conv + BN, the student's channels to the
    teacher's) and a bilinear resize of the student's map to the teacher's H x W, so any CNN/ViT
    pair works. The regressors are trained with the student and dropped from exported weights.
    """

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec):
        super().__init__()
        check_pairs(student, teacher, 'fitnet')
        self.sizes: List[tuple] = [t[1:] for t in teacher.map_shapes]
        self.regressors = nn.ModuleList(
            projector(s[0], t[0]) for s, t in zip(student.map_shapes, teacher.map_shapes)
        )

    def forward(self, student: Features, teacher: Features) -> torch.Tensor:
        loss = 0.0
        for f_s, f_t, reg, size in zip(student.maps, teacher.maps, self.regressors, self.sizes):
            loss = loss + F.mse_loss(resize_to(reg(f_s), size), f_t.to(f_s.dtype))
        return loss
