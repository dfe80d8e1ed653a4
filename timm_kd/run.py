"""The run as one frozen, typed value: what the data stream is, who teaches on it, and each student
trained on it (its losses, hard-label loss, optimizer, schedule, EMA and output).

A program (`timm_kd.cli.train`, `timm_kd.cli.cache`) translates its flags once into a `RunSpec`;
the stream, the cache build, the fingerprint, the teachers and each student's job are built from
it, and the library takes that value (or plain arguments), never a parser's namespace. Values that
are derived rather than given (the class count read from the data, the student's resolved data
config) are computed before the value is built, so nothing changes it afterwards. Every checkpoint
records it, versioned (`run_record`, read back by `run_from_record`).

Whether two runs are "the same" is decided from this value field by field (`identity`): every field
counts unless its metadata says otherwise (`NOT_IDENTITY`: worker counts, validation settings,
paths; `FILE`: a path whose file content counts rather than its name; `IF_SET`: counted when set),
so a new field is covered by construction. The teacher-output cache (`timm_kd.cache.fingerprint`)
is built on it.
"""

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .checkpoint import input_channels
from .data import DatasetOptions, LoaderOptions
from .identity import FILE, FILE_IF_SET, IF_SET, NOT_IDENTITY
from .losses import get_kd_loss_class


def as_json(value: Any) -> Any:
    """A value as JSON holds it (tuples as lists): how a record or a fingerprint is written, and
    what it is compared in."""
    return json.loads(json.dumps(value, default=list))


def freeze(value: Any) -> Any:
    """A parsed flag value as the run holds it: lists and dicts (from flags or YAML) as tuples, so
    the run is hashable and frozen."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher: a timm name (or hf-hub:/local-dir:), its weights and its own preprocessing."""

    name: str = field(metadata={'label': ''})  # the key is the member's own: 'teacher'
    checkpoint: Optional[str] = field(default=None, metadata=FILE)
    weight: float = 1.0  # its share in an ensemble
    kwargs: Tuple[Tuple[str, Any], ...] = ()  # timm.create_model arguments
    no_ema: bool = False
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    input_size: Optional[Tuple[int, ...]] = None
    dtype: Optional[str] = None  # None: the setup's dtype
    # timm's --kd-model-name: the teacher sees the student's resolution, as timm's distillation
    # task feeds it (renormalized, never resized); --teacher: its own resolution
    at_student_size: bool = field(default=False, metadata=IF_SET)
    # --teacher-class-map: a file naming each student class's teacher classes, or 'auto'
    # (`timm_kd.class_map`); the file counts by content
    class_map: Optional[str] = field(default=None, metadata=FILE_IF_SET)


def teacher_precision(dtype: str, amp: bool, amp_dtype: str) -> str:
    """'bfloat16', 'float32', or 'float32 under float16 autocast'."""
    return f'{dtype} under {amp_dtype} autocast' if amp and dtype == 'float32' else dtype


@dataclass(frozen=True)
class TeacherSetup:
    """Who teaches and how: one teacher, an ensemble of several, or none; and how they run.

    `temperature` is the KD temperature the targets are read at: an ensemble in 'prob' mode mixes
    its teachers' probabilities at it, so its target depends on it (`target_identity`).
    """

    members: Tuple[TeacherSpec, ...] = field(default=(), metadata={'label': 'teacher'})
    ensemble: str = 'prob'
    temperature: float = field(default=1.0, metadata=NOT_IDENTITY)  # see target_identity
    dtype: str = 'float32'
    amp: bool = False  # the teacher runs under the training's autocast
    amp_dtype: str = 'float16'
    channels_last: bool = field(default=False, metadata=NOT_IDENTITY)
    compile: Optional[str] = field(default=None, metadata=NOT_IDENTITY)
    compile_mode: Optional[str] = field(default=None, metadata=NOT_IDENTITY)
    inference_mode: bool = field(default=True, metadata=NOT_IDENTITY)
    allow_pickle: bool = field(default=False, metadata=NOT_IDENTITY)
    cache: Optional[str] = field(default=None, metadata=NOT_IDENTITY)  # train from a built cache
    # teacher settings given beside `cache` without a teacher's name (the cache fingerprint's key,
    # the flag, the value): compared with the cache's teacher (`timm_kd.cache.TeacherCache.check`)
    beside_cache: Tuple[Tuple[str, str, Any], ...] = field(default=(), metadata=NOT_IDENTITY)

    def precision(self) -> str:
        """The precision the teachers answer at (`timm_kd.teacher.Teacher`): cast weights run
        without autocast, float32 weights under the training's --amp dtype."""
        return teacher_precision(self.dtype, self.amp, self.amp_dtype)

    def target_identity(self) -> Dict[str, Any]:
        """What the teachers' target depends on beyond the teachers: an ensemble of probabilities
        mixes at the temperature; one teacher's logits (or a mean of logits) do not."""
        if len(self.members) > 1 and self.ensemble == 'prob':
            return {'temperature': self.temperature}
        return {}


