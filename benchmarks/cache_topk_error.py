"""How far the KD loss moves when the teacher cache keeps only the top-K logits (`timm_kd.cache.rebuild_logits`).

    python benchmarks/cache_topk_error.py [--output demo_output]     # after `make demo`

Real models and data: the demo's Fashion-MNIST teacher and scratch student (`make demo`), on the 10k
test images. For each K and temperature T it prints the vanilla KD loss KL(p_T(teacher) ||
p_T(student)) * T^2 computed from the rebuilt teacher logits against the one from the full logits
(mean over images; relative error), as one table and one JSON line.
"""

import argparse
import json
import os

import torch
from timm.data import resolve_data_config

from timm_kd.cache import top_k_loss_error
from timm_kd.data import create_eval_loader
from timm_kd.hub import load_student


@torch.no_grad()
def logits_of(model, loader):
    return torch.cat([model(x) for x, _ in loader])


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--output', default='demo_output', help='the folder `make demo` wrote')
    p.add_argument('--temperatures', type=float, nargs='+', default=[1.0, 4.0])
    args = p.parse_args()
    teacher = load_student('resnet18', os.path.join(args.output, 'teacher', 'last.pth.tar'))
    student = load_student('test_resnet', os.path.join(args.output, 'scratch', 'last.pth.tar'))
    config = resolve_data_config({}, model=teacher)
    loader = create_eval_loader(
        'torch/fashion_mnist', os.path.join(args.output, 'data'), 'test', config, 256, 1
    )
    t, s = logits_of(teacher, loader), logits_of(student, loader)
    classes = t.shape[1]
    rows = top_k_loss_error(
        t, s, [k for k in (1, 2, 3, 5, classes) if k <= classes], args.temperatures
    )
    print(
        f'{len(t)} Fashion-MNIST test images, {classes} classes: vanilla KD loss from top-K '
        'teacher logits'
    )
    print('| K | T | exact loss | top-K loss | relative error |\n|---|---|---|---|---|')
    for r in rows:
        print(
            f'| {r["k"]} | {r["temperature"]:g} | {r["exact"]:.5f} | {r["top_k"]:.5f} | '
            f'{100 * r["relative_error"]:.2f}% |'
        )
    print(json.dumps({'images': len(t), 'classes': classes, 'loss': rows}))


if __name__ == '__main__':
    main()
