"""The frozen teacher: the student's augmented batch
in, teacher logits (and optionally features) out.

`Teacher` is the one interface the distillation task talks to. Anything with the same
`forward(images, stages=None) -> TeacherOutput` (an ensemble, a cache of teacher outputs) can stand
in its place.
"""

import logging
import os
import socket
import urllib.parse
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
from timm.models import (
    create_model,
    get_pretrained_cfg,
    is_model,
    parse_model_name,
    split_model_name_tag,
)

from .checkpoint import checkpoint_num_classes, load_state_dict
from .errors import KDError, flat
from .features import Features, forward_features
from .run import TeacherSetup, TeacherSpec
from .teacher_input import InputAdapter, input_adapter

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
    frozen weights folded in as constants).

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
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False).to(dtype=dtype)
        self.adapter = adapter if adapter is not None else nn.Identity()
        self.dtype = dtype
        self.autocast = autocast if dtype == torch.float32 else None
        self.channels_last = channels_last
        self.inference_mode = inference_mode
        self._compiled = None
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

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
            return TeacherOutput(*forward_features(self.model, x, stages))
        return TeacherOutput(self.model(x))

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


def _parse_teacher_name(name: str) -> Tuple[Optional[str], str, str]:
    """(source, architecture, tag): source is
    'hf-hub'/'local-dir' or None for a timm registry name."""
    try:
        source, model_name = parse_model_name(name)
    except ValueError:  # timm's answer to a path or a repo id without a prefix
        if os.path.isdir(name):
            fix = f'pass --teacher local-dir:{name} (a folder with config.json and its weights)'
        elif os.path.exists(name):
            fix = f'pass the architecture as --teacher ARCH and --teacher-checkpoint {name}'
        elif name.count('/') == 1 and not name.startswith(('.', '/', '~')):  # ORG/NAME
            fix = f'pass hf-hub:{name} for a Hugging Face Hub repository, or check the path'
        else:
            fix = 'check the path, or pass a timm name, hf-hub:ORG/NAME or local-dir:PATH'
        missing = '' if os.path.exists(name) else ': no such file or folder'
        raise KDError(f'teacher {name!r} is not a timm model name{missing}; {fix}') from None
    if source:
        return source, name, ''
    arch, tag = split_model_name_tag(model_name)
    return None, arch, tag


def _has_pretrained_source(name: str) -> bool:
    source, _, _ = _parse_teacher_name(name)
    if source:
        return True
    cfg = get_pretrained_cfg(name, allow_unregistered=True)
    return cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict)


# what timm's pretrained loading asks the Hub for, in this order
HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'open_clip_model.safetensors',
                    'open_clip_pytorch_model.bin')  # fmt: skip


def check_hub_reachable(
    name: str, what: str = 'teacher', fix: str = 'pass --teacher-checkpoint PATH'
) -> None:
    """Weights from the Hugging Face Hub that are neither cached nor reachable are one line at
    once: huggingface_hub would retry each file for about half a minute, logging every try.
    `what` names the model in the line ('teacher', '--model'), `fix` the other way to weights."""
    from huggingface_hub import constants, try_to_load_from_cache

    source, _, _ = _parse_teacher_name(name)
    cfg = None if source else get_pretrained_cfg(name, allow_unregistered=True)
    repo = name.split(':', 1)[1] if source == 'hf-hub' else cfg.hf_hub_id if cfg else None
    if not repo or constants.HF_HUB_OFFLINE:  # offline: huggingface_hub answers at once
        return
    repo_id, _, revision = repo.partition('@')
    for file in HUB_WEIGHT_FILES:
        if isinstance(try_to_load_from_cache(repo_id, file, revision=revision or None), str):
            return
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == 'https' else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=10).close()
    except OSError as e:
        raise KDError(
            f'no pretrained weights for {what} {name!r}: not in the local Hugging Face cache, '
            f'and the Hub ({constants.ENDPOINT}) cannot be reached ({e.strerror or e}); download '
            f'them once with network access (cached under HF_HOME), or {fix}'
        ) from None


