"""Cost of one KD training step against its floor (student step + one teacher inference) and against
timm's own `LogitDistillationTask`, on identical models, batch, dtype and device, measured in one
process.

    python benchmarks/kd_step.py --preset cpu         # resnet18 <- resnet50, 64px (minutes)
    python benchmarks/kd_step.py --preset cpu --fast  # + the fast teacher path (bf16, compile)
    python benchmarks/kd_step.py --preset gpu --fast  # resnet50 <- beitv2_base, 224px, bf16
    python benchmarks/kd_step.py --preset gpu --fast --compile --students 4
    python benchmarks/kd_step.py --preset gpu --fast --compile-mode reduce-overhead  # a CUDA graph
    python benchmarks/kd_step.py --preset cpu --ablation  # teacher inference per fast-path switch

Interleaved within each repetition (so machine drift hits them alike), median of repeats after
warm-up: the student's plain training step, the teacher's inference, our `DistillationTask` KD step
and timm's `LogitDistillationTask` step (SGD step included in every training step); with `--students
N` also one teacher pass serving N students (train_kd.py's `--student`). Prints a table, then one
JSON line with images/s, peak memory above the resident models and host-device syncs per step
(CUDA), the top-1 agreement of our teacher with the float32 eager teacher on the batch, and the
ratios `overhead_vs_floor` (ours / (student + teacher)), `speedup_vs_timm` (timm's / ours),
`memory_vs_bound` (our step's peak / (student step's + teacher inference's)) and
`per_student_vs_floor` (multi-student step per student / (student + teacher / N)).
"""

import argparse
import copy
import json
import statistics
import time
import warnings
from contextlib import nullcontext

import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.task import DistillationTeacher, LogitDistillationTask

from timm_kd import DistillationTask, InputAdapter, KDStudent, Teacher, create_kd_loss

PRESETS = {
    'cpu': dict(
        student='resnet18',
        teacher='resnet50',
        img_size=64,
        batch_size=32,
        amp=False,
        channels_last=True,
    ),
    'gpu': dict(
        student='resnet50',
        teacher='beitv2_base_patch16_224',
        img_size=224,
        batch_size=128,
        amp=True,
        channels_last=True,
    ),
}


