"""The frozen teacher: the student's augmented batch
in, teacher logits (and optionally features) out.

`Teacher` is the one interface the distillation task talks to. Anything with the same
`forward(images, stages=None) -> TeacherOutput` (an ensemble, a cache of teacher outputs) can stand
in its place.
"""

import logging
from typing import (
    Any,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
    runtime_checkable,
)

import torch
import torch.nn as nn

from .class_map import ClassMap, teacher_class_map
from .errors import KDError
from .features import Features, forward_features
from .run import TeacherSetup, TeacherSpec
from .teacher_input import InputAdapter, input_adapter
from .teacher_model import create_teacher_model, parse_teacher_name

_logger = logging.getLogger(__name__)

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


class TeacherOutput(NamedTuple):
    logits: torch.Tensor
    features: Optional[Features] = None


@runtime_checkable
class TeacherLike(Protocol):
    """What the task and the training loop ask of a teacher: `Teacher` (one live model),
    `timm_kd.ensemble.EnsembleTeacher` and `timm_kd.cache.CachedTeacher` all answer it."""

    @property
    def num_classes(self) -> int: ...

    def forward(
        self, images: torch.Tensor, stages: Optional[Sequence[int]] = None
    ) -> TeacherOutput:
        """Teacher logits for the student's batch (and its `Features` at `stages`)."""
        ...

    def forward_many(
        self, images: torch.Tensor, stage_sets: Sequence[Optional[Sequence[int]]]
    ) -> List[TeacherOutput]:
        """One pass for several students: one output per set of stages."""
        ...

    def compile(self, *args, **kwargs) -> 'TeacherLike': ...


def _clone(out: TeacherOutput) -> TeacherOutput:
    if out.features is None:
        return TeacherOutput(out.logits.clone())
    return TeacherOutput(
        out.logits.clone(),
        Features([m.clone() for m in out.features.maps], out.features.pre_logits.clone()),
    )


