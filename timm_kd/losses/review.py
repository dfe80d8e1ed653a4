"""ReviewKD: knowledge review with attention-based fusion and hierarchical context loss."""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..features import Features, FeatureSpec, check_pairs
from .registry import register_kd_loss


class AttentionFusion(nn.Module):
    """ABF: project a student map, fuse it with the upsampled
    output of the deeper level (2-channel attention)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.out = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.attention = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.out[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: Optional[torch.Tensor], out_size: Sequence[int]):
        x = self.reduce(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode='nearest')
            w = self.attention(torch.cat([x, deeper], dim=1))
            x = x * w[:, :1] + deeper * w[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode='nearest')
        return self.out(x), x


def hierarchical_context_loss(
    student: List[torch.Tensor], teacher: List[torch.Tensor]
) -> torch.Tensor:
    """HCL: per level, MSE of the maps plus MSE of 4x4, 2x2, 1x1 average-pooled maps (those smaller
    than the map), weighted 1, 1/2, 1/4, 1/8 and normalized by the weights' sum; summed over
    levels."""
    total = 0.0
    for f_s, f_t in zip(student, teacher):
        loss, weight, weights = F.mse_loss(f_s, f_t), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= f_s.shape[-2]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(
                F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size)
            )
            weights += weight
        total = total + loss / weights
    return total


@register_kd_loss('review', kind='feature')
class ReviewKD(nn.Module):
    """ReviewKD (Chen et al., "Distilling Knowledge via Knowledge
    Review", CVPR 2021), as VanillaKD's official losses/review.py:

        levels = chosen stage maps + the pre-logits as a 1x1 map,
                 student and teacher paired one to one
        from the deepest level down: out_l, res_l = ABF_l(F_s,l, res_{l+1})
                                     (fusion with the deeper level)
        loss = min(epoch / warmup_epochs, 1) * sum_l HCL(out_l, F_t,l)

    ABF_l maps the student's channels to the teacher's (mid channels min(512, student pre-logits
    width)) and its output to the teacher's spatial size, so any pair of architectures works. The
    fusion modules are trained with the student and dropped from exported weights. The official code
    distills ResNets' pre-activation features; timm's `forward_intermediates` gives post-activation
    ones for every model. The warm-up factor follows the official code: 0 in epoch 0 with the
    default `warmup_epochs=1`.
    """

    def __init__(
        self,
        student: FeatureSpec,
        teacher: FeatureSpec,
        warmup_epochs: float = 1.0,
        max_mid_channels: int = 512,
    ):
        super().__init__()
        check_pairs(student, teacher, 'review')
        in_channels = [s[0] for s in student.map_shapes] + [student.pre_logits_dim]
        out_channels = [t[0] for t in teacher.map_shapes] + [teacher.pre_logits_dim]
        self.out_sizes: List[Tuple[int, int]] = [tuple(t[1:]) for t in teacher.map_shapes] + [
            (1, 1)
        ]
        mid = min(max_mid_channels, in_channels[-1])
        last = len(in_channels) - 1
        self.fusions = nn.ModuleList(
            AttentionFusion(c_in, mid, c_out, fuse=i < last)
            for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels))
        )
        self.warmup_epochs = warmup_epochs
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _levels(f: Features) -> List[torch.Tensor]:
        return list(f.maps) + [f.pre_logits[:, :, None, None]]

    def forward(self, student: Features, teacher: Features) -> torch.Tensor:
        f_s = self._levels(student)
        outputs, residual = [], None
        for level in reversed(range(len(f_s))):
            out, residual = self.fusions[level](f_s[level], residual, self.out_sizes[level])
            outputs.insert(0, out)
        f_t = [t.to(outputs[0].dtype) for t in self._levels(teacher)]
        factor = min(self.epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        return factor * hierarchical_context_loss(outputs, f_t)