@dataclass(frozen=True)
class ProcessSpec:
    """How the stream is run in each process: seed, precision, layout, accumulation, the students'
    autocast and pickle policy, and timm's process-wide switches (backend modules, jit fuser, fast
    norm). The teachers' own precision is the `TeacherSetup`'s, which counts for a cache."""

    seed: int = 42
    device: Optional[str] = field(default=None, metadata=NOT_IDENTITY)
    model_dtype: Optional[str] = None
    channels_last: bool = field(default=False, metadata=NOT_IDENTITY)
    prefetcher: bool = True  # timm's prefetcher erases whole batches on the device
    # the batches and their views follow the batch size alone (`timm_kd.stream`)
    grad_accum_steps: int = field(default=1, metadata=NOT_IDENTITY)
    amp: bool = field(default=False, metadata=NOT_IDENTITY)
    amp_dtype: str = field(default='float16', metadata=NOT_IDENTITY)
    allow_pickle: bool = field(default=False, metadata=NOT_IDENTITY)  # --allow-unsafe-pickle
    device_modules: Tuple[str, ...] = field(default=(), metadata=NOT_IDENTITY)
    fuser: str = field(default='', metadata=NOT_IDENTITY)
    fast_norm: bool = field(default=False, metadata=NOT_IDENTITY)


@dataclass(frozen=True)
class LoopSpec:
    """How the epochs are driven, as timm's train.py drives them: validation, logging and recovery
    intervals, the tracked metric, where to stop, BatchNorm across processes, the skipped-file
    limit, test-time augmentation, scheduled batch sizes' loss scale, wandb."""

    val_interval: int = 1
    val_start_epoch: int = 0
    log_interval: int = 50
    recovery_interval: int = 0
    eval_metric: str = 'top1'
    stop_epoch: Optional[int] = None
    dist_bn: str = 'reduce'
    max_skipped_fraction: float = 0.01
    synchronize_step: bool = False
    save_images: bool = False
    tta: int = 0
    variable_batch_loss_scale: str = 'none'
    log_wandb: bool = False
    wandb_project: Optional[str] = None
    wandb_tags: Tuple[str, ...] = ()
    wandb_resume_id: str = ''


@dataclass(frozen=True)
class PreprocessSpec:
    """The preprocessing flags timm's `resolve_data_config` reads beside the student's pretrained
    cfg; the resolved config is the run's `data_config`."""

    input_size: Optional[Tuple[int, ...]] = None
    img_size: Optional[int] = None
    in_chans: Optional[int] = None
    interpolation: str = ''
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    crop_pct: Optional[float] = None


@dataclass(frozen=True)
class LossSpec:
    """One student's distillation terms: the losses (resolved weights and hyperparameters), the
    stages the feature losses compare, deep supervision, and the hard-label weight.
    `distill_token`: the logit losses train the student's distillation head (DeiT's token, timm's
    `--kd-distill-type token`) and the hard-label loss its class head."""

    names: Tuple[str, ...] = ('kd',)
    weights: Tuple[float, ...] = (1.0,)
    kwargs: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...] = ()  # per loss, sorted
    student_stages: Tuple[int, ...] = (-1,)
    teacher_stages: Tuple[int, ...] = (-1,)
    deep_supervision: Tuple[int, ...] = ()
    deep_supervision_weight: float = 1.0
    ori_weight: float = 1.0
    distill_token: bool = False

    def reads_teacher_logits(self) -> bool:
        """Whether these terms read the teacher's logits (logit losses, deep supervision's
        heads); feature losses alone take any teacher, headless ones included."""
        kinds = {get_kd_loss_class(n).kind for n in self.names}
        return 'logit' in kinds or bool(self.deep_supervision)

    def needs(self, what: str) -> List[str]:
        """The losses that declare `what` ('needs_labels', 'needs_index', 'needs_features')."""
        return [n for n in self.names if getattr(get_kd_loss_class(n), what, False)]

    def weights_dict(self, has_teacher: bool) -> Dict[str, float]:
        return dict(zip(self.names, self.weights)) if has_teacher else {}


