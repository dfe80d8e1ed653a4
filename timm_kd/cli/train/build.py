"""Building a training run from parsed flags: the data, the students' models, the teacher and the
typed run. `student_job` sets up each student's training state; `loop` wires these together."""

import argparse
import dataclasses
import importlib
import logging
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

import torch
from timm.data import AugMixDataset, resolve_data_config
from timm.layers import set_fast_norm
from timm.optim import optimizer_kwargs
from timm.scheduler import scheduler_kwargs
from timm.utils import set_jit_fuser

from ...data import (
    DatasetOptions,
    LoaderOptions,
    create_datasets,
    create_loaders,
    dataset_num_classes,
    mixup_args,
)
from ...dataset_views import IndexedTargets
from ...errors import KDError
from ...losses.config import loss_hyperparameters
from ...replay import make_replayable, replayable_views
from ...run import (
    CriterionSpec,
    EMASpec,
    LossSpec,
    OptimizerSpec,
    OutputSpec,
    ProcessSpec,
    RunSpec,
    ScheduleSpec,
    StudentSpec,
    TeacherSetup,
    TeacherSpec,
    freeze,
)
from ...runtime import Process
from ...stream import TrainingStream
from .kd_flags import TEACHER_OWN_FLAGS, loss_config
from .student_model import DTYPES, create_student

_logger = logging.getLogger(__name__)
T = TypeVar('T')


