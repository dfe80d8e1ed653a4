"""Intermediate features of any timm model, CNN or
transformer, through timm's `forward_intermediates`.

A stage index is an entry of the model's `feature_info` (ResNet: 0 = stem, 1..4 = layer1..4; ViT:
one per block); negative indices count from the end, so -1 is the last stage of any architecture.
Transformer tokens come back as NCHW maps (timm drops the prefix tokens and reshapes), so every
feature method sees maps.
"""

from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import KDError


class Features(NamedTuple):
    """What a feature loss sees of one network: the chosen
    stage maps (NCHW) and the pooled pre-logits (B x D)."""

    maps: List[torch.Tensor]
    pre_logits: torch.Tensor


class FeatureSpec(NamedTuple):
    """Shapes of `Features` without the batch: map shapes
    (C, H, W) per stage and the pre-logits width D."""

    map_shapes: List[Tuple[int, int, int]]
    pre_logits_dim: int


def num_stages(model: nn.Module) -> int:
    info = getattr(model, 'feature_info', None)
    if not info or not hasattr(model, 'forward_intermediates'):
        raise KDError(
            f'{type(model).__name__} has no forward_intermediates; feature KD and deep supervision '
            f'need a timm model that supports it (most timm CNNs and ViTs do)'
        )
    return len(info)


def resolve_stages(model: nn.Module, stages: Sequence[int], who: str = 'student') -> List[int]:
    """Stage indices made non-negative and checked against the model, in the order given."""
    n = num_stages(model)
    out = []
    for s in stages:
        if not -n <= s < n:
            raise KDError(
                f'{who} stage {s} is out of range: {type(model).__name__} has {n} stages '
                f'(0..{n - 1}, or -1 for the last); fix --kd-{who}-stages'
            )
        out.append(s % n)
    return out


def forward_features(
    model: nn.Module, x: torch.Tensor, stages: Sequence[int]
) -> Tuple[torch.Tensor, Features]:
    """One forward pass returning the logits and
    `Features` at `stages` (non-negative, any order)."""
    order = sorted(set(stages))
    final, intermediates = model.forward_intermediates(x, indices=order)
    by_stage = dict(zip(order, intermediates))
    pre_logits = model.forward_head(final, pre_logits=True)
    head = model.get_classifier()
    # a distilled transformer has two heads on two tokens: its own head pools them
    logits = model.forward_head(final) if isinstance(head, tuple) else head(pre_logits)
    return logits, Features([by_stage[s] for s in stages], pre_logits)


def spec_of(features: Features) -> FeatureSpec:
    return FeatureSpec([tuple(m.shape[1:]) for m in features.maps], features.pre_logits.shape[1])


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of an NCHW map to `size` (H, W); a no-op when it already has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


def projector(in_channels: int, out_channels: int) -> nn.Module:
    """1x1 conv + BN from the student's to the teacher's
    channels (FitNets' regressor; identity if equal)."""
    if in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
    )


def check_pairs(student: FeatureSpec, teacher: FeatureSpec, method: str) -> None:
    if len(student.map_shapes) != len(teacher.map_shapes):
        raise KDError(
            f'{method} pairs student and teacher stages one to one, but got '
            f'{len(student.map_shapes)} '
            f'student and {len(teacher.map_shapes)} teacher stages; give --kd-student-stages and '
            f'--kd-teacher-stages the same length'
        )
