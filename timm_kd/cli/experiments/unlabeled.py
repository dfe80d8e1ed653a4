"""Distillation from unlabeled images, on Fashion-MNIST.

    python -m timm_kd.experiments unlabeled [--output unlabeled_output] [--fraction 0.1]

With the demo's teacher (trained on the full labeled set), a student trained with labels on a
`--fraction` of the training set, from scratch and with vanilla KD, then the same plus the whole
training set as unlabeled images (KD terms only, `--unlabeled-data`); the labeled-only runs take as
many optimizer steps as the unlabeled one (`--train-fraction-keep-steps`). Writes results.md and
unlabeled.png.
"""

import argparse
import os

from ..demo import STUDENT, TEACHER, prepare_fashion_mnist
from ..plots import pyplot
from .common import cell, kd_args, replace_flag


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m timm_kd.experiments unlabeled',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        '--output',
        default='unlabeled_output',
        help='folder of the runs and the results (reruns continue it)',
    )
    p.add_argument('--fraction', type=float, default=0.1, help='labeled share of the training set')
    p.add_argument('--epochs', type=int, default=2, help='epochs of the run with unlabeled images')
    p.add_argument('--kd-temperature', type=float, default=4.0, help='temperature of the KD runs')
    p.add_argument(
        '--teacher-checkpoint', default=None, help='default: train the demo teacher on the full set'
    )
    p.add_argument('--workers', type=int, default=1, help='data loader workers per run')
    return p


def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    output = os.path.abspath(args.output)
    data = os.path.join(output, 'data')
    prepare_fashion_mnist(data)
    dataset_args = ['--dataset', 'torch/fashion_mnist', '--val-split', 'test']
    teacher_ckpt = args.teacher_checkpoint
    if teacher_ckpt is None:
        cell('teacher', dataset_args + TEACHER, data, output, args.workers)
        teacher_ckpt = os.path.join(output, 'teacher', 'last.pth.tar')
    # labeled-only runs: as many steps as `epochs` over the labeled + unlabeled (whole) set
    steps_epochs = round(args.epochs * (1 + args.fraction) / args.fraction)
    labeled = (
        dataset_args
        + replace_flag(STUDENT, '--epochs', str(steps_epochs))
        + ['--train-fraction', str(args.fraction)]
    )
    kd = kd_args(teacher_ckpt, args.kd_temperature)
    runs = {
        'scratch, labeled only': labeled,
        'KD, labeled only': labeled + kd,
        'KD, labeled + unlabeled': dataset_args
        + replace_flag(STUDENT, '--epochs', str(args.epochs))
        + kd
        + ['--train-fraction', str(args.fraction), '--unlabeled-data', 'torch/fashion_mnist'],
    }
    results = {}
    for i, (label, train) in enumerate(runs.items()):
        print(f'== [{i + 1}/{len(runs)}] {label}', flush=True)
        results[label] = cell(f'run{i}', train, data, output, args.workers)
    table = (
        f'| run ({args.fraction:g} of the labels) | top-1 (%) | minutes |\n|---|---|---|\n'
        + ''.join(
            f'| {k} | {v["top1"]:.2f} | {v["seconds"] / 60:.1f} |\n' for k, v in results.items()
        )
    )
    with open(os.path.join(output, 'results.md'), 'w') as f:
        f.write(table)
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(list(results)[::-1], [v['top1'] for v in results.values()][::-1])
    low = min(v['top1'] for v in results.values())
    ax.set(
        xlim=(low - 3, max(v['top1'] for v in results.values()) + 1),
        xlabel='Fashion-MNIST test top-1 (%)',
        title=f'student with {args.fraction:.0%} of the labels',
    )
    fig.tight_layout()
    fig.savefig(os.path.join(output, 'unlabeled.png'), dpi=110)
    print('\n' + table + f'\nresults.md, unlabeled.png in {output}')
    return table
