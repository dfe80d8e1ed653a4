"""The small-data pitfall (VanillaKD Fig. 1 / Table 13): KD methods against training-set size.

    python -m timm_kd.experiments pitfall [--output pitfall_output]
        [--fractions 0.05 0.2 1.0] [--seeds 0 1]

For each training-set fraction (stratified, seeded subsets; epochs scaled so every cell takes the
same number of optimizer steps, as the paper's 4000/2000/1200 epochs), each seed, it trains the
student from scratch and with each KD method (kd, dkd, dist by default) from one teacher trained on
the full set, all through timm_kd.train. Default: Fashion-MNIST on a CPU (the demo's teacher and
student); `--dataset torch/cifar100 --data DIR` or an ImageFolder root work too. A finished cell is
never redone and an interrupted one resumes from its last checkpoint, so rerunning the command
continues the grid. Writes results.csv (one row per cell), results.md (mean over seeds) and
pitfall.png (top-1 gap of DKD and DIST over vanilla KD against training-set size, as Fig. 1).
"""

import argparse
import csv
import os
import statistics
import time
from typing import Dict, List

from ..demo import STUDENT, TEACHER, prepare_fashion_mnist
from ..plots import pyplot
from .common import cell, kd_args, replace_flag


def _train_size(data: str, dataset_args: List[str], fraction: float) -> int:
    from ...data import create_datasets
    from ..train.parse import parse_run

    run = parse_run([data, *dataset_args, '--train-fraction', str(fraction)])
    return len(create_datasets(run.data)[0])


def summarize(rows: List[Dict], methods: List[str], output: str) -> str:
    """results.md (mean top-1 over seeds, gaps over kd)
    and pitfall.png; returns the Markdown table."""
    fractions = sorted({r['fraction'] for r in rows})
    mean = {
        (f, m): statistics.mean(r['top1'] for r in rows if r['fraction'] == f and r['method'] == m)
        for f in fractions
        for m in ['scratch'] + methods
        if any(r['fraction'] == f and r['method'] == m for r in rows)
    }
    others = [m for m in methods if m != 'kd']
    head = ['fraction', 'train images', 'scratch'] + methods + [f'{m} - kd' for m in others]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for f in fractions:
        n = next(r['n_train'] for r in rows if r['fraction'] == f)
        cells = [f'{f:g}', str(n)] + [
            f'{mean[(f, m)]:.2f}' if (f, m) in mean else '-' for m in ['scratch'] + methods
        ]
        cells += [
            f'{mean[(f, m)] - mean[(f, "kd")]:+.2f}'
            if (f, m) in mean and (f, 'kd') in mean
            else '-'
            for m in others
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    table = '\n'.join(lines)
    with open(os.path.join(output, 'results.md'), 'w') as fh:
        fh.write(table + '\n')

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in others:
        xs, ys, errs = [], [], []
        for f in fractions:
            gaps = [
                a['top1'] - b['top1']
                for a in rows
                for b in rows
                if a['fraction'] == b['fraction'] == f
                and a['seed'] == b['seed']
                and a['method'] == m
                and b['method'] == 'kd'
            ]
            if gaps:
                xs.append(next(r['n_train'] for r in rows if r['fraction'] == f))
                ys.append(statistics.mean(gaps))
                errs.append(statistics.stdev(gaps) if len(gaps) > 1 else 0)
        ax.errorbar(xs, ys, yerr=errs, marker='o', capsize=3, label=f'{m.upper()} - KD')
    ax.axhline(0, color='gray', lw=0.8)
    ax.set_xscale('log')
    sizes = sorted({r['n_train'] for r in rows})
    ax.set_xticks(sizes, [f'{n:,}' for n in sizes])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel('training images')
    ax.set_ylabel('top-1 gap over vanilla KD (points)')
    ax.set_title('Small-data pitfall')
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output, 'pitfall.png'), dpi=120)
    plt.close(fig)
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m timm_kd.experiments pitfall',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        '--output',
        default='pitfall_output',
        help='folder of the runs and the results (reruns continue it)',
    )
    p.add_argument(
        '--data', default=None, help='dataset root (default: OUTPUT/data with Fashion-MNIST)'
    )
    p.add_argument(
        '--dataset', default='torch/fashion_mnist', help="timm dataset name, '' for an ImageFolder"
    )
    p.add_argument(
        '--val-split', default='test', help="evaluation split ('validation' for an ImageFolder)"
    )
    p.add_argument(
        '--fractions',
        type=float,
        nargs='+',
        default=[0.05, 0.2, 1.0],
        help='training-set fractions (stratified, seeded)',
    )
    p.add_argument(
        '--methods',
        nargs='+',
        default=['kd', 'dkd', 'dist'],
        help='distillation losses compared with scratch',
    )
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help='one run per seed and cell')
    p.add_argument(
        '--epochs', type=int, default=1, help='student epochs on the full set (more on subsets)'
    )
    p.add_argument('--kd-temperature', type=float, default=4.0, help='temperature of every method')
    p.add_argument('-b', '--batch-size', type=int, default=128, help='images per batch')
    p.add_argument(
        '--teacher-checkpoint', default=None, help='default: train the demo teacher on the full set'
    )
    p.add_argument('--workers', type=int, default=1, help='data loader workers per run')
    return p


