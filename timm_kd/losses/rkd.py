"""Relational knowledge distillation."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..features import Features, FeatureSpec
from .registry import register_kd_loss


def _distances(e: torch.Tensor, gram: torch.Tensor, eps: float, squared: bool) -> torch.Tensor:
    """Pairwise (squared) Euclidean distances from the
    Gram matrix, clamped at eps, zero on the diagonal."""
    sq = gram.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * gram).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at i between e_j - e_i and e_k - e_i for all (i, j, k): B x B x B, from the
    B x B x D tensor of differences (zero vectors, j == i, give 0). Differences, not the Gram
    matrix, keep it exact for nearby embeddings."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2))


@register_kd_loss('rkd', kind='feature')
class RelationalKD(nn.Module):
    """RKD (Park et al., "Relational Knowledge
    Distillation", CVPR 2019), on the pre-logits embeddings:

        psi_D(i, j) = ||e_i - e_j|| / mu,   mu = mean of the non-zero distances in the batch
        psi_A(i, j, k) = cos angle(e_j - e_i, e_k - e_i)
        loss = distance_weight * smoothL1(psi_D^s, psi_D^t)
               + angle_weight * smoothL1(psi_A^s, psi_A^t)

    Defaults (25, 50, eps=1e-12, unsquared) are VanillaKD's official losses/rkd.py. The angle term
    holds a B x B x D tensor (batch 128, 2048-d: 134 MB in float32). Works for student and teacher
    of any widths (no learnable parts).
    """

    def __init__(
        self,
        student: FeatureSpec = None,
        teacher: FeatureSpec = None,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        eps: float = 1e-12,
        squared: bool = False,
    ):
        super().__init__()
        self.distance_weight, self.angle_weight, self.eps, self.squared = (
            distance_weight,
            angle_weight,
            eps,
            squared,
        )

    def _relations(self, e: torch.Tensor):
        d = _distances(e, e @ e.t(), self.eps, self.squared)
        return d / d[d > 0].mean(), _angles(e)

    def forward(self, student: Features, teacher: Features) -> torch.Tensor:
        e_s = student.pre_logits.flatten(1)
        d_s, a_s = self._relations(e_s)
        with torch.no_grad():
            d_t, a_t = self._relations(teacher.pre_logits.flatten(1).to(e_s.dtype))
        return self.distance_weight * F.smooth_l1_loss(
            d_s, d_t
        ) + self.angle_weight * F.smooth_l1_loss(a_s.flatten(), a_t.flatten())
