"""How far the KD loss moves when the teacher cache keeps
only the top-K logits (`timm_kd.cache.rebuild_logits`).

    python benchmarks/cache_topk_error.py [--output demo_output]     # after `make demo`

Real models and data: the demo's Fashion-MNIST teacher and scratch student (`make demo`), on the 10k
test images. For each K and temperature T it prints the vanilla KD loss KL(p_T(teacher) ||
p_T(student)) * T^2 computed from the rebuilt teacher logits against the one from the full logits
(mean over images; relative error), for the exact layout and the compact one
(`timm_kd.cache.layout`), and what the compact layout adds to the exact one at the same K
(`compact_vs_exact_max`: the largest relative difference), as one table and one JSON line.
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
    teacher = load_student(os.path.join(args.output, 'teacher', 'last.pth.tar'))
    student = load_student(os.path.join(args.output, 'scratch', 'last.pth.tar'))
    config = resolve_data_config({}, model=teacher)
    loader = create_eval_loader(
        'torch/fashion_mnist', os.path.join(args.output, 'data'), 'test', config, 256, 1
    )
    t, s = logits_of(teacher, loader), logits_of(student, loader)
    classes = t.shape[1]
    ks = [k for k in (1, 2, 3, 5, classes) if k <= classes]
    rows = top_k_loss_error(t, s, ks, args.temperatures)
    compact = top_k_loss_error(t, s, ks, args.temperatures, layout='compact')
    print(
        f'{len(t)} Fashion-MNIST test images, {classes} classes: vanilla KD loss from top-K '
        'teacher logits, exact and compact layouts'
    )
    print('| K | T | exact loss | top-K loss | relative error | compact: relative error | '
          'compact vs exact layout |\n|---|---|---|---|---|---|---|')  # fmt: skip
    added = []
    for r, c in zip(rows, compact):
        added.append(abs(c['top_k'] - r['top_k']) / r['top_k'] if r['top_k'] else 0.0)
        print(
            f'| {r["k"]} | {r["temperature"]:g} | {r["exact"]:.5f} | {r["top_k"]:.5f} | '
            f'{100 * r["relative_error"]:.2f}% | {100 * c["relative_error"]:.2f}% | '
            f'{added[-1]:.1e} |'
        )
    print(json.dumps({'images': len(t), 'classes': classes, 'loss': rows, 'compact': compact,
                      'compact_vs_exact_max': max(added)}))  # fmt: skip


if __name__ == '__main__':
    main()
