"""What the teacher-output cache buys: a cached KD step against the plain student step, the live KD
step and timm's `LogitDistillationTask` step, data loading included, measured in one process; and
the build's cost.

    python benchmarks/kd_cache.py --preset cpu  # resnet18 <- resnet50, 64px (minutes on 2 cores)
    python benchmarks/kd_cache.py --preset gpu  # resnet50 <- beitv2_base, beitv2_large; 224px, bf16

A folder of random images is read through the training loader (replayable views, timm's prefetcher
as in training, RandAugment, mixup/cutmix); the teacher has random weights (speed does not depend on
them). `timm_kd.cache build` stores the top-K answers for two epochs (the second one's throughput,
warm, is compared with teacher-only inference over the same loader, also warm); then, interleaved
per repetition, one pass over the epoch's batches with each step: the plain student step, our live
KD step, our cached KD step (`CachedTeacher`) and timm's KD step, each with its SGD update. Prints a
table per teacher, then one JSON line: ms per step, `cached_vs_plain` (cached / plain),
`cached_vs_live`, `speedup_vs_timm` (timm's / cached), `build_vs_teacher_inference` (build images/s
/ teacher-only images/s), `read_samples_per_s` (cache rows rebuilt to logits per second, one
reader), `bytes_per_sample_epoch` and the disk that ImageNet-1k x 300 epochs takes at K = 10 and
100.
"""

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import timm
import torch
import torch.nn as nn
from PIL import Image
from timm.task import DistillationTeacher, LogitDistillationTask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kd_step import sgd_step  # noqa: E402

from timm_kd import DistillationTask, KDStudent, create_kd_loss  # noqa: E402
from timm_kd.cache import CachedTeacher, TeacherCache
from timm_kd.cli.cache import build  # noqa: E402
from timm_kd.data import DatasetOptions, LoaderOptions, create_datasets, create_loaders  # noqa
from timm_kd.reliability import reseed  # noqa: E402
from timm_kd.replay import ReplayableViews, make_replayable  # noqa: E402
from timm_kd.run import TeacherSetup, TeacherSpec, freeze  # noqa: E402
from timm_kd.runtime import Process  # noqa: E402
from timm_kd.stream import set_loader_epoch  # noqa: E402
from timm_kd.teacher import create_teacher  # noqa: E402

PRESETS = {
    'cpu': dict(
        student='resnet18',
        teachers=['resnet50'],
        img_size=64,
        batch_size=32,
        steps=8,
        workers=1,
        amp=False,
    ),
    'gpu': dict(
        student='resnet50',
        teachers=['beitv2_base_patch16_224', 'beitv2_large_patch16_224'],
        img_size=224,
        batch_size=128,
        steps=16,
        workers=8,
        amp=True,
    ),
}
IMAGENET = 1_281_167


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--preset', choices=list(PRESETS), default='cpu')
    p.add_argument('--student')
    p.add_argument('--teachers', nargs='+')
    p.add_argument('--img-size', type=int)
    p.add_argument('--batch-size', type=int)
    p.add_argument('--steps', type=int, help='batches per pass (the epoch)')
    p.add_argument('--workers', type=int)
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--top-k', type=int, default=10)
    p.add_argument('--repeats', type=int, default=3)
    args = p.parse_args()
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args


def image_folder(root, n, size, classes):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = os.path.join(root, 'train', f'c{i % min(10, classes)}')
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            os.path.join(folder, f'{i}.jpg')
        )