def sgd_step(loss, optimizer):
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--preset', choices=list(PRESETS), default='cpu')
    p.add_argument('--student', help='any timm model (default: the preset)')
    p.add_argument('--teacher', help='any timm model, random weights (default: the preset)')
    p.add_argument('--img-size', type=int)
    p.add_argument('--batch-size', type=int)
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument(
        '--teacher-dtype',
        choices=['float32', 'bfloat16', 'float16'],
        default='float32',
        help='cast our teacher weights',
    )
    p.add_argument(
        '--teacher-compile', action='store_true', help='torch.compile our teacher (weights frozen)'
    )
    p.add_argument('--no-inference-mode', action='store_true', help='our teacher under no_grad')
    p.add_argument(
        '--fast',
        action='store_true',
        help='the fast teacher path: bf16 weights and --teacher-compile',
    )
    p.add_argument(
        '--compile', action='store_true', help='torch.compile the students (and both teachers)'
    )
    p.add_argument(
        '--compile-mode',
        help='torch.compile mode of every compile, e.g. reduce-overhead (CUDA graphs)',
    )
    p.add_argument(
        '--compile-backend',
        default='inductor',
        help='torch.compile backend of every compile (eager: only dynamo, for a quick check)',
    )
    p.add_argument(
        '--students',
        type=int,
        default=0,
        metavar='N',
        help='also time one teacher pass for N students',
    )
    p.add_argument(
        '--ablation', action='store_true', help='only time the teacher with each fast-path switch'
    )
    p.add_argument('--repeats', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    args = p.parse_args()
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.fast:
        args.teacher_dtype = 'bfloat16' if args.teacher_dtype == 'float32' else args.teacher_dtype
        args.teacher_compile = True
    return args


def measure(steps, warmup, repeats, device):
    """Median seconds and peak CUDA MiB above what was
    allocated before, per step, interleaved per repetition."""
    times = {k: [] for k in steps}
    peak = {}
    for r in range(warmup + repeats):
        for name, fn in steps.items():
            if device.type == 'cuda':
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                resident = torch.cuda.memory_allocated()
            start = time.perf_counter()
            fn()
            if device.type == 'cuda':
                torch.cuda.synchronize()
                peak[name] = (torch.cuda.max_memory_allocated() - resident) / 2**20
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, peak


def host_syncs(fn, device):
    """How many host-device synchronisations one call of
    `fn` makes (CUDA's sync debug mode); None on CPU."""
    if device.type != 'cuda':
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode('default')
    return sum('synchroniz' in str(w.message) for w in caught)


def agreement(teacher, reference_logits, x, amp):
    with amp():
        return (teacher(x).logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()


def ablation(args, teacher0, x, device, amp):
    """Teacher inference time (under autocast with --amp) and top-1 agreement with the
    float32 eager teacher without autocast, adding one fast-path switch at a time."""
    configs = [
        ('fp32, no_grad', dict(inference_mode=False), False),
        ('+ inference_mode', dict(), False),
        ('+ channels_last', dict(channels_last=True), False),
        ('+ bf16 weights', dict(channels_last=True, dtype=torch.bfloat16), False),
        ('+ compile', dict(channels_last=True, dtype=torch.bfloat16), True),
    ]
    teachers = {}
    for name, kwargs, compiled in configs:
        autocast = torch.bfloat16 if args.amp else None  # the training's, as timm's teacher
        teachers[name] = Teacher(copy.deepcopy(teacher0), **kwargs, autocast=autocast).to(device)
        if compiled:
            teachers[name].compile(args.compile_backend, mode=args.compile_mode)
    reference = teachers['fp32, no_grad'](x).logits.float()  # float32 weights, no autocast

    def infer(t):
        with amp():
            t(x)

    med, _ = measure(
        {k: (lambda t=t: infer(t)) for k, t in teachers.items()}, args.warmup, args.repeats, device
    )
    print(
        f'teacher {args.teacher}, batch {args.batch_size}, {args.img_size}px, {device}, median of '
        f'{args.repeats}'
    )
    print('| teacher inference | ms | speedup | top-1 agreement with fp32 |\n|---|---|---|---|')
    rows = {}
    for name, t in teachers.items():
        rows[name] = dict(
            ms=round(med[name] * 1e3, 2),
            speedup=round(med['fp32, no_grad'] / med[name], 3),
            agreement=round(agreement(t, reference, x, amp), 4),
        )
        print(
            f'| {name} | {rows[name]["ms"]} | {rows[name]["speedup"]} | {rows[name]["agreement"]} |'
        )
    print(json.dumps({'preset': args.preset, 'ablation': rows}))


def main():
    args = parse_args()
    device = torch.device('cuda' if torch.cuda.is_available() and args.preset == 'gpu' else 'cpu')
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else nullcontext
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    student0 = timm.create_model(args.student, num_classes=args.num_classes)
    teacher0 = (
        timm.create_model(args.teacher, num_classes=args.num_classes, img_size=args.img_size)
        if 'patch' in args.teacher
        else timm.create_model(args.teacher, num_classes=args.num_classes)
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
    if args.ablation:
        return ablation(args, teacher0, x, device, amp)

    def fresh_student():
        return copy.deepcopy(student0).to(device, memory_format=memory_format)

    teacher_dtype = getattr(torch, args.teacher_dtype)
    s_cfg, t_cfg = resolve_data_config({}, model=student0), resolve_data_config({}, model=teacher0)
    # as timm's task renormalizes
    adapter = InputAdapter(s_cfg['mean'], s_cfg['std'], t_cfg['mean'], t_cfg['std'])
    ours_teacher = Teacher(
        copy.deepcopy(teacher0),
        adapter,
        dtype=teacher_dtype,
        channels_last=args.channels_last,
        inference_mode=not args.no_inference_mode,
        autocast=torch.bfloat16 if args.amp else None,  # float32 weights: the run's autocast
    ).to(device)
    # float32, no autocast
    reference_logits = Teacher(copy.deepcopy(teacher0), adapter).to(device)(x).logits.float()
    if args.teacher_compile:
        ours_teacher.compile(args.compile_backend, mode=args.compile_mode)

    def ours_task():
        return DistillationTask(
            KDStudent(fresh_student(), {'kd': create_kd_loss('kd')}),
            nn.CrossEntropyLoss(),
            teacher=ours_teacher,
            verbose=False,
        ).to(device)

    ours = ours_task()
    many = [ours_task() for _ in range(args.students)]
    timm_teacher = DistillationTeacher(
        copy.deepcopy(teacher0).to(device, memory_format=memory_format), device=device
    )
    theirs = LogitDistillationTask(
        fresh_student(), timm_teacher, criterion=nn.CrossEntropyLoss(), device=device, verbose=False
    )
    plain = fresh_student()
    if args.compile:
        for task in [ours, theirs] + many:
            task.compile(backend=args.compile_backend, mode=args.compile_mode)
        plain = torch.compile(plain, backend=args.compile_backend, mode=args.compile_mode)
    opt = {
        name: torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
        for name, module in [
            ('student', plain),
            ('ours', ours.trainable_module),
            ('timm', theirs.trainable_module),
        ]
        + [(f'many{i}', task.trainable_module) for i, task in enumerate(many)]
    }
    ce = nn.CrossEntropyLoss()

    def student_step():
        with amp():
            loss = ce(plain(x), y)
        sgd_step(loss, opt['student'])

    def teacher_inference():
        with amp():
            ours_teacher(x)

    def ours_step():
        with amp():
            loss = ours(x, y)['loss']
        sgd_step(loss, opt['ours'])

    def timm_step():
        with amp():
            loss = theirs(x, y)['loss']
        sgd_step(loss, opt['timm'])

    def students_step():  # train_kd.py's loop with --student: one teacher pass, then each student
        with amp():
            teacher_outs = ours_teacher.forward_many(x, [None] * len(many))
        for i, (task, teacher_out) in enumerate(zip(many, teacher_outs)):
            with amp():
                loss = task(x, y, teacher_out=teacher_out)['loss']
            sgd_step(loss, opt[f'many{i}'])

    steps = {
        'student': student_step,
        'teacher': teacher_inference,
        'ours': ours_step,
        'timm': timm_step,
    }
    if many:
        steps[f'{len(many)} students'] = students_step
    med, peak = measure(steps, args.warmup, args.repeats, device)
    result = {
        'preset': args.preset,
        'device': torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu',
        'student': args.student,
        'teacher': args.teacher,
        'img_size': args.img_size,
        'batch_size': args.batch_size,
        'amp_bf16': args.amp,
        'teacher_dtype': args.teacher_dtype,
        'teacher_compile': args.teacher_compile,
        'inference_mode': not args.no_inference_mode,
        'compile': args.compile,
        'compile_mode': args.compile_mode,
        'compile_backend': args.compile_backend,
        'images_per_s': {k: round(args.batch_size / v, 1) for k, v in med.items()},
        'ms': {k: round(v * 1e3, 2) for k, v in med.items()},
        'peak_mib': {k: round(v) for k, v in peak.items()} or None,
        'teacher_top1_agreement_vs_fp32': round(
            agreement(ours_teacher, reference_logits, x, amp), 4
        ),
        'overhead_vs_floor': round(med['ours'] / (med['student'] + med['teacher']), 3),
        'speedup_vs_timm': round(med['timm'] / med['ours'], 3),
        'memory_vs_bound': round(peak['ours'] / (peak['student'] + peak['teacher']), 3)
        if peak
        else None,
        'host_syncs_per_step': {
            'ours': host_syncs(ours_step, device),
            'timm': host_syncs(timm_step, device),
        },
    }
    if many:
        n = len(many)
        result['per_student_ms'] = round(med[f'{n} students'] / n * 1e3, 2)
        result['per_student_vs_floor'] = round(
            med[f'{n} students'] / n / (med['student'] + med['teacher'] / n), 3
        )
    print(
        f'{args.student} <- {args.teacher}, batch {args.batch_size}, {args.img_size}px, '
        f'{result["device"]}, '
        f'teacher {args.teacher_dtype}{" compiled" if args.teacher_compile else ""}, amp '
        f'{args.amp}, compile {args.compile}, median of {args.repeats}'
    )
    print(
        '| step | ms | images/s |'
        + (' peak MiB |' if peak else '')
        + '\n|---|---|---|'
        + ('---|' if peak else '')
    )
    for k in steps:
        memory = f' {result["peak_mib"][k]} |' if peak else ''
        print(f'| {k} | {result["ms"][k]} | {result["images_per_s"][k]} |{memory}')
    ratios = [
        'teacher_top1_agreement_vs_fp32',
        'overhead_vs_floor',
        'speedup_vs_timm',
        'memory_vs_bound',
        'per_student_vs_floor',
    ]
    print('  '.join(f'{k} {result[k]}' for k in ratios if result.get(k) is not None))
    print(json.dumps(result))


if __name__ == '__main__':
    main()
