"""Correlation congruence."""

import torch
import torch.nn as nn

from ..features import Features, FeatureSpec
from .registry import register_kd_loss


@register_kd_loss('cc', kind='feature')
class CorrelationCongruence(nn.Module):
    """CC (Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019), in the form
    VanillaKD benchmarked (its official losses/correlation.py, inherited from CRD's RepDistiller
    code):

        e_s = W_s f_s,  e_t = W_t f_t    learnable linear embeddings of the pre-logits to `feat_dim`
        d = |e_s - e_t|                  (B x feat_dim)
        loss = scale * mean_i sum_j d[i, j] * d[i + 1, j]
                                         consecutive images in the batch, scale = 0.02

    Both embeddings are trained with the student and dropped from exported weights.
    """

    def __init__(
        self, student: FeatureSpec, teacher: FeatureSpec, feat_dim: int = 128, scale: float = 0.02
    ):
        super().__init__()
        self.embed_s = nn.Linear(student.pre_logits_dim, feat_dim)
        self.embed_t = nn.Linear(teacher.pre_logits_dim, feat_dim)
        self.scale = scale

    def forward(self, student: Features, teacher: Features) -> torch.Tensor:
        f_s = student.pre_logits
        d = (self.embed_s(f_s) - self.embed_t(teacher.pre_logits.to(f_s.dtype))).abs()
        return self.scale * (d[:-1] * d[1:]).sum(1).mean()
