"""Cost of one KD training step against its floor (student step + one teacher inference) and against timm's
own `LogitDistillationTask`, on identical models, batch, dtype and device, measured in one process.

    python benchmarks/kd_step.py --preset cpu       # test_resnet-size student, resnet50 teacher, 64px (minutes, 2 cores)
    python benchmarks/kd_step.py --preset gpu       # resnet50 <- beitv2_base_patch16_224 (random weights), 224px, bf16
    python benchmarks/kd_step.py --preset gpu --compile

Four measurements, interleaved within each repetition (so machine drift hits them alike), median of repeats
after warm-up: the student's plain training step, the teacher's inference, our `DistillationTask` KD step and
timm's `LogitDistillationTask` step (SGD step included in every training step). Prints a table, then one JSON
line with images/s, peak memory (CUDA) and the ratios `overhead_vs_floor` (ours / (student + teacher)) and
`speedup_vs_timm` (timm's / ours).
"""
import argparse
import copy
import json
import statistics
import time
from contextlib import nullcontext

import timm
import torch
import torch.nn as nn
from timm.task import DistillationTeacher, LogitDistillationTask

from timm_kd import DistillationTask, KDStudent, Teacher, create_kd_loss

PRESETS = {
    'cpu': dict(student='resnet18', teacher='resnet50', img_size=64, batch_size=32, amp=False, channels_last=True),
    'gpu': dict(student='resnet50', teacher='beitv2_base_patch16_224', img_size=224, batch_size=128, amp=True,
                channels_last=True),
}


def sgd_step(loss, optimizer):
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=list(PRESETS), default='cpu')
    p.add_argument('--student')
    p.add_argument('--teacher')
    p.add_argument('--img-size', type=int)
    p.add_argument('--batch-size', type=int)
    p.add_argument('--teacher-dtype', choices=['float32', 'bfloat16', 'float16'], default=None,
                   help='cast the teacher weights (default: bfloat16 with --amp, else float32)')
    p.add_argument('--compile', action='store_true', help='torch.compile student and teacher')
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--num-classes', type=int, default=1000)
    args = p.parse_args()
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    device = torch.device('cuda' if torch.cuda.is_available() and args.preset == 'gpu' else 'cpu')
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else nullcontext
    teacher_dtype = getattr(torch, args.teacher_dtype or ('bfloat16' if args.amp else 'float32'))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    student0 = timm.create_model(args.student, num_classes=args.num_classes)
    teacher0 = timm.create_model(args.teacher, num_classes=args.num_classes, img_size=args.img_size) \
        if 'patch' in args.teacher else timm.create_model(args.teacher, num_classes=args.num_classes)

    def fresh_student():
        return copy.deepcopy(student0).to(device, memory_format=memory_format)

    ours_teacher = Teacher(copy.deepcopy(teacher0), dtype=teacher_dtype, channels_last=args.channels_last).to(device)
    ours = DistillationTask(KDStudent(fresh_student(), {'kd': create_kd_loss('kd')}), nn.CrossEntropyLoss(),
                            teacher=ours_teacher, verbose=False).to(device)
    timm_teacher = DistillationTeacher(copy.deepcopy(teacher0).to(device, memory_format=memory_format), device=device)
    theirs = LogitDistillationTask(fresh_student(), timm_teacher, criterion=nn.CrossEntropyLoss(), device=device,
                                   verbose=False)
    plain = fresh_student()
    if args.compile:
        ours.compile()
        theirs.compile()
        plain = torch.compile(plain)
    opt = {name: torch.optim.SGD(params, lr=0.01, momentum=0.9) for name, params in
           (('student', plain.parameters()), ('ours', ours.trainable_module.parameters()),
            ('timm', theirs.trainable_module.parameters()))}

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
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

    steps = {'student': student_step, 'teacher': teacher_inference, 'ours': ours_step, 'timm': timm_step}
    times = {k: [] for k in steps}
    peak = {}
    for r in range(args.warmup + args.repeats):
        for name, fn in steps.items():
            if device.type == 'cuda':
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            fn()
            if device.type == 'cuda':
                torch.cuda.synchronize()
                peak[name] = torch.cuda.max_memory_allocated() / 2 ** 20
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        'preset': args.preset, 'device': torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu',
        'student': args.student, 'teacher': args.teacher, 'img_size': args.img_size, 'batch_size': args.batch_size,
        'amp_bf16': args.amp, 'teacher_dtype': str(teacher_dtype).replace('torch.', ''), 'compile': args.compile,
        'images_per_s': {k: round(args.batch_size / v, 1) for k, v in med.items()},
        'ms': {k: round(v * 1e3, 2) for k, v in med.items()},
        'peak_mib': {k: round(v) for k, v in peak.items()} or None,
        'overhead_vs_floor': round(med['ours'] / (med['student'] + med['teacher']), 3),
        'speedup_vs_timm': round(med['timm'] / med['ours'], 3),
    }
    print(f'{args.student} <- {args.teacher}, batch {args.batch_size}, {args.img_size}px, {result["device"]}, '
          f'teacher {result["teacher_dtype"]}, amp {args.amp}, compile {args.compile}, median of {args.repeats}')
    print('| step | ms | images/s |' + (' peak MiB |' if peak else '') + '\n|---|---|---|' + ('---|' if peak else ''))
    for k in steps:
        print(f'| {k} | {result["ms"][k]} | {result["images_per_s"][k]} |' + (f' {result["peak_mib"][k]} |' if peak else ''))
    print(f'overhead_vs_floor {result["overhead_vs_floor"]}  speedup_vs_timm {result["speedup_vs_timm"]}')
    print(json.dumps(result))


if __name__ == '__main__':
    main()
