"""Experiments on data and hardware you have: the small-data pitfall (VanillaKD Fig. 1 / Table 13), and
distillation from unlabeled images.

    python -m timm_kd.experiments pitfall [--output pitfall_output] [--fractions 0.05 0.2 1.0] [--seeds 0 1]
    python -m timm_kd.experiments unlabeled [--output unlabeled_output] [--fraction 0.1]

`unlabeled`: on Fashion-MNIST with the demo's teacher (trained on the full labeled set), a student trained with
labels on a `--fraction` of the training set, from scratch and with vanilla KD, then the same plus the whole
training set as unlabeled images (KD terms only, `--unlabeled-data`); the labeled-only runs take as many
optimizer steps as the unlabeled one (`--train-fraction-keep-steps`). Writes results.md and unlabeled.png.

`pitfall`:
For each training-set fraction (stratified, seeded subsets; epochs scaled so every cell takes the same number of
optimizer steps, as the paper's 4000/2000/1200 epochs), each seed, it trains the student from scratch and with
each KD method (kd, dkd, dist by default) from one teacher trained on the full set, all through timm_kd.train.
Default: Fashion-MNIST on a CPU (the demo's teacher and student); `--dataset torch/cifar100 --data DIR` or an
ImageFolder root work too. A finished cell is never redone and an interrupted one resumes from its last
checkpoint, so rerunning the command continues the grid. Writes results.csv (one row per cell), results.md (mean
over seeds) and pitfall.png (top-1 gap of DKD and DIST over vanilla KD against training-set size, as Fig. 1).
"""
import argparse
import csv
import json
import os
import statistics
import time
from typing import Dict, List

from .demo import STUDENT, TEACHER, prepare_fashion_mnist, run


