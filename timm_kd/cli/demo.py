"""The embedded demo: teacher, scratch student and KD
student on Fashion-MNIST, each trained by the library (`timm_kd.fit`) from `timm-kd-train` flags.

    python -m timm_kd.demo [--output demo_output] [--data DIR]

Fashion-MNIST is read from Debian's `dataset-fashion-mnist` package when installed
(/usr/share/datasets), else downloaded by torchvision. Prints a table (top-1, minutes) and writes
`demo_results.json`.
"""

import argparse
import csv
import gzip
import json
import os
import shutil
import time
from typing import Dict, List

from timm.utils import setup_default_logging

from ..errors import Interrupted, KDError, flat, one_line_errors
from ..training import fit
from .train.parse import parse_run

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
FILES = [
    'train-images-idx3-ubyte',
    'train-labels-idx1-ubyte',
    't10k-images-idx3-ubyte',
    't10k-labels-idx1-ubyte',
]

# Shared by all three runs: 1-channel 32px input, Fashion-MNIST
# statistics, light augmentation, SGD + cosine stepped per update.
COMMON = [
    '--dataset',
    'torch/fashion_mnist',
    '--train-split',
    'train',
    '--val-split',
    'test',
    '--input-size',
    '1',
    '32',
    '32',
    '--mean',
    '0.286',
    '--std',
    '0.353',
    '--crop-pct',
    '1.0',
    '--scale',
    '0.75',
    '1',
    '--ratio',
    '0.9',
    '1.1',
    '--color-jitter',
    '0',
    '--interpolation',
    'bilinear',
    '--train-interpolation',
    'bilinear',
    '--opt',
    'sgd',
    '--lr',
    '0.1',
    '--weight-decay',
    '5e-4',
    '--warmup-epochs',
    '0',
    '--sched-on-updates',
    '--smoothing',
    '0',
    '--channels-last',
    '--seed',
    '0',
    '--log-interval',
    '100',
]
HALF_WIDTH = ['channels=(32,64,128,256)', 'stem_width=32']
TEACHER = ['--model', 'resnet18', '--model-kwargs', *HALF_WIDTH, '--epochs', '4', '-b', '128']
# Both students (scratch and KD) get mixup/cutmix, as every strategy of the VanillaKD paper does
# (its Table 2): the teacher's soft labels of the mixed images are what KD adds over the mixed hard
# labels.
STUDENT = [
    '--model',
    'test_resnet',
    '--epochs',
    '2',
    '-b',
    '128',
    '--mixup',
    '0.4',
    '--cutmix',
    '1.0',
]
KD_TEMPERATURE = 4
KD = [
    '--teacher',
    'resnet18',
    '--teacher-kwargs',
    *HALF_WIDTH,
    '--kd-temperature',
    str(KD_TEMPERATURE),
    '--kd-loss',
    'kd',
]
LABELS = {
    'teacher': 'resnet18, half width, 4 ep',
    'scratch': 'test_resnet, 2 ep, mixup/cutmix',
    'kd': f'test_resnet, 2 ep, mixup/cutmix, KD T={KD_TEMPERATURE}',
}


def prepare_fashion_mnist(root: str) -> None:
    """Put the four idx files where torchvision's
    FashionMNIST reads them: ROOT/FashionMNIST/raw/."""
    raw = os.path.join(root, 'FashionMNIST', 'raw')
    if all(os.path.exists(os.path.join(raw, f)) for f in FILES):
        return
    os.makedirs(raw, exist_ok=True)
    if all(os.path.exists(os.path.join(DEBIAN_DIR, f + '.gz')) for f in FILES):
        for f in FILES:
            with (
                gzip.open(os.path.join(DEBIAN_DIR, f + '.gz'), 'rb') as src,
                open(os.path.join(raw, f), 'wb') as dst,
            ):
                shutil.copyfileobj(src, dst)
        print(f'Fashion-MNIST: unpacked from {DEBIAN_DIR}')
        return
    from torchvision.datasets import FashionMNIST

    print('Fashion-MNIST: not installed locally, downloading with torchvision')
    try:
        FashionMNIST(root, train=True, download=True)
        FashionMNIST(root, train=False, download=True)
    except RuntimeError as e:
        raise KDError(
            f"cannot download Fashion-MNIST ({flat(e)}); install Debian's "
            f'dataset-fashion-mnist or put the four idx files in {raw}'
        ) from None


