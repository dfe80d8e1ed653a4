"""Attention transfer."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..features import Features, FeatureSpec, check_pairs, resize_to
from .registry import register_kd_loss


@register_kd_loss('at', kind='feature')
class AttentionTransfer(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

        Q(F) = mean_c F^p                       spatial attention map (B x H x W)
        a(F) = vec(Q(F)) / ||vec(Q(F))||_2
        loss = beta / 2 * sum_k mean( (a(F_s,k) - a(F_t,k))^2 )

    p=2 and beta=1000 are the paper's (its code: `(at(x) - at(y)).pow(2).mean()` per pair, scaled by
    beta / 2). When the maps' sizes differ, the student's attention map is resized to the teacher's
    before normalizing. No learnable parts.
    """

    def __init__(
        self, student: FeatureSpec, teacher: FeatureSpec, p: float = 2.0, beta: float = 1000.0
    ):
        super().__init__()
        check_pairs(student, teacher, 'at')
        self.sizes = [t[1:] for t in teacher.map_shapes]
        self.p, self.beta = p, beta

    def attention(self, f: torch.Tensor, size) -> torch.Tensor:
        q = resize_to(f.pow(self.p).mean(1, keepdim=True), size)
        return F.normalize(q.flatten(1), dim=1)

    def forward(self, student: Features, teacher: Features) -> torch.Tensor:
        loss = 0.0
        for f_s, f_t, size in zip(student.maps, teacher.maps, self.sizes):
            loss = (
                loss
                + (self.attention(f_s, size) - self.attention(f_t.to(f_s.dtype), size))
                .pow(2)
                .mean()
            )
        return self.beta / 2 * loss