def options(cls: Type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """A library options dataclass filled from the flags of the same names."""
    fields = [f.name for f in dataclasses.fields(cls) if hasattr(args, f.name)]
    values = {name: freeze(getattr(args, name)) for name in fields}
    return cls(**{**values, **overrides})


def dataset_options(args: argparse.Namespace) -> DatasetOptions:
    return options(DatasetOptions, args)


def loader_options(args: argparse.Namespace) -> LoaderOptions:
    return options(LoaderOptions, args)


def training_stream(
    setup: 'Setup', process: Process, needs_index: bool = False
) -> Tuple[TrainingStream, Optional[Any], bool]:
    """The training stream as training and `cache build` both read it, built from the typed run
    alone: timm's loaders over replayable views (`timm_kd.replay`) with timm's prefetcher unless
    --no-prefetcher, mixup/cutmix until --mixup-off-epoch, sample indices as targets when a loss
    keeps per-sample state.

    Returns the stream, the eval loader (None without an eval set) and whether the views replay
    (not with scheduled batch sizes, `--train-img-sizes`).
    """
    run = setup.run
    train_set = IndexedTargets(setup.train_set) if needs_index else setup.train_set
    if run.views.aug_splits > 1:  # AugMix: each image's views, augmented as timm does
        if needs_index or run.data.unlabeled_data:
            raise KDError(
                f'--aug-splits {run.views.aug_splits} puts several views of an image in a batch; '
                'losses that keep per-sample state (crd) and --unlabeled-data need one view each'
            )
        train_set = AugMixDataset(train_set, num_splits=run.views.aug_splits)
    dtype = DTYPES[run.process.model_dtype] if run.process.model_dtype else None
    loader, eval_loader, mixup_fn = create_loaders(
        run.views,
        replayable_views(train_set, run.process.seed, process.rank),
        setup.eval_set,
        run.student_data_config,
        run.num_classes,
        process,
        prefetcher=run.process.prefetcher,
        img_dtype=dtype or torch.float32,
    )
    replayable = make_replayable(loader, process.rank)
    stream = TrainingStream(
        loader, mixup_fn, device=process.device, rank=process.rank, process=run.process,
        labels=train_set.targets.to(process.device) if needs_index else None,
        unlabeled=bool(run.data.unlabeled_data), views=run.views,
    )  # fmt: skip
    return stream, eval_loader, replayable


def setup_process_flags(args: argparse.Namespace) -> None:
    """Process-wide switches of timm's train.py: device backend modules, jit fuser, fast norm."""
    for module in args.device_modules or []:
        importlib.import_module(module)
    if args.fuser:
        set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()


def teacher_setup(args: argparse.Namespace) -> TeacherSetup:
    """Who teaches, from the flags: one --teacher with its --teacher-* flags, several (an
    ensemble, each with its own), or none."""
    own = {field: getattr(args, f'teacher_{field}') for field, _, _ in TEACHER_OWN_FLAGS}
    at_student_size = getattr(args, 'teacher_at_student_size', False)  # from --kd-model-name
    specs = args.teachers or (
        [dict(name=args.teacher, at_student_size=at_student_size, **own)] if args.teacher else []
    )
    # teacher settings given beside a cache without a teacher's name: the fingerprint keys of the
    # cache's teacher they must equal (a member's own, and the ensemble's mode)
    given = {f'teacher {field}': (flags[0], own[field], options['default'])
             for field, flags, options in TEACHER_OWN_FLAGS}  # fmt: skip
    given['ensemble'] = ('--teacher-ensemble', args.teacher_ensemble, 'prob')
    beside_cache = tuple(
        (key, flag, freeze(value))
        for key, (flag, value, default) in given.items()
        if args.teacher_cache and not specs and value != default
    )
    members = tuple(
        TeacherSpec(
            name=spec['name'],
            checkpoint=spec['checkpoint'],
            weight=spec['weight'],
            kwargs=freeze(spec['kwargs']),
            no_ema=spec['no_ema'],
            mean=freeze(spec['mean']),
            std=freeze(spec['std']),
            input_size=freeze(spec['input_size']),
            dtype=spec['dtype'],
            at_student_size=spec.get('at_student_size', False),
            class_map=spec.get('class_map'),  # absent from ensembles' args.yaml before it
        )
        for spec in specs
    )
    return TeacherSetup(
        members=members,
        ensemble=args.teacher_ensemble,
        temperature=args.kd_temperature or 1.0,
        dtype=args.teacher_dtype,
        amp=args.amp,
        amp_dtype=args.amp_dtype,
        channels_last=args.channels_last or args.teacher_channels_last,
        compile=args.teacher_compile,
        compile_mode=args.torchcompile_mode,
        inference_mode=args.teacher_inference_mode,
        allow_pickle=args.allow_unsafe_pickle,
        cache=args.teacher_cache,
        beside_cache=beside_cache,
    )


def student_spec(args: argparse.Namespace) -> StudentSpec:
    """A student's architecture and distillation terms, from its flags; each loss's
    hyperparameters resolved (its defaults, then the flags), so that a run and its reloaded
    args.yaml, which writes some of them, are one value."""
    weights, kwargs = loss_config(args)
    losses = LossSpec(
        names=tuple(weights),
        weights=tuple(weights.values()),
        kwargs=freeze({n: {**loss_hyperparameters(n), **kw} for n, kw in kwargs.items()}),
        student_stages=freeze(args.kd_student_stages),
        teacher_stages=freeze(args.kd_teacher_stages),
        deep_supervision=freeze(args.kd_deep_supervision),
        deep_supervision_weight=args.kd_deep_supervision_weight,
        ori_weight=args.ori_loss_weight,
        distill_token=args.kd_distill_type == 'token',
    )
    criterion = CriterionSpec(
        jsd=args.jsd_loss,
        bce=args.bce_loss,
        smoothing=args.smoothing,
        soft_targets=mixup_args(loader_options(args), 0) is not None,
        bce_target_thresh=args.bce_target_thresh,
        bce_sum=args.bce_sum,
        bce_pos_weight=args.bce_pos_weight,
    )
    optimizer = OptimizerSpec(
        kwargs=freeze({**optimizer_kwargs(cfg=args), **args.opt_kwargs}),
        lr=args.lr,
        lr_base=args.lr_base,
        lr_base_size=args.lr_base_size,
        lr_base_scale=args.lr_base_scale,
        clip_grad=args.clip_grad,
        clip_mode=args.clip_mode,
    )
    schedule = ScheduleSpec(kwargs=freeze(scheduler_kwargs(args)), start_epoch=args.start_epoch)
    ema = EMASpec(
        enabled=args.model_ema,
        decay=args.model_ema_decay,
        warmup=args.model_ema_warmup,
        force_cpu=args.model_ema_force_cpu,
    )
    return StudentSpec(
        model=args.model,
        losses=losses,
        criterion=criterion,
        optimizer=optimizer,
        schedule=schedule,
        ema=ema,
        output=options(OutputSpec, args),  # its fields carry the flags' names
        compile=args.torchcompile,
        compile_mode=args.torchcompile_mode,
        ddp_broadcast_buffers=not args.no_ddp_bb,
    )


def run_spec(
    args: argparse.Namespace,
    num_classes: int,
    data_config: Dict[str, Any],
    student_flags: Sequence[argparse.Namespace] = (),
) -> RunSpec:
    """The typed run of the flags, with the derived class count and the student's data config."""
    process = ProcessSpec(
        seed=args.seed,
        device=args.device,
        model_dtype=args.model_dtype,
        channels_last=args.channels_last,
        prefetcher=not args.no_prefetcher,
        grad_accum_steps=args.grad_accum_steps,
    )
    return RunSpec(
        data=dataset_options(args),
        views=loader_options(args),
        process=process,
        teachers=teacher_setup(args),
        num_classes=num_classes,
        data_config=freeze(data_config),
        students=tuple(student_spec(sargs) for sargs in student_flags),
    )


@dataclass
class Setup:
    """What training and `cache build` both start from: the datasets, the students (only for the
    data config, in a cache build) and the typed run."""

    run: RunSpec
    train_set: Any
    eval_set: Optional[Any]
    in_chans: int
    models: List[torch.nn.Module]


def setup_run(
    args: argparse.Namespace,
    student_flags: List[argparse.Namespace],
    process: Process,
    with_eval: bool = True,
) -> Setup:
    """Datasets, the students (the first resolves the stream's preprocessing) and the typed run."""
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    data = dataset_options(args)
    train_set, eval_set = create_datasets(
        data if with_eval else replace(data, val_split=''), in_chans
    )
    num_classes = args.num_classes or dataset_num_classes(train_set)
    models = []
    for sargs in student_flags:
        models.append(create_student(sargs, process, num_classes))
        num_classes = models[-1].num_classes
    data_config = resolve_data_config(vars(args), model=models[0], verbose=process.is_primary)
    run = run_spec(args, num_classes, data_config, student_flags)
    return Setup(run, train_set, eval_set, in_chans, models)
