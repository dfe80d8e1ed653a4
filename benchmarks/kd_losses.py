"""Extra cost per training step of each distillation
method, relative to vanilla `kd`, measured in one run.

    python benchmarks/kd_losses.py  # the cpu preset: resnet18 student, resnet50 teacher, 64px
    python benchmarks/kd_losses.py --device cuda --img-size 224 --batch-size 128 --amp

Every method trains the same student from the same teacher (random weights: cost does not depend on
them) on the same batch: one full step (teacher forward, student forward/backward, optimizer step)
through `timm_kd.DistillationTask`. Steps of all methods are interleaved, repeated, and the median
is kept; the ratio is each method's step time over `kd`'s. Prints a table, then one JSON line.
"""

import argparse
import json
from contextlib import nullcontext

import timm
import torch
import torch.nn as nn
from kd_step import measure  # the same interleaved timing as benchmarks/kd_step.py

from timm_kd import DistillationTask, LossSpec, Teacher, create_kd_student, freeze, list_kd_losses

# CRD's cost grows with its negatives; 16384 is the paper's
EXTRA = {'crd': {'num_negatives': 4096}}


def build(method, args, device):
    torch.manual_seed(0)
    student = timm.create_model(args.student, num_classes=args.num_classes).to(device)
    teacher = Teacher(timm.create_model(args.teacher, num_classes=args.num_classes)).to(device)
    kd_student = create_kd_student(
        student,
        teacher,
        LossSpec(
            (method,),
            kwargs=freeze({method: EXTRA.get(method, {})}),
            student_stages=tuple(args.student_stages),
            teacher_stages=tuple(args.teacher_stages),
        ),
        input_size=(3, args.img_size, args.img_size),
        num_samples=args.num_samples,
    )
    task = DistillationTask(kd_student, nn.CrossEntropyLoss(), teacher=teacher, verbose=False).to(
        device
    )
    task.set_epoch(1)  # past ReviewKD's warm-up
    optimizer = torch.optim.SGD(kd_student.parameters(), lr=0.01, momentum=0.9)
    return task, optimizer


def step(task, optimizer, x, y, index, autocast):
    with autocast():
        loss = task(x, y, index=index)['loss']
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--student', default='resnet18')
    p.add_argument('--teacher', default='resnet50')
    p.add_argument('--student-stages', type=int, nargs='+', default=[2, 3, 4])
    p.add_argument('--teacher-stages', type=int, nargs='+', default=[2, 3, 4])
    p.add_argument('--methods', nargs='+', default=list_kd_losses())
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--num-classes', type=int, default=100)
    p.add_argument('--num-samples', type=int, default=50000, help='dataset size for CRD memory')
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    args = p.parse_args()
    device = torch.device(args.device)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else nullcontext
    )
    methods = ['kd'] + [m for m in args.methods if m != 'kd']
    runs = {m: build(m, args, device) for m in methods}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
    index = torch.randperm(args.num_samples, generator=g)[: args.batch_size].to(device)
    # interleaved, so drift in machine speed hits every method alike
    median, _ = measure(
        {m: (lambda m=m: step(*runs[m], x, y, index, autocast)) for m in methods},
        args.warmup,
        args.repeats,
        device,
    )
    print(
        f'{args.student} <- {args.teacher}, batch {args.batch_size}, {args.img_size}px, {device}, '
        f'median of {args.repeats} steps'
    )
    print('| method | ms / step | vs kd |\n|---|---|---|')
    for m in methods:
        print(f'| {m} | {median[m] * 1e3:.1f} | {median[m] / median["kd"]:.2f} |')
    print(
        json.dumps(
            {
                'config': vars(args),
                'ms_per_step': {m: round(v * 1e3, 2) for m, v in median.items()},
                'ratio_vs_kd': {m: round(v / median['kd'], 3) for m, v in median.items()},
            }
        )
    )


if __name__ == '__main__':
    main()