@dataclass(frozen=True)
class CriterionSpec:
    """The hard-label loss as timm's train.py picks it: the Jensen-Shannon consistency loss over
    AugMix splits (`--jsd-loss`), BCE, or cross entropy on dense targets (mixup/cutmix) or on
    smoothed labels."""

    jsd: bool = False  # --jsd-loss, over the AugMix views of each image (the run's aug_splits)
    bce: bool = False
    smoothing: float = 0.1
    soft_targets: bool = False  # mixup/cutmix hand out dense targets
    bce_target_thresh: Optional[float] = None
    bce_sum: bool = False
    bce_pos_weight: Optional[float] = None


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer as timm's `optimizer_kwargs` translates the flags (with --opt-kwargs), the
    learning-rate rule (--lr, or --lr-base scaled to the global batch) and gradient clipping."""

    kwargs: Tuple[Tuple[str, Any], ...] = (('opt', 'sgd'),)
    lr: Optional[float] = None
    lr_base: float = 0.1
    lr_base_size: int = 256
    lr_base_scale: str = ''
    clip_grad: Optional[float] = None
    clip_mode: str = 'norm'

    @property
    def opt(self) -> str:
        return dict(self.kwargs)['opt']


@dataclass(frozen=True)
class ScheduleSpec:
    """The schedule as timm's `scheduler_kwargs` translates the flags (its plateau mode follows
    the metric the run tracks), and the epoch --start-epoch forces."""

    kwargs: Tuple[Tuple[str, Any], ...] = (('sched', 'cosine'),)
    start_epoch: Optional[int] = None


@dataclass(frozen=True)
class EMASpec:
    """timm's model EMA: on or off, decay, warmup, kept on the CPU."""

    enabled: bool = False
    decay: float = 0.9998
    warmup: bool = False
    force_cpu: bool = False


@dataclass(frozen=True)
class OutputSpec:
    """Where a student's run is written and what it resumes from."""

    output: str = ''
    experiment: str = ''
    resume: str = ''  # a checkpoint, 'auto' (the experiment's newest) or '' (none)
    no_resume_opt: bool = False
    checkpoint_hist: int = 10


@dataclass(frozen=True)
class ModelSpec:
    """How a student's model is created, as timm's train.py creates it: weights to start from,
    `create_model` keywords (input channels, drop rates, --gp, BatchNorm overrides,
    --model-kwargs: `timm_kd.checkpoint.model_keywords`), head init, gradient checkpointing,
    BatchNorm per AugMix split or synchronized, TorchScript."""

    pretrained: bool = False
    pretrained_path: Optional[str] = None
    initial_checkpoint: str = ''
    keywords: Tuple[Tuple[str, Any], ...] = ()
    head_init_scale: Optional[float] = None
    head_init_bias: Optional[float] = None
    grad_checkpointing: bool = False
    split_bn: bool = False
    sync_bn: bool = False
    torchscript: bool = False


# StudentSpec fields that record the flags a student was parsed from, for timm's readers (the
# checkpoints' `args`, args.yaml); the typed record (`run_record`) leaves them out
FLAG_RECORDS = {'record': 'flags'}