def run(name: str, args: List[str], data: str, output: str, workers: int) -> Dict[str, float]:
    """Run one training (`timm_kd.fit` of its `timm-kd-train` flags); returns the last epoch's test
    top-1 and the wall time.

    An interrupted run (killed, Ctrl-C) is resumed where it stopped, from its newest checkpoint:
    `last.pth.tar` at an epoch's end or a recovery checkpoint written mid-epoch; a finished run is
    reused.
    """
    argv = [
        data,
        *COMMON,
        *args,
        '-j',
        str(workers),
        '--output',
        output,
        '--experiment',
        name,
        '--checkpoint-hist',
        '1',
        '--resume',
        'auto',
        '--recovery-interval',
        '200',
    ]
    print(f'\n== {name}: timm-kd-train {" ".join(argv)}', flush=True)
    start = time.time()
    try:
        fit(parse_run(argv))
    except Interrupted as e:  # Ctrl-C: the run wrote a recovery checkpoint
        raise Interrupted(
            f'the demo stopped during its {name} run; run the same command again to continue '
            'where it stopped',
            e.signum,
        ) from None
    seconds = time.time() - start
    with open(os.path.join(output, name, 'summary.csv')) as f:
        last = list(csv.DictReader(f))[-1]
    return {'top1': round(float(last['eval_top1']), 2), 'seconds': round(seconds, 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m timm_kd.demo',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        '--output', default='demo_output', help='folder for runs and demo_results.json'
    )
    parser.add_argument('--data', default=None, help='dataset root (default OUTPUT/data)')
    parser.add_argument('--workers', type=int, default=1, help='data loader workers per run')
    parser.add_argument(
        '--fresh',
        action='store_true',
        help='delete earlier runs in OUTPUT instead of resuming them',
    )
    return parser


def main(argv=None) -> Dict[str, Dict[str, float]]:
    """`python -m timm_kd.demo`: bad input is one line and exit 2."""
    with one_line_errors():
        return run_demo(argv)


def run_demo(argv=None) -> Dict[str, Dict[str, float]]:
    args = build_parser().parse_args(argv)
    output = os.path.abspath(args.output)
    data = os.path.abspath(args.data or os.path.join(output, 'data'))
    if args.fresh:
        for name in ('teacher', 'scratch', 'kd'):
            shutil.rmtree(os.path.join(output, name), ignore_errors=True)
    prepare_fashion_mnist(data)
    setup_default_logging()
    results = {'teacher': run('teacher', TEACHER, data, output, args.workers)}
    results['scratch'] = run('scratch', STUDENT, data, output, args.workers)
    teacher_ckpt = os.path.join(output, 'teacher', 'last.pth.tar')
    results['kd'] = run(
        'kd', STUDENT + KD + ['--teacher-checkpoint', teacher_ckpt], data, output, args.workers
    )
    with open(os.path.join(output, 'demo_results.json'), 'w') as f:
        json.dump(results, f, indent=2)

    gain = results['kd']['top1'] - results['scratch']['top1']
    print(
        '\nFashion-MNIST test set (10k images): the teacher, then the same student without and '
        'with KD\n'
    )
    print('| run     | model                                     | top-1 (%) | minutes |')
    print('|---------|-------------------------------------------|-----------|---------|')
    for name, r in results.items():
        print(f'| {name:<7} | {LABELS[name]:<41} | {r["top1"]:>9.2f} | {r["seconds"] / 60:>7.1f} |')
    print(
        f'\nKD student vs scratch student: {gain:+.2f} points top-1 '
        f'({"KD wins" if gain > 0 else "KD does not win"}). Results: {output}/demo_results.json'
    )
    return results
