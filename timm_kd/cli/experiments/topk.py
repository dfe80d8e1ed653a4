"""A student's top-1 against K, the teacher logits per
sample the teacher cache keeps, on a task with 100 classes.

    python -m timm_kd.experiments topk [--output topk_output] [--top-k 1 2 5 10 100]
        [--kd-temperatures 1 4]

Fashion-MNIST's 10 classes are too few for K to matter, and this machine has no CIFAR-100 or
ImageNet, so the task is built from Fashion-MNIST: "Fashion-MNIST pairs", each image two items side
by side (28x56 px), labelled 10 x (left item's class) + (right item's class). The 60,000 training
images make 30,000 training pairs and the 10,000 test images 5,000 test pairs (a seeded shuffle,
each image used once). A teacher unsure of one item spreads its probability over the classes that
share the other item: that is the structure a small K cuts off.

Runs, all through timm_kd.train with the demo's models and settings at 1x32x64 px (no flips: a flip
swaps the items): the teacher, the student from scratch, and at each KD temperature the student with
the live teacher and, for each K, a student trained from a cache built with `python -m timm_kd.cache
build --top-k K` (a cache holds logits, so one serves every temperature). Also the relative error of
the KD loss against K (teacher vs the scratch student on the test pairs, as
benchmarks/cache_topk_error.py). Every step is resumable: a rerun reuses what is done. Writes
results.md, results.json and topk.png.
"""

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import numpy as np
import torch

from ..demo import COMMON, STUDENT, TEACHER, prepare_fashion_mnist
from ..plots import pyplot
from .common import cell, kd_args, replace_flag

# the pairs' ImageFolder at 1x32x64: later flags override
# the demo's (COMMON) for Fashion-MNIST at 32x32
PAIRS = [
    '--dataset',
    '',
    '--val-split',
    'validation',
    '--input-size',
    '1',
    '32',
    '64',
    '--ratio',
    '1.8',
    '2.2',
    '--hflip',
    '0',
]


def write_pairs(data_root: str, out: str, seed: int = 0) -> None:
    """The 100-class ImageFolder OUT/{train,validation}/NN/*.png
    from Fashion-MNIST (unpacked in DATA_ROOT)."""
    if os.path.isfile(os.path.join(out, 'done')):
        return
    from PIL import Image
    from torchvision.datasets import FashionMNIST

    for split, train in (('train', True), ('validation', False)):
        items = FashionMNIST(data_root, train=train)
        images, labels = items.data.numpy(), items.targets.numpy()
        order = np.random.default_rng(seed).permutation(len(labels))
        for label in range(100):
            os.makedirs(os.path.join(out, split, f'{label:02d}'), exist_ok=True)
        for i, (a, b) in enumerate(zip(order[0::2], order[1::2])):
            label = 10 * labels[a] + labels[b]
            pair = Image.fromarray(np.concatenate([images[a], images[b]], axis=1))
            pair.save(os.path.join(out, split, f'{label:02d}', f'{i:05d}.png'))
    open(os.path.join(out, 'done'), 'w').close()


def build_cache(args: List[str], data: str, out: str, top_k: int, workers: int) -> None:
    """`python -m timm_kd.cache build` with a student run's flags
    (as demo.run passes them); resumes, or finds it done."""
    cmd = [
        sys.executable,
        '-m',
        'timm_kd.cache',
        'build',
        data,
        *COMMON,
        *args,
        '-j',
        str(workers),
        '--top-k',
        str(top_k),
        '--out',
        out,
    ]
    print(f'\n== cache K={top_k}: python -m timm_kd.cache {" ".join(cmd[3:])}', flush=True)
    subprocess.run(cmd, check=True)


@torch.no_grad()
def loss_error(
    output: str, pairs: str, ks: List[int], temperatures: List[float]
) -> List[Dict[str, float]]:
    """The KD loss's relative error against K: the
    teacher and the scratch student on the test pairs."""
    from timm.data import resolve_data_config

    from ...cache import top_k_loss_error
    from ...data import create_eval_loader
    from ...hub import load_student

    teacher = load_student(os.path.join(output, 'teacher', 'last.pth.tar'))
    student = load_student(os.path.join(output, 'scratch', 'last.pth.tar'))
    loader = create_eval_loader(
        '', pairs, 'validation', resolve_data_config({}, model=teacher), 256, 1
    )
    logits = {
        name: torch.cat([model(x) for x, _ in loader])
        for name, model in (('t', teacher), ('s', student))
    }
    return top_k_loss_error(logits['t'], logits['s'], ks, temperatures)