@dataclass(frozen=True)
class StudentSpec:
    """A student on the stream: its architecture and how it is created, distillation terms,
    hard-label loss, optimizer, schedule, EMA, compilation and output, each as timm's translators
    produce them from its flags.

    `flags` and `args_yaml` record the flags it was parsed from (JSON of the parsed flags, which
    its checkpoints store as timm's `args`; its args.yaml); a student built in code has none, and
    its checkpoints then record the typed run alone.
    """

    model: str
    create: ModelSpec = ModelSpec()
    name: str = ''  # among students given by --student: its log suffix, its wandb prefix
    losses: LossSpec = LossSpec()
    criterion: CriterionSpec = CriterionSpec()
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    ema: EMASpec = EMASpec()
    output: OutputSpec = OutputSpec()
    compile: Optional[str] = None  # --torchcompile backend
    compile_mode: Optional[str] = None
    ddp_broadcast_buffers: bool = True  # not --no-ddp-bb
    flags: str = field(default='', metadata=FLAG_RECORDS)
    args_yaml: str = field(default='', metadata=FLAG_RECORDS)

    @property
    def keywords(self) -> Dict[str, Any]:
        return dict(self.create.keywords)


@dataclass(frozen=True)
class RunSpec:
    """The data stream (where the images come from, their views, the process settings), the
    teachers, the students on it, and how the epochs are driven (`loop`).

    Two facts are derived rather than given: the class count (`--num-classes`, else read from the
    data) and the first student's data config (input size, mean/std, interpolation, crop: its
    pretrained cfg under the `preprocess` flags). `timm_kd.fit` resolves them before it builds
    anything; a run read from a checkpoint holds them resolved.
    """

    data: DatasetOptions
    views: LoaderOptions
    process: ProcessSpec
    teachers: TeacherSetup
    num_classes: Optional[int] = None
    data_config: Tuple[Tuple[str, Any], ...] = ()
    students: Tuple[StudentSpec, ...] = field(default=(), metadata=NOT_IDENTITY)
    preprocess: PreprocessSpec = field(default=PreprocessSpec(), metadata=NOT_IDENTITY)
    loop: LoopSpec = field(default=LoopSpec(), metadata=NOT_IDENTITY)

    @property
    def student_data_config(self) -> Dict[str, Any]:
        return dict(self.data_config)

    @property
    def in_chans(self) -> int:
        return input_channels(self.preprocess.in_chans, self.preprocess.input_size)


# The version of the run value a checkpoint records (`run_record`); `run_from_record` reads it
# and the earlier ones (1: before the model, preprocessing and loop settings, which then read as
# their defaults).
RUN_RECORD_FORMAT = 2


def run_record(run: RunSpec, student: int = 0) -> Dict[str, Any]:
    """The run value as a checkpoint records it beside timm's `args`: versioned, made of plain
    values only (so `torch.load(weights_only=True)` reads it), with the index of the checkpoint's
    student among the run's students."""
    value = as_json(dataclasses.asdict(run))
    records = [f.name for f in dataclasses.fields(StudentSpec) if f.metadata.get('record')]
    for spec in value['students']:
        for name in records:
            del spec[name]
    return {'format': RUN_RECORD_FORMAT, 'student': student, 'run': value}


def _value(kind: Any, data: Any) -> Any:
    """`data` read back as a value of the annotated type `kind`: dataclasses field by field,
    tuples of dataclasses item by item, anything else frozen as the run holds it."""
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: _value(hints[f.name], data[f.name])
                       for f in dataclasses.fields(kind) if f.name in data})  # fmt: skip
    items = [a for a in typing.get_args(kind) if a is not Ellipsis]
    if typing.get_origin(kind) is tuple and len(items) == 1 and dataclasses.is_dataclass(items[0]):
        return tuple(_value(items[0], item) for item in data)
    return freeze(data)


def run_from_record(record: Mapping[str, Any]) -> RunSpec:
    """The `RunSpec` a checkpoint recorded (`run_record`); a record of another format is refused."""
    if record.get('format') not in (1, RUN_RECORD_FORMAT):
        raise ValueError(
            f'run record format {record.get("format")!r}; this timm-kd reads 1 to '
            f'{RUN_RECORD_FORMAT}'
        )
    return _value(RunSpec, record['run'])


def recorded_student(
    saver_state: Optional[Mapping[str, Any]],
) -> Optional[Tuple[RunSpec, StudentSpec]]:
    """The run and the student a checkpoint's typed record holds (its saver state's `run`, as
    `load_training_metadata` returns it); None for a checkpoint without one."""
    record = (saver_state or {}).get('run')
    if not record:
        return None
    run = run_from_record(record)
    return run, run.students[record.get('student', 0)]