def _create_teacher_model(
    name: str,
    checkpoint: Optional[str],
    in_chans: int,
    use_ema: bool,
    allow_pickle: bool,
    student_num_classes: int,
    model_kwargs: dict,
) -> nn.Module:
    source, arch, _ = _parse_teacher_name(name)
    if not source and not is_model(arch):
        raise KDError(
            f'unknown teacher model {name!r}; see timm.list_models() / timm.list_pretrained() '
            f'for valid names'
        )
    try:
        if checkpoint:
            state_dict = load_state_dict(checkpoint, use_ema=use_ema, allow_pickle=allow_pickle)
            num_classes = checkpoint_num_classes(arch, state_dict) or student_num_classes
            model = create_model(
                name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **model_kwargs
            )
            try:
                missing, unexpected = model.load_state_dict(state_dict, strict=False)
                problem = (
                    f'{len(missing)} missing keys e.g. {missing[:2]}, {len(unexpected)} unexpected '
                    f'e.g. {unexpected[:2]}'
                    if missing or unexpected
                    else ''
                )
            except RuntimeError as e:  # shape mismatches
                problem = next(
                    (line.strip() for line in str(e).splitlines() if 'size mismatch' in line),
                    str(e),
                )
            if problem:
                raise KDError(
                    f'teacher checkpoint {checkpoint!r} does not fit architecture {name!r} '
                    f'({problem[:200]}); pass the '
                    f'--teacher architecture (and --teacher-kwargs) the checkpoint was trained with'
                )
            return model
        if not _has_pretrained_source(name):
            raise KDError(
                f'teacher {name!r} has no pretrained weights in timm; pass --teacher-checkpoint '
                f'PATH or a name with a pretrained tag (timm.list_pretrained({arch + "*"!r}))'
            )
        check_hub_reachable(name)
        return create_model(name, pretrained=True, in_chans=in_chans, **model_kwargs)
    except KDError:
        raise
    except RuntimeError as e:
        raise KDError(f'could not create teacher {name!r}: {flat(e, 200)}') from None
    # hub/network errors come in many types (LocalEntryNotFoundError, OSError, HTTPError)
    except Exception as e:
        raise KDError(hub_miss(e, 'teacher', name, 'pass --teacher-checkpoint PATH')) from None


def is_hub_miss(e: Exception) -> bool:
    """Whether `e` says weights were neither in the Hugging Face cache nor downloadable."""
    return type(e).__name__ == 'LocalEntryNotFoundError' or 'offline' in str(e).lower()


def hub_miss(e: Exception, what: str, name: str, fix: str) -> str:
    """The one line for a failed download of pretrained weights (errors of many types:
    LocalEntryNotFoundError, OSError, HTTPError)."""
    reason = (
        'not in the local Hugging Face cache, and the Hub is unreachable or HF_HUB_OFFLINE=1'
        if is_hub_miss(e)
        else f'{type(e).__name__}: {flat(e, 120)}'
    )
    return (
        f'no pretrained weights for {what} {name!r} ({reason}); download them once with '
        f'network access (cached under HF_HOME), or {fix}'
    )


def create_teacher(
    spec: Union[str, TeacherSpec],
    student_config: Mapping[str, Any],
    num_classes: int,
    setup: TeacherSetup = TeacherSetup(),
    device: Optional[torch.device] = None,
) -> Teacher:
    """Build a frozen teacher from a timm name (pretrained weights) or a `TeacherSpec`: a name
    plus a checkpoint, its own preprocessing and dtype. `student_config` is the student's data
    config (mean, std, input size: the batch the teacher is given); `setup` says how teachers run
    (dtype, channels_last, inference mode, whether pickled checkpoints may load).

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
    model = _create_teacher_model(
        name, checkpoint, in_chans, not spec.no_ema, setup.allow_pickle, num_classes, model_kwargs
    )
    if model.num_classes != num_classes:
        raise KDError(
            f'teacher {name!r} predicts {model.num_classes} classes but the student has '
            f'{num_classes}; '
            f'use a teacher trained on the same label set (or set --num-classes to match)'
        )

    source, _, tag = _parse_teacher_name(name)
    adapter = input_adapter(
        spec, model, student_config, from_record=bool(checkpoint) and not (source or tag)
    )
    _logger.info(
        f'Teacher {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, '
        f'{num_classes} classes, dtype {dtype}): {adapter.extra_repr()}'
    )
    teacher = Teacher(
        model,
        adapter,
        dtype=DTYPES[dtype],
        channels_last=setup.channels_last,
        inference_mode=setup.inference_mode,
        autocast=DTYPES[setup.amp_dtype] if setup.amp else None,
    )
    return teacher.to(device) if device is not None else teacher
