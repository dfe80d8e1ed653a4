"""The trainable side of distillation: the student plus every part KD trains with it.

`KDStudent` is the module DDP wraps and the optimizer sees: the student, the KD losses (their
projectors, embeddings, fusion modules, CRD memory) and the deep-supervision heads. It runs the
student once (through `forward_intermediates` only when features are needed) and returns the
student's logits and each KD loss, unweighted. Only `KDStudent.student` is evaluated, averaged by
EMA and exported; the rest is task state.
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models import group_parameters

from .errors import KDError
from .features import Features, FeatureSpec, forward_features, resolve_stages, spec_of
from .losses import create_kd_loss, get_kd_loss_class, loss_accepts
from .run import LossSpec
from .teacher import Teacher, TeacherOutput


class AuxHead(nn.Module):
    """Deep-supervision classifier on an intermediate
    stage map: global average pool, LayerNorm, linear."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.mean((2, 3))))


class KDStudent(nn.Module):
    """student + KD losses + auxiliary heads; `forward`
    returns (student logits, {component: loss}).

    With `distill_token` the student is a distilled transformer (DeiT's distillation token, timm's
    `set_distilled_training`): in training it returns (class logits, distillation logits); the
    logit losses train the distillation head on the teacher, and the returned logits (the
    hard-label loss, the metrics) are the class head's. In eval mode the model itself
    averages its two heads, as timm's does."""

    def __init__(
        self,
        student: nn.Module,
        kd_losses: Optional[Mapping[str, nn.Module]] = None,
        student_stages: Sequence[int] = (),
        aux_stages: Sequence[int] = (),
        aux_heads: Optional[Sequence[nn.Module]] = None,
        teacher_stages: Optional[Sequence[int]] = None,
        distill_token: bool = False,
    ):
        super().__init__()
        self.student = student
        if distill_token:
            if not hasattr(student, 'set_distilled_training'):
                raise KDError(
                    f'--kd-distill-type token trains a distillation token, and '
                    f'{type(student).__name__} has none; use a distilled model (e.g. '
                    'deit_tiny_distilled_patch16_224) or drop --kd-distill-type token'
                )
            student.set_distilled_training(True)
        self.kd_losses = nn.ModuleDict(kd_losses or {})
        self.student_stages = list(student_stages)
        self.aux_stages = list(aux_stages)
        self.aux_heads = nn.ModuleList(aux_heads or [])
        # None: logits only
        self.teacher_stages = list(teacher_stages) if teacher_stages is not None else None
        logit = [n for n, m in self.kd_losses.items() if m.kind == 'logit']
        if self.aux_heads and not logit:
            raise KDError(
                'deep supervision distills each auxiliary head with a logit loss; add one to '
                '--kd-loss (e.g. kd)'
            )
        self.aux_loss = self.kd_losses[logit[0]] if logit else None
        self.needs_index = any(getattr(m, 'needs_index', False) for m in self.kd_losses.values())
        self.needs_features = bool(self.aux_heads) or any(
            m.kind == 'feature' for m in self.kd_losses.values()
        )

    def forward(
        self,
        x: torch.Tensor,
        teacher: Optional[TeacherOutput] = None,
        target: Optional[torch.Tensor] = None,
        index: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if not self.needs_features:
            logits, features = self.student(x), None
        else:
            logits, features = forward_features(
                self.student, x, self.student_stages + self.aux_stages
            )
        losses: Dict[str, torch.Tensor] = {}
        distilled = logits  # what the logit losses train: the distillation head, if there is one
        if isinstance(logits, tuple):  # a distilled model in training: (class, distillation)
            logits, distilled = logits
        if teacher is None:
            return logits, losses
        n = len(self.student_stages)
        for name, loss in self.kd_losses.items():
            if loss.kind == 'logit':
                losses[f'{name}_loss'] = loss(distilled, teacher.logits, target)
            else:
                kwargs = {'index': index} if getattr(loss, 'needs_index', False) else {}
                losses[f'{name}_loss'] = loss(
                    Features(features.maps[:n], features.pre_logits), teacher.features, **kwargs
                )
        if self.aux_heads:
            aux = [
                self.aux_loss(head(m), teacher.logits, target)
                for head, m in zip(self.aux_heads, features.maps[n:])
            ]
            losses['aux_loss'] = torch.stack(aux).mean()
        return logits, losses

    def set_epoch(self, epoch: int) -> None:
        """Tell epoch-dependent losses (ReviewKD's warm-up) the current epoch."""
        for loss in self.kd_losses.values():
            if hasattr(loss, 'set_epoch'):
                loss.set_epoch(epoch)

    def kd_state_dict(self) -> Dict[str, dict]:
        """Everything but the student: what resume needs and export must leave out."""
        return {'kd_losses': self.kd_losses.state_dict(), 'aux_heads': self.aux_heads.state_dict()}

    def load_kd_state_dict(self, state: Mapping[str, dict], strict: bool = True) -> None:
        self.kd_losses.load_state_dict(state.get('kd_losses', {}), strict=strict)
        self.aux_heads.load_state_dict(state.get('aux_heads', {}), strict=strict)

    def no_weight_decay(self):
        inner = getattr(self.student, 'no_weight_decay', None)
        return {'student.' + n for n in inner()} if inner is not None else set()

    def group_matcher(self, coarse: bool = False):
        """Layer-wise lr decay groups: the student's own, KD
        parts in the last group (as timm's KD task does)."""
        if not hasattr(self.student, 'group_matcher'):
            return {}
        layer_map = group_parameters(
            self.student, self.student.group_matcher(coarse=coarse), reverse=True
        )
        last = max(layer_map.values(), default=0)
        return lambda name: (
            layer_map.get(name[len('student.') :], last) if name.startswith('student.') else last
        )


@torch.no_grad()
def _probe(
    student: nn.Module,
    teacher: Teacher,
    input_size: Sequence[int],
    student_stages: List[int],
    teacher_stages: Optional[List[int]],
) -> Tuple[FeatureSpec, Optional[FeatureSpec]]:
    """Feature shapes of student and teacher (None without `teacher_stages`: aux
    heads only) from one forward pass on a zero batch (student in eval mode)."""
    weight = next(student.parameters())  # the batch training feeds: the student's dtype
    x = torch.zeros(2, *input_size, device=weight.device, dtype=weight.dtype)
    was_training = student.training
    student.eval()
    _, f_s = forward_features(student, x, student_stages)
    student.train(was_training)
    return spec_of(f_s), spec_of(
        teacher(x, stages=teacher_stages).features
    ) if teacher_stages else None


def create_kd_student(
    student: nn.Module,
    teacher: Optional[Teacher],
    losses: LossSpec = LossSpec(),
    *,
    input_size: Sequence[int] = (3, 224, 224),
    num_classes: Optional[int] = None,
    num_samples: Optional[int] = None,
) -> KDStudent:
    """Build the KD losses of `losses` by name (feature losses sized from probed shapes) and wrap
    them with the student; without a teacher, the student alone.

    `losses` names the losses, their hyperparameters, the stages the feature losses pair and the
    deep-supervision stages (`timm_kd.run.LossSpec`). Feature losses get the student's and
    teacher's `FeatureSpec`; losses that need the dataset size (crd) get `num_samples`.
    """
    loss_kwargs = {name: dict(kwargs) for name, kwargs in losses.kwargs}
    loss_names, aux_stages, token = losses.names, losses.deep_supervision, losses.distill_token
    if teacher is None:
        if aux_stages:
            raise KDError(
                '--kd-deep-supervision needs a teacher (--teacher): the auxiliary heads are '
                'distilled from it'
            )
        return KDStudent(student)
    feature_names = [n for n in loss_names if get_kd_loss_class(n).kind == 'feature']
    s_stages = resolve_stages(student, losses.student_stages, 'student') if feature_names else []
    t_stages = (
        resolve_stages(teacher.model, losses.teacher_stages, 'teacher') if feature_names else None
    )
    a_stages = resolve_stages(student, aux_stages, 'student') if aux_stages else []
    specs = (
        _probe(student, teacher, input_size, s_stages + a_stages, t_stages)
        if s_stages + a_stages
        else None
    )
    losses = {}
    for name in loss_names:
        kwargs = dict(loss_kwargs.get(name, {}))
        if name in feature_names:
            n = len(s_stages)
            kwargs.update(
                student=FeatureSpec(specs[0].map_shapes[:n], specs[0].pre_logits_dim),
                teacher=specs[1],
            )
            if loss_accepts(name, 'num_samples'):
                if not num_samples:
                    raise KDError(
                        f'{name} needs the training set size (a map-style dataset with len())'
                    )
                kwargs['num_samples'] = num_samples
        losses[name] = create_kd_loss(name, **kwargs)
    heads = [
        AuxHead(specs[0].map_shapes[len(s_stages) + i][0], num_classes)
        for i in range(len(a_stages))
    ]
    kd_student = KDStudent(student, losses, s_stages, a_stages, heads, t_stages, token)
    # projections and heads at the student's dtype (--model-dtype), or they cannot read its maps
    return kd_student.to(dtype=next(student.parameters()).dtype)