class Teacher(nn.Module):
    """A frozen timm model in eval mode that never builds an autograd graph.

    It is deliberately not a `TrainingTask` component that DDP wraps, and the task never saves it.
    The fast path, each part switchable: `inference_mode` (no autograd bookkeeping at all, on by
    default), weights cast to `dtype` (bf16/fp16 halves weight memory and skips autocast's per-step
    weight casts), `channels_last`, and `compile()` (adapter, cast and model as one graph, the
    frozen weights folded in as constants). A `class_map` answers over another label set
    (`timm_kd.class_map`).

    The teacher runs at its own precision, whatever autocast its caller is in: `autocast`, the
    dtype of the autocast it runs under (None: none). Weights cast to bfloat16/float16 run without
    autocast (autocast would mix their dtype with another and fail: BatchNorm, BEiT's attention);
    float32 weights run under the training's --amp dtype, as in timm. The training and the cache
    build therefore get the same answers.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: Optional[InputAdapter] = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        inference_mode: bool = True,
        autocast: Optional[torch.dtype] = None,
        class_map: Optional[ClassMap] = None,
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False).to(dtype=dtype)
        self.adapter = adapter if adapter is not None else nn.Identity()
        self.class_map = class_map
        self.dtype = dtype
        self.autocast = autocast if dtype == torch.float32 else None
        self.channels_last = channels_last
        self.inference_mode = inference_mode
        self._compiled = None
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    @property
    def num_classes(self) -> int:
        return self.class_map.num_classes if self.class_map is not None else self.model.num_classes

    def train(self, mode: bool = True) -> 'Teacher':
        """The teacher stays in eval mode whatever its
        parent asks (no dropout, frozen BN statistics)."""
        return super().train(False)

    def compile(
        self,
        backend: str = 'inductor',
        mode: Optional[str] = None,
        freeze: bool = True,
        **compile_kwargs,
    ) -> 'Teacher':
        """torch.compile the teacher's whole inference
        (adapter, cast, model); calling it again is a no-op.

        `freeze` (inductor only) folds the frozen weights into the graph as constants, which lets
        inductor fold BatchNorm into convolutions and pre-pack weights. Safe here because the
        teacher never changes.
        """
        if self._compiled is None:
            if backend == 'inductor' and freeze:
                from torch._inductor import list_mode_options

                compile_kwargs['options'] = {
                    **(list_mode_options(mode) if mode else {}),
                    'freezing': True,
                    **compile_kwargs.get('options', {}),
                }
                mode = None
            self._compiled = torch.compile(
                self._infer, backend=backend, mode=mode, **compile_kwargs
            )
        return self

    def _infer(self, images: torch.Tensor, stages: Optional[Tuple[int, ...]]) -> TeacherOutput:
        x = self.adapter(images).to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if stages is not None:
            logits, features = forward_features(self.model, x, stages)
        else:
            logits, features = self.model(x), None
        if self.class_map is not None:
            logits = self.class_map(logits)
        return TeacherOutput(logits, features)

    def forward(
        self, images: torch.Tensor, stages: Optional[Sequence[int]] = None
    ) -> TeacherOutput:
        """Teacher logits for the student's batch; with
        `stages` also its `Features` at those stages."""
        stages = tuple(stages) if stages is not None else None
        device = images.device.type
        precision = (
            torch.autocast(device, dtype=self.autocast)
            if self.autocast is not None
            else torch.autocast(device, enabled=False)
        )
        with torch.inference_mode() if self.inference_mode else torch.no_grad(), precision:
            out = (self._compiled or self._infer)(images, stages)
        # inference tensors cannot be saved for backward: hand out normal ones
        if self.inference_mode:
            out = _clone(out)
        return out

    def forward_many(
        self, images: torch.Tensor, stage_sets: Sequence[Optional[Sequence[int]]]
    ) -> List[TeacherOutput]:
        """One teacher pass serving several students:
        `stage_sets[i]` is what student i asks for (None: logits).

        The pass computes the union of the stages; each student gets its own stages, in its own
        order.
        """
        wanted = sorted({s for stages in stage_sets if stages is not None for s in stages})
        out = self(images, stages=wanted if wanted else None)
        if not wanted:
            return [out] * len(stage_sets)
        by_stage = dict(zip(wanted, out.features.maps))
        return [
            TeacherOutput(out.logits)
            if stages is None
            else TeacherOutput(
                out.logits, Features([by_stage[s] for s in stages], out.features.pre_logits)
            )
            for stages in stage_sets
        ]


def create_teacher(
    spec: Union[str, TeacherSpec],
    student_config: Mapping[str, Any],
    num_classes: int,
    setup: TeacherSetup = TeacherSetup(),
    device: Optional[torch.device] = None,
    class_names: Optional[Sequence[str]] = None,
    reads_logits: bool = True,
) -> Teacher:
    """Build a frozen teacher from a timm name (pretrained weights) or a `TeacherSpec`: a name
    plus a checkpoint, its own preprocessing and dtype. `student_config` is the student's data
    config (mean, std, input size: the batch the teacher is given); `setup` says how teachers run
    (dtype, channels_last, inference mode, whether pickled checkpoints may load).

    Classes: a teacher of another label set answers over the student's `num_classes` classes
    (named `class_names`, the dataset's) through its spec's `class_map` (`timm_kd.class_map`).
    Where the run's losses do not read the logits (`reads_logits` False: feature losses only),
    any teacher serves, headless ones (num_classes=0) included.

    Preprocessing: a pretrained teacher uses its pretrained cfg's mean/std/input size and
    interpolation. A teacher from a bare architecture plus a training checkpoint uses what the
    checkpoint records of its training (the `args` timm's train.py and timm-kd-train store); only
    a checkpoint without a record is assumed to have been trained with the student's, with a line
    saying so. The spec's `mean`, `std` and `input_size` (H W, or C H W) override any of them.
    """
    spec = TeacherSpec(spec) if isinstance(spec, str) else spec
    name, checkpoint, model_kwargs = spec.name, spec.checkpoint, dict(spec.kwargs)
    dtype = spec.dtype or setup.dtype
    if dtype not in DTYPES:
        raise KDError(f'unknown --teacher-dtype {dtype!r}; choose one of: {", ".join(DTYPES)}')
    for key in ('num_classes', 'in_chans', 'pretrained'):
        if key in model_kwargs:
            raise KDError(
                f'--teacher-kwargs {key}={model_kwargs[key]} of teacher {name!r}: timm-kd sets '
                f'{key} itself (the class count from the data or the checkpoint, the channels from '
                f'the student); drop it from --teacher-kwargs'
            )
    in_chans = student_config['input_size'][0]
    model = create_teacher_model(
        name, checkpoint, in_chans, not spec.no_ema, setup.allow_pickle, num_classes, model_kwargs
    )
    class_map = teacher_class_map(
        spec.class_map, model, class_names, num_classes, reads_logits, name
    )

    source, _, tag = parse_teacher_name(name)
    adapter = input_adapter(
        spec, model, student_config, from_record=bool(checkpoint) and not (source or tag)
    )
    _logger.info(
        f'Teacher {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, '
        f'{model.num_classes} classes{f" mapped to {num_classes}" if class_map else ""}, '
        f'dtype {dtype}): {adapter.extra_repr()}'
    )
    teacher = Teacher(
        model,
        adapter,
        dtype=DTYPES[dtype],
        channels_last=setup.channels_last,
        inference_mode=setup.inference_mode,
        autocast=DTYPES[setup.amp_dtype] if setup.amp else None,
        class_map=class_map,
    )
    return teacher.to(device) if device is not None else teacher