def _replace(args: List[str], flag: str, value: str) -> List[str]:
    """Copy of a flag list with `flag`'s value set (appended when absent)."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
        return args
    return args + [flag, value]


def _cell(name: str, train_args: List[str], data: str, output: str, workers: int) -> Dict[str, float]:
    """Run one training cell unless its result.json exists; resumable through demo.run."""
    done = os.path.join(output, name, 'result.json')
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    result = run(name, train_args, data, output, workers)
    with open(done, 'w') as f:
        json.dump(result, f)
    return result


def _train_size(data: str, dataset_args: List[str], fraction: float) -> int:
    from .data import create_datasets
    from .train.build import dataset_options
    from .train.config import parse_args
    args, _ = parse_args([data, *dataset_args, '--train-fraction', str(fraction)])
    return len(create_datasets(dataset_options(args))[0])


def summarize(rows: List[Dict], methods: List[str], output: str) -> str:
    """results.md (mean top-1 over seeds, gaps over kd) and pitfall.png; returns the Markdown table."""
    fractions = sorted({r['fraction'] for r in rows})
    mean = {(f, m): statistics.mean(r['top1'] for r in rows if r['fraction'] == f and r['method'] == m)
            for f in fractions for m in ['scratch'] + methods
            if any(r['fraction'] == f and r['method'] == m for r in rows)}
    others = [m for m in methods if m != 'kd']
    head = ['fraction', 'train images', 'scratch'] + methods + [f'{m} - kd' for m in others]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for f in fractions:
        n = next(r['n_train'] for r in rows if r['fraction'] == f)
        cells = [f'{f:g}', str(n)] + [f'{mean[(f, m)]:.2f}' if (f, m) in mean else '-' for m in ['scratch'] + methods]
        cells += [f'{mean[(f, m)] - mean[(f, "kd")]:+.2f}' if (f, m) in mean and (f, 'kd') in mean else '-'
                  for m in others]
        lines.append('| ' + ' | '.join(cells) + ' |')
    table = '\n'.join(lines)
    with open(os.path.join(output, 'results.md'), 'w') as fh:
        fh.write(table + '\n')

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in others:
        xs, ys, errs = [], [], []
        for f in fractions:
            gaps = [a['top1'] - b['top1'] for a in rows for b in rows if a['fraction'] == b['fraction'] == f
                    and a['seed'] == b['seed'] and a['method'] == m and b['method'] == 'kd']
            if gaps:
                xs.append(next(r['n_train'] for r in rows if r['fraction'] == f))
                ys.append(statistics.mean(gaps))
                errs.append(statistics.stdev(gaps) if len(gaps) > 1 else 0)
        ax.errorbar(xs, ys, yerr=errs, marker='o', capsize=3, label=f'{m.upper()} - KD')
    ax.axhline(0, color='gray', lw=0.8)
    ax.set_xscale('log')
    sizes = sorted({r['n_train'] for r in rows})
    ax.set_xticks(sizes, [f'{n:,}' for n in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel('training images')
    ax.set_ylabel('top-1 gap over vanilla KD (points)')
    ax.set_title('Small-data pitfall')
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output, 'pitfall.png'), dpi=120)
    plt.close(fig)
    return table


def _kd_args(teacher_checkpoint: str, temperature: float) -> List[str]:
    """The demo teacher as a --teacher of a student run."""
    kd_args = ['--teacher', TEACHER[TEACHER.index('--model') + 1], '--teacher-checkpoint', teacher_checkpoint,
               '--kd-temperature', str(temperature)]
    if '--model-kwargs' in TEACHER:
        kd_args += ['--teacher-kwargs', *TEACHER[TEACHER.index('--model-kwargs') + 1:TEACHER.index('--epochs')]]
    return kd_args


def unlabeled(argv=None) -> str:
    p = argparse.ArgumentParser(prog='python -m timm_kd.experiments unlabeled', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--output', default='unlabeled_output')
    p.add_argument('--fraction', type=float, default=0.1, help='labeled share of the training set')
    p.add_argument('--epochs', type=int, default=2, help='epochs of the run with unlabeled images')
    p.add_argument('--kd-temperature', type=float, default=4.0)
    p.add_argument('--teacher-checkpoint', default=None, help='default: train the demo teacher on the full set')
    p.add_argument('--workers', type=int, default=1)
    args = p.parse_args(argv)
    output = os.path.abspath(args.output)
    data = os.path.join(output, 'data')
    prepare_fashion_mnist(data)
    dataset_args = ['--dataset', 'torch/fashion_mnist', '--val-split', 'test']
    teacher_ckpt = args.teacher_checkpoint
    if teacher_ckpt is None:
        _cell('teacher', dataset_args + TEACHER, data, output, args.workers)
        teacher_ckpt = os.path.join(output, 'teacher', 'last.pth.tar')
    # labeled-only runs: as many steps as `epochs` over the labeled + unlabeled (whole) set
    steps_epochs = round(args.epochs * (1 + args.fraction) / args.fraction)
    labeled = dataset_args + _replace(STUDENT, '--epochs', str(steps_epochs)) + ['--train-fraction', str(args.fraction)]
    kd = _kd_args(teacher_ckpt, args.kd_temperature)
    runs = {'scratch, labeled only': labeled,
            'KD, labeled only': labeled + kd,
            'KD, labeled + unlabeled': dataset_args + _replace(STUDENT, '--epochs', str(args.epochs)) + kd
            + ['--train-fraction', str(args.fraction), '--unlabeled-data', 'torch/fashion_mnist']}
    results = {}
    for i, (label, train) in enumerate(runs.items()):
        print(f'== [{i + 1}/{len(runs)}] {label}', flush=True)
        results[label] = _cell(f'run{i}', train, data, output, args.workers)
    table = (f'| run ({args.fraction:g} of the labels) | top-1 (%) | minutes |\n|---|---|---|\n' +
             ''.join(f'| {k} | {v["top1"]:.2f} | {v["seconds"] / 60:.1f} |\n' for k, v in results.items()))
    with open(os.path.join(output, 'results.md'), 'w') as f:
        f.write(table)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(list(results)[::-1], [v['top1'] for v in results.values()][::-1])
    low = min(v['top1'] for v in results.values())
    ax.set(xlim=(low - 3, max(v['top1'] for v in results.values()) + 1), xlabel='Fashion-MNIST test top-1 (%)',
           title=f'student with {args.fraction:.0%} of the labels')
    fig.tight_layout()
    fig.savefig(os.path.join(output, 'unlabeled.png'), dpi=110)
    print('\n' + table + f'\nresults.md, unlabeled.png in {output}')
    return table


def pitfall(argv=None) -> str:
    p = argparse.ArgumentParser(prog='python -m timm_kd.experiments pitfall', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--output', default='pitfall_output')
    p.add_argument('--data', default=None, help='dataset root (default: OUTPUT/data with Fashion-MNIST)')
    p.add_argument('--dataset', default='torch/fashion_mnist', help="timm dataset name, '' for an ImageFolder")
    p.add_argument('--val-split', default='test', help="evaluation split ('validation' for an ImageFolder)")
    p.add_argument('--fractions', type=float, nargs='+', default=[0.05, 0.2, 1.0])
    p.add_argument('--methods', nargs='+', default=['kd', 'dkd', 'dist'])
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--epochs', type=int, default=1, help='student epochs on the full set (more on subsets)')
    p.add_argument('--kd-temperature', type=float, default=4.0)
    p.add_argument('-b', '--batch-size', type=int, default=128)
    p.add_argument('--teacher-checkpoint', default=None, help='default: train the demo teacher on the full set')
    p.add_argument('--workers', type=int, default=1)
    args = p.parse_args(argv)
    output = os.path.abspath(args.output)
    data = os.path.abspath(args.data or os.path.join(output, 'data'))
    if args.data is None and args.dataset == 'torch/fashion_mnist':
        prepare_fashion_mnist(data)
    dataset_args = ['--dataset', args.dataset, '--val-split', args.val_split]
    batch = ['-b', str(args.batch_size)]
    if args.dataset != 'torch/fashion_mnist':  # the demo settings are for 1-channel Fashion-MNIST
        dataset_args += ['--input-size', '3', '32', '32', '--mean', '0.485', '0.456', '0.406',
                         '--std', '0.229', '0.224', '0.225']
    teacher_ckpt = args.teacher_checkpoint
    if teacher_ckpt is None:
        print('== teacher (full training set)', flush=True)
        _cell('teacher', dataset_args + TEACHER + batch, data, output, args.workers)
        teacher_ckpt = os.path.join(output, 'teacher', 'last.pth.tar')
    kd_args = _kd_args(teacher_ckpt, args.kd_temperature)
    cells = [(f, m, s) for f in args.fractions for s in args.seeds for m in ['scratch'] + args.methods]
    train_sizes = {f: _train_size(data, dataset_args, f) for f in args.fractions}
    rows, start = [], time.time()
    for i, (fraction, method, seed) in enumerate(cells):
        name = f'f{fraction:g}_{method}_s{seed}'
        train = _replace(_replace(STUDENT, '--epochs', str(args.epochs)), '--seed', str(seed))
        train = dataset_args + train + batch + ['--train-fraction', str(fraction), '--train-fraction-keep-steps']
        if method != 'scratch':
            train += kd_args + ['--kd-loss', method]
        elapsed = time.time() - start
        eta = elapsed / i * (len(cells) - i) if i else 0
        print(f'== [{i + 1}/{len(cells)}] {name}  (elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)', flush=True)
        result = _cell(name, train, data, output, args.workers)
        rows.append(dict(fraction=fraction, n_train=train_sizes[fraction], method=method,
                         seed=seed, top1=result['top1'], seconds=result['seconds']))
    with open(os.path.join(output, 'results.csv'), 'w', newline='') as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = summarize(rows, args.methods, output)
    print('\n' + table + f'\n\nresults.csv, results.md, pitfall.png in {output}')
    return table


def main(argv=None) -> None:
    import sys
    argv = sys.argv[1:] if argv is None else argv
    commands = {'pitfall': pitfall, 'unlabeled': unlabeled}
    if not argv or argv[0] not in commands:
        raise SystemExit('usage: python -m timm_kd.experiments pitfall|unlabeled [options]  (see --help)')
    commands[argv[0]](argv[1:])


if __name__ == '__main__':
    main()