def plot(results: Dict[str, Any], ks: List[int], temperatures: List[float], out: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for t in temperatures:
        runs = results[f'T={t:g}']
        (line,) = ax.plot(
            ks,
            [runs[f'K={k}']['top1'] for k in ks],
            marker='o',
            label=f'KD from the cache, T = {t:g}',
        )
        ax.axhline(
            runs['live']['top1'], ls='--', color=line.get_color(), label=f'live teacher, T = {t:g}'
        )
    ax.axhline(results['scratch']['top1'], ls=':', color='gray', label='no teacher')
    ax.set(
        xscale='log',
        xlabel='K (teacher logits kept per sample, of 100)',
        ylabel='test top-1 (%)',
        title='Fashion-MNIST pairs (100 classes)',
    )
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'topk.png'), dpi=110)
    plt.close(fig)


def table(results: Dict[str, Any], ks: List[int], temperatures: List[float]) -> str:
    """Markdown: per K, the KD loss error and the student's
    top-1 at each temperature; then live and scratch."""
    error = {(r['k'], r['temperature']): r['relative_error'] for r in results['loss_error']}
    head = ['K of 100'] + [
        f'{what}, T = {t:g}' for t in temperatures for what in ('KD loss error', 'top-1 (%)')
    ]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for k in ks:
        cells = [
            f'{100 * error[(k, t)]:.2f}% | {results[f"T={t:g}"][f"K={k}"]["top1"]:.2f}'
            for t in temperatures
        ]
        lines.append(f'| {k} | ' + ' | '.join(cells) + ' |')
    lines.append(
        '| live teacher | '
        + ' | '.join(f'- | {results[f"T={t:g}"]["live"]["top1"]:.2f}' for t in temperatures)
        + ' |'
    )
    lines.append(
        '| no teacher | '
        + ' | '.join(f'- | {results["scratch"]["top1"]:.2f}' for _ in temperatures)
        + ' |'
    )
    return (
        f'Fashion-MNIST pairs (100 classes): teacher top-1 {results["teacher"]["top1"]:.2f}, the '
        "student's "
        f'top-1 after KD from the top-K cache\n\n' + '\n'.join(lines)
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m timm_kd.experiments topk',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        '--output',
        default='topk_output',
        help='folder of the runs and the results (reruns continue it)',
    )
    p.add_argument(
        '--top-k',
        type=int,
        nargs='+',
        default=[1, 2, 5, 10, 100],
        help='the K of each cache (100 = every class)',
    )
    p.add_argument(
        '--kd-temperatures',
        type=float,
        nargs='+',
        default=[1.0, 4.0],
        help="the paper's T = 1 and the demo's T = 4",
    )
    p.add_argument(
        '--teacher-epochs',
        type=int,
        default=int(TEACHER[TEACHER.index('--epochs') + 1]),
        help="the teacher's training epochs",
    )
    p.add_argument('--workers', type=int, default=1, help='data loader workers per run')
    return p


def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    output = os.path.abspath(args.output)
    prepare_fashion_mnist(os.path.join(output, 'data'))
    pairs = os.path.join(output, 'pairs')
    write_pairs(os.path.join(output, 'data'), pairs)

    teacher = PAIRS + replace_flag(TEACHER, '--epochs', str(args.teacher_epochs))
    results: Dict[str, Any] = {'teacher': cell('teacher', teacher, pairs, output, args.workers)}
    student = PAIRS + STUDENT
    results['scratch'] = cell('scratch', student, pairs, output, args.workers)
    for t in args.kd_temperatures:
        kd = (
            student
            + kd_args(os.path.join(output, 'teacher', 'last.pth.tar'), t)
            + ['--kd-loss', 'kd']
        )
        runs = results[f'T={t:g}'] = {
            'live': cell(f'kd-T{t:g}-live', kd, pairs, output, args.workers)
        }
        for k in args.top_k:
            # the cache holds logits: one serves every temperature
            cache = os.path.join(output, f'cache-k{k}')
            build_cache(kd, pairs, cache, k, args.workers)
            runs[f'K={k}'] = cell(
                f'kd-T{t:g}-k{k}', kd + ['--teacher-cache', cache], pairs, output, args.workers
            )
    results['loss_error'] = loss_error(output, pairs, args.top_k, args.kd_temperatures)
    with open(os.path.join(output, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    text = table(results, args.top_k, args.kd_temperatures)
    with open(os.path.join(output, 'results.md'), 'w') as f:
        f.write(text + '\n')
    plot(results, args.top_k, args.kd_temperatures, output)
    print('\n' + text + f'\n\nresults.md, results.json, topk.png in {output}')
    return text