def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    output = os.path.abspath(args.output)
    data = os.path.abspath(args.data or os.path.join(output, 'data'))
    if args.data is None and args.dataset == 'torch/fashion_mnist':
        prepare_fashion_mnist(data)
    dataset_args = ['--dataset', args.dataset, '--val-split', args.val_split]
    batch = ['-b', str(args.batch_size)]
    if args.dataset != 'torch/fashion_mnist':  # the demo settings are for 1-channel Fashion-MNIST
        dataset_args += [
            '--input-size',
            '3',
            '32',
            '32',
            '--mean',
            '0.485',
            '0.456',
            '0.406',
            '--std',
            '0.229',
            '0.224',
            '0.225',
        ]
    teacher_ckpt = args.teacher_checkpoint
    if teacher_ckpt is None:
        print('== teacher (full training set)', flush=True)
        cell('teacher', dataset_args + TEACHER + batch, data, output, args.workers)
        teacher_ckpt = os.path.join(output, 'teacher', 'last.pth.tar')
    teacher_args = kd_args(teacher_ckpt, args.kd_temperature)
    cells = [
        (f, m, s) for f in args.fractions for s in args.seeds for m in ['scratch'] + args.methods
    ]
    train_sizes = {f: _train_size(data, dataset_args, f) for f in args.fractions}
    rows, start = [], time.time()
    for i, (fraction, method, seed) in enumerate(cells):
        name = f'f{fraction:g}_{method}_s{seed}'
        train = replace_flag(
            replace_flag(STUDENT, '--epochs', str(args.epochs)), '--seed', str(seed)
        )
        train = (
            dataset_args
            + train
            + batch
            + ['--train-fraction', str(fraction), '--train-fraction-keep-steps']
        )
        if method != 'scratch':
            train += teacher_args + ['--kd-loss', method]
        elapsed = time.time() - start
        eta = elapsed / i * (len(cells) - i) if i else 0
        print(
            f'== [{i + 1}/{len(cells)}] {name}  (elapsed {elapsed / 60:.1f} min, ETA '
            f'{eta / 60:.1f} min)',
            flush=True,
        )
        result = cell(name, train, data, output, args.workers)
        rows.append(
            dict(
                fraction=fraction,
                n_train=train_sizes[fraction],
                method=method,
                seed=seed,
                top1=result['top1'],
                seconds=result['seconds'],
            )
        )
    with open(os.path.join(output, 'results.csv'), 'w', newline='') as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = summarize(rows, args.methods, output)
    print('\n' + table + f'\n\nresults.csv, results.md, pitfall.png in {output}')
    return table
