"""What the teacher is fed: the student's batch converted to the teacher's own preprocessing
(`InputAdapter`), and how that preprocessing is decided (`input_adapter`).

A pretrained teacher's preprocessing is its pretrained config's. A bare architecture with a
training checkpoint is fed as the checkpoint records its training: timm's train.py and
timm-kd-train store their flags (`args`), resolved here against the architecture's config as that
training resolved them. Only a checkpoint without a record gets the student's preprocessing, with
a line saying so. A teacher's own `mean`, `std` and `input_size` override any of them.
"""

import logging
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import resolve_data_config

from .checkpoint import load_training_metadata
from .run import TeacherSpec

_logger = logging.getLogger('timm_kd.teacher')

# The keys of a training checkpoint's recorded `args` (timm's train.py and timm-kd-train write them)
# that fix how its images were preprocessed, read as timm's `resolve_data_config` reads flags.
PREPROCESSING_KEYS = (
    'input_size',
    'img_size',
    'in_chans',
    'mean',
    'std',
    'interpolation',
    'crop_pct',
    'crop_mode',
)


class InputAdapter(nn.Module):
    """Converts a batch normalized for the student into
    the teacher's input, in one affine op plus a resize.

    x_teacher = (x * std_s + mean_s - mean_t) / std_t = x * (std_s / std_t) + (mean_s - mean_t) /
    std_t, and a resize to the teacher's resolution. Each step is skipped when student and teacher
    agree.
    """

    def __init__(
        self,
        student_mean: Sequence[float],
        student_std: Sequence[float],
        teacher_mean: Sequence[float],
        teacher_std: Sequence[float],
        size: Optional[Tuple[int, int]] = None,
        interpolation: str = 'bicubic',
    ):
        super().__init__()
        s_mean, s_std, t_mean, t_std = (
            torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1)
            for v in (student_mean, student_std, teacher_mean, teacher_std)
        )
        self.renormalize = not (torch.equal(s_mean, t_mean) and torch.equal(s_std, t_std))
        self.teacher_mean, self.teacher_std = tuple(teacher_mean), tuple(teacher_std)
        self.register_buffer('scale', (s_std / t_std).float(), persistent=False)
        self.register_buffer('shift', ((s_mean - t_mean) / t_std).float(), persistent=False)
        self.size = tuple(size) if size is not None else None
        self.interpolation = (
            interpolation if interpolation in ('bilinear', 'bicubic', 'nearest') else 'bicubic'
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Resizing is linear with weights summing to one, so it commutes with the per-channel
        # affine: apply the affine on whichever side has fewer pixels. Under `Teacher.compile` both
        # fuse with the dtype cast.
        resize = self.size is not None and tuple(x.shape[-2:]) != self.size
        shrink = resize and x.shape[-2] * x.shape[-1] > self.size[0] * self.size[1]
        if self.renormalize and not shrink:
            x = self._affine(x)
        if resize:
            down = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
            x = F.interpolate(
                x,
                size=self.size,
                mode=self.interpolation,
                align_corners=False,
                antialias=down and self.interpolation != 'nearest',
            )
        if self.renormalize and shrink:
            x = self._affine(x)
        return x

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype))

    def extra_repr(self) -> str:
        return (
            f'input mean={self.teacher_mean} std={self.teacher_std}, '
            f'renormalize={self.renormalize}, size={self.size}, interpolation={self.interpolation}'
        )


def recorded_preprocessing(checkpoint: str, model: nn.Module) -> Optional[Dict[str, Any]]:
    """How the model of a training `checkpoint` saw its images, from the flags the checkpoint
    records (resolved against `model`'s pretrained cfg, as its training resolved them), or None
    for a checkpoint without a record (a bare state_dict, safetensors)."""
    recorded = load_training_metadata(checkpoint).get('args') or {}
    if 'model' not in recorded:
        return None
    flags = {key: recorded[key] for key in PREPROCESSING_KEYS if key in recorded}
    return resolve_data_config(flags, model=model)


def input_adapter(
    spec: TeacherSpec, model: nn.Module, student_config: Mapping[str, Any], from_record: bool
) -> InputAdapter:
    """The adapter from the student's batch (`student_config`: mean, std, input size) to what
    `model` was trained on: its pretrained config, or with `from_record` (a bare architecture with
    a checkpoint) what the checkpoint records; the spec's own mean/std/input size override."""
    data_config = resolve_data_config({}, model=model)
    origin = 'its pretrained config'
    if from_record:
        data_config = recorded_preprocessing(spec.checkpoint, model)
        origin = f'as its checkpoint records its training ({spec.checkpoint})'
        if data_config is None:
            data_config = dict(
                mean=tuple(student_config['mean']),
                std=tuple(student_config['std']),
                input_size=tuple(student_config['input_size']),
                interpolation='bicubic',
            )
            origin = (
                f"the student's: its checkpoint {spec.checkpoint!r} records no training flags; "
                'pass --teacher-mean/--teacher-std/--teacher-input-size if it was trained otherwise'
            )
    size = spec.input_size or data_config['input_size']
    if spec.at_student_size and not spec.input_size:
        size = student_config['input_size']
        origin += (
            ", at the student's resolution (--kd-model-name: timm's task never resizes the "
            "teacher's input; --teacher feeds it at its own, --teacher-input-size sets it)"
        )
    if spec.mean or spec.std or spec.input_size:
        origin += ', with the --teacher-mean/--teacher-std/--teacher-input-size given'
    _logger.info(f'Teacher {spec.name} preprocessing: {origin}')
    return InputAdapter(
        student_config['mean'],
        student_config['std'],
        tuple(spec.mean) if spec.mean else data_config['mean'],
        tuple(spec.std) if spec.std else data_config['std'],
        size=tuple(size)[-2:],
        interpolation=data_config.get('interpolation', 'bicubic'),
    )
