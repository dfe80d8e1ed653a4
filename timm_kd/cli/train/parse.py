"""From `timm-kd-train`'s flags to the typed run: `parse_run(argv)` parses (YAML config, timm's
aliases, `--student`), checks, and translates each student's flags into its part of one `RunSpec`,
so that nothing below the parser reads a namespace. `timm_kd.fit` trains the result."""

import argparse
import dataclasses
import json
import os
from typing import List, Optional, Sequence, Type, TypeVar

from timm.optim import optimizer_kwargs
from timm.scheduler import scheduler_kwargs

from ...checkpoint import model_keywords
from ...data import DatasetOptions, LoaderOptions, mixup_args
from ...losses.config import loss_hyperparameters
from ...run import (
    CriterionSpec,
    EMASpec,
    LoopSpec,
    LossSpec,
    ModelSpec,
    OptimizerSpec,
    OutputSpec,
    PreprocessSpec,
    ProcessSpec,
    RunSpec,
    ScheduleSpec,
    StudentSpec,
    TeacherSetup,
    TeacherSpec,
    freeze,
)
from .config import args_yaml, check_kd_flags_have_a_teacher, parse_args
from .kd_flags import TEACHER_OWN_FLAGS, loss_config
from .students import student_args

T = TypeVar('T')


def options(cls: Type[T], args: argparse.Namespace, **overrides) -> T:
    """A part of the typed run filled from the flags of its fields' names (`overrides` for the
    fields whose flag is named otherwise or translated)."""
    names = [f.name for f in dataclasses.fields(cls) if hasattr(args, f.name)]
    values = {name: freeze(getattr(args, name)) for name in names}
    return cls(**{**values, **overrides})


def dataset_options(args: argparse.Namespace) -> DatasetOptions:
    return options(DatasetOptions, args)


def loader_options(args: argparse.Namespace) -> LoaderOptions:
    return options(LoaderOptions, args)


def teacher_setup(args: argparse.Namespace) -> TeacherSetup:
    """Who teaches, from the flags: one --teacher with its --teacher-* flags, several (an
    ensemble, each with its own), or none."""
    own = {field: getattr(args, f'teacher_{field}') for field, _, _ in TEACHER_OWN_FLAGS}
    # timm's --kd-model-name: the teacher sees the student's resolution, as timm's task feeds it
    at_student_size = bool(args.kd_model_name)
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


def student_spec(args: argparse.Namespace, given: str = '', name: str = '') -> StudentSpec:
    """A student's part of the run, from its flags; each loss's hyperparameters resolved (its
    defaults, then the flags), so that a run and its reloaded args.yaml, which writes some of them,
    are one value. `given`: its flags as given (YAML), recorded for its args.yaml."""
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
        create=options(ModelSpec, args, keywords=freeze(model_keywords(vars(args)))),
        name=name,
        losses=losses,
        criterion=criterion,
        optimizer=optimizer,
        schedule=schedule,
        ema=ema,
        output=options(OutputSpec, args),
        compile=args.torchcompile,
        compile_mode=args.torchcompile_mode,
        ddp_broadcast_buffers=not args.no_ddp_bb,
        flags=json.dumps(vars(args), default=list, sort_keys=True),
        args_yaml=args_yaml(given, args) if given else '',
    )


def run_spec(args: argparse.Namespace, students: Sequence[StudentSpec] = ()) -> RunSpec:
    """The typed run of the shared flags, with `students` on it; the class count (--num-classes)
    and the data config are resolved from the data and the first student when it trains."""
    process = options(
        ProcessSpec,
        args,
        prefetcher=not args.no_prefetcher,
        allow_pickle=args.allow_unsafe_pickle,
        device_modules=freeze(args.device_modules or ()),
        fuser=args.fuser or '',
    )
    return RunSpec(
        data=dataset_options(args),
        views=loader_options(args),
        process=process,
        teachers=teacher_setup(args),
        num_classes=args.num_classes or None,
        students=tuple(students),
        preprocess=options(PreprocessSpec, args),
        loop=options(LoopSpec, args, wandb_tags=freeze(args.wandb_tags or ())),
    )


def parse_run(argv: Optional[List[str]] = None) -> RunSpec:
    """`timm-kd-train`'s command line (sys.argv without `argv`) as one typed run: the YAML
    config, timm's aliases (--kd-model-name, ...) and each `--student` resolved and checked."""
    args, text = parse_args(argv)
    students = []
    for sargs, given in student_args(args, text):
        check_kd_flags_have_a_teacher(sargs)
        name = os.path.basename(sargs.experiment) if args.students else ''
        students.append(student_spec(sargs, given, name))
    return run_spec(args, students)
