"""Teacher ensembles: several teachers, one target.

    timm-kd-train DATA --model resnet18 \\
        --teacher resnet50 --teacher-checkpoint cnn.pth --teacher-weight 2 \\
        --teacher vit_small_patch16_224 --teacher-checkpoint vit.pth --teacher-input-size 3 224 224

`--teacher` may be given several times; the teacher flags that follow one (`--teacher-checkpoint`,
`--teacher-kwargs`, `--teacher-no-ema`, `--teacher-mean`, `--teacher-std`, `--teacher-input-size`,
`--teacher-dtype`, `--teacher-weight`, `--teacher-class-map`) belong to it. Each teacher sees the
student's batch through its own preprocessing (`InputAdapter`) and answers over the student's
classes (through its own class map), one pass per teacher per batch, shared by all students. The
target (`--teacher-ensemble prob`, the default) is the weighted mean of the teachers' probabilities
at the KD temperature T (`--kd-temperature`, 1 when unset): the ensemble hands out the logits T *
log(sum_i w_i softmax(z_i / T)), whose softmax at T is exactly that mixture (big_vision's and
DeiT-style distillation average teachers' probabilities). `--teacher-ensemble logit` takes the
weighted mean of the logits instead. Weights default to equal and are normalized. Feature losses
need one teacher's feature maps and are refused with ensembles.
"""

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .errors import KDError
from .run import TeacherSetup
from .teacher import TeacherOutput, create_teacher


class EnsembleTeacher(nn.Module):
    """Several `Teacher`s answering as one: the weighted mixture of their probabilities at
    `temperature` (`mode='prob'`) or the weighted mean of their logits (`mode='logit'`)."""

    def __init__(
        self,
        teachers: Sequence[nn.Module],
        weights: Sequence[float],
        mode: str = 'prob',
        temperature: float = 1.0,
    ):
        super().__init__()
        if mode not in ('prob', 'logit'):
            raise KDError(f'unknown --teacher-ensemble {mode!r}; choose prob or logit')
        total = float(sum(weights))
        if total <= 0:
            raise KDError(
                'the --teacher-weight values sum to 0; give at least one teacher a positive weight'
            )
        classes = {t.num_classes for t in teachers}
        if len(classes) > 1:
            raise KDError(
                f"the ensemble's teachers predict different class counts {sorted(classes)}; use "
                f'teachers of one label set'
            )
        self.teachers = nn.ModuleList(teachers)
        self.register_buffer(
            'weights', torch.tensor([w / total for w in weights]), persistent=False
        )
        self.mode, self.temperature = mode, temperature

    @property
    def num_classes(self) -> int:
        return self.teachers[0].num_classes

    @property
    def model(self) -> nn.Module:
        raise KDError(
            "feature losses need one teacher's feature maps; use logit losses with several "
            '--teacher'
        )

    def train(self, mode: bool = True) -> 'EnsembleTeacher':
        return super().train(False)

    def compile(self, *args: Any, **kwargs: Any) -> 'EnsembleTeacher':
        for teacher in self.teachers:
            teacher.compile(*args, **kwargs)
        return self

    def combine(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([z.float() for z in logits])  # (teachers, batch, classes)
        w = self.weights.to(stacked.device).view(-1, 1, 1)
        if self.mode == 'logit':
            return (w * stacked).sum(0)
        t = self.temperature
        return t * torch.logsumexp(torch.log(w) + torch.log_softmax(stacked / t, dim=-1), dim=0)

    def forward(
        self, images: torch.Tensor, stages: Optional[Sequence[int]] = None
    ) -> TeacherOutput:
        if stages is not None:
            raise KDError(
                "feature losses need one teacher's feature maps; use logit losses with several "
                '--teacher'
            )
        return TeacherOutput(self.combine([teacher(images).logits for teacher in self.teachers]))

    def forward_many(
        self, images: torch.Tensor, stage_sets: Sequence[Optional[Sequence[int]]]
    ) -> List[TeacherOutput]:
        return [self(images)] * len(stage_sets)


def create_teachers(
    setup: TeacherSetup,
    num_classes: int,
    in_chans: int,
    data_config: Dict[str, Any],
    device: torch.device,
    class_names: Optional[Sequence[str]] = None,
    reads_logits: bool = True,
) -> Optional[nn.Module]:
    """The `Teacher` of `setup`, an `EnsembleTeacher` when it has several members, or None.

    Each member sees the student's batch (normalized and sized by `data_config`) through its own
    preprocessing, and answers over the student's classes (named `class_names`) through its own
    class map. `reads_logits`: whether the losses read the logits (`teacher.create_teacher`)."""
    if not setup.members:
        return None
    # the student's channels, as its model has them
    config = {**data_config, 'input_size': (in_chans, *data_config['input_size'][1:])}
    teachers = [
        create_teacher(spec, config, num_classes, setup, device, class_names, reads_logits)
        for spec in setup.members
    ]
    if len(teachers) == 1:
        return teachers[0]
    weights = [spec.weight for spec in setup.members]
    ensemble = EnsembleTeacher(
        teachers, weights, mode=setup.ensemble, temperature=setup.temperature
    )
    return ensemble.to(device)