def bench_teacher(args, teacher_name, data, work, device):
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else nullcontext
    kwargs = dict(img_size=args.img_size) if 'patch' in teacher_name else {}
    torch.manual_seed(0)
    weights = os.path.join(work, f'{teacher_name}.pth')
    torch.save(
        timm.create_model(teacher_name, num_classes=args.num_classes, **kwargs).state_dict(),
        weights,
    )
    flags = [
        data,
        '--model',
        args.student,
        '--img-size',
        str(args.img_size),
        '-b',
        str(args.batch_size),
        '-j',
        str(args.workers),
        '--num-classes',
        str(args.num_classes),
        '--aa',
        'rand-m7-mstd0.5',
        '--mixup',
        '0.1',
        '--cutmix',
        '1.0',
        '--epochs',
        '2',
        '--teacher',
        teacher_name,
        '--teacher-checkpoint',
        weights,
        '--log-interval',
        '1000',
        '--device',
        device.type,
    ]
    flags += ['--teacher-kwargs', f'img_size={args.img_size}'] if kwargs else []
    flags += ['--amp', '--amp-dtype', 'bfloat16'] if args.amp else []
    out = os.path.join(work, f'cache-{teacher_name}')
    build(['--top-k', str(args.top_k), '--out', out, *flags])

    train_set, _ = create_datasets(DatasetOptions(data_dir=data, val_split=''))  # train/ only
    opts = LoaderOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        aa='rand-m7-mstd0.5',
        mixup=0.1,
        cutmix=1.0,
    )
    student0 = timm.create_model(args.student, num_classes=args.num_classes)
    config = timm.data.resolve_data_config(
        {'input_size': (3, args.img_size, args.img_size)}, model=student0
    )
    # as training
    loader, _, mixup_fn = create_loaders(
        opts,
        ReplayableViews(train_set, 42),
        None,
        config,
        args.num_classes,
        Process(device),
        prefetcher=True,
    )
    make_replayable(loader)
    spec = TeacherSpec(teacher_name, weights, kwargs=freeze(kwargs))
    setup = TeacherSetup(amp=args.amp, amp_dtype='bfloat16')  # as training runs it
    teacher = create_teacher(spec, config, args.num_classes, setup, device=device)
    cached = CachedTeacher(TeacherCache(out), 0, device)

    def task(t):
        kd_student = KDStudent(copy.deepcopy(student0).to(device), {'kd': create_kd_loss('kd')})
        return DistillationTask(kd_student, nn.CrossEntropyLoss(), teacher=t, verbose=False).to(
            device
        )

    plain = copy.deepcopy(student0).to(device)
    tasks = {'live': task(teacher), 'cached': task(cached)}
    timm_task = LogitDistillationTask(
        copy.deepcopy(student0).to(device),
        DistillationTeacher(copy.deepcopy(teacher.model), device=device),
        criterion=nn.CrossEntropyLoss(),
        device=device,
        verbose=False,
    )
    opt = {
        name: torch.optim.SGD(m.parameters(), lr=0.01)
        for name, m in [('plain', plain), ('timm', timm_task.trainable_module)]
        + [(k, t.trainable_module) for k, t in tasks.items()]
    }
    ce = nn.CrossEntropyLoss()  # takes the soft targets of mixup/cutmix

    def step(name, x, y):
        with amp():
            if name == 'plain':
                loss = ce(plain(x), y)
            elif name == 'timm':
                loss = timm_task(x, y)['loss']
            elif name == 'teacher':
                teacher(x)
                return
            else:
                loss = tasks[name](x, y)['loss']
        sgd_step(loss, opt[name])

    def one_pass(name):
        reseed(42, 0)
        set_loader_epoch(loader, 0)
        cached.start_epoch(0)
        start = time.perf_counter()
        for x, y in loader:
            x, y = mixup_fn(x.to(device), y.to(device))
            step(name, x, y)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / len(loader)

    names = ['plain', 'live', 'cached', 'timm', 'teacher']
    times = {k: [] for k in names}
    for r in range(args.repeats + 1):  # the first pass warms up
        for name in names:
            t = one_pass(name)
            if r:
                times[name].append(t)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    rows = cached.cache.manifest['slots_per_rank']
    dummy = torch.zeros(args.batch_size, 1)
    cached.start_epoch(0)
    start = time.perf_counter()
    for _ in range(rows // args.batch_size):
        cached(dummy)
    read = rows // args.batch_size * args.batch_size / (time.perf_counter() - start)
    manifest = cached.cache.manifest
    value_bytes = 2 if manifest['value_dtype'] == 'float16' else 4
    index_bytes = 2 if args.num_classes <= 32767 else 4

    def per_sample(k):
        return k * (value_bytes + index_bytes) + 4

    return {
        'ms': {k: round(v, 2) for k, v in ms.items()},
        'build_images_per_s': round(manifest['build_images_per_s'], 1),
        'cached_vs_plain': round(ms['cached'] / ms['plain'], 3),
        'cached_vs_live': round(ms['cached'] / ms['live'], 3),
        'speedup_vs_timm': round(ms['timm'] / ms['cached'], 3),
        'build_vs_teacher_inference': round(
            manifest['build_images_per_s'] / (args.batch_size / ms['teacher'] * 1e3), 3
        ),
        'read_samples_per_s': round(read),
        'bytes_per_sample_epoch': per_sample(manifest['top_k']),
        'imagenet_300_epochs_GB': {
            k: round(per_sample(k) * IMAGENET * 300 / 1e9, 1) for k in (10, 100)
        },
    }


def main():
    args = parse_args()
    device = torch.device('cuda' if torch.cuda.is_available() and args.preset == 'gpu' else 'cpu')
    results = {}
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, 'data')
        image_folder(data, args.steps * args.batch_size, args.img_size, args.num_classes)
        for name in args.teachers:
            results[name] = r = bench_teacher(args, name, data, work, device)
            print(
                f'\n{args.student} <- {name}, batch {args.batch_size}, {args.img_size}px, '
                f'{device}, top-{args.top_k}, '
                f'{args.workers} workers, median of {args.repeats} passes of {args.steps} steps'
            )
            print('| step (data loading included) | ms |\n|---|---|')
            for k, v in r['ms'].items():
                print(f'| {k} | {v} |')
    print(
        json.dumps(
            {
                'preset': args.preset,
                'device': str(device),
                'student': args.student,
                'top_k': args.top_k,
                'results': results,
            }
        )
    )


if __name__ == '__main__':
    main()
