"""How far the KD loss moves when the teacher cache keeps only the top-K logits (`timm_kd.cache.rebuild_logits`).

    python benchmarks/cache_topk_error.py [--output demo_output]     # after `make demo`

Real models and data: the demo's Fashion-MNIST teacher and scratch student (`make demo`), on the 10k test
images. For each K and temperature T it prints the vanilla KD loss KL(p_T(teacher) || p_T(student)) * T^2
computed from the rebuilt teacher logits against the one from the full logits (mean over images; relative
error), as one table and one JSON line.
"""
import argparse
import json
import os

import torch
from timm.data import create_dataset, create_loader, resolve_data_config

from timm_kd.cache import rebuild_logits
from timm_kd.hub import load_student
from timm_kd.losses import create_kd_loss


@torch.no_grad()
def logits_of(model, loader):
    return torch.cat([model(x) for x, _ in loader])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--output', default='demo_output', help='the folder `make demo` wrote')
    p.add_argument('--temperatures', type=float, nargs='+', default=[1.0, 4.0])
    args = p.parse_args()
    teacher = load_student('resnet18', os.path.join(args.output, 'teacher', 'last.pth.tar'))
    student = load_student('test_resnet', os.path.join(args.output, 'scratch', 'last.pth.tar'))
    config = resolve_data_config({}, model=teacher)
    dataset = create_dataset('torch/fashion_mnist', root=os.path.join(args.output, 'data'), split='test')
    loader = create_loader(dataset, input_size=config['input_size'], batch_size=256, mean=config['mean'],
                           std=config['std'], crop_pct=config['crop_pct'], interpolation=config['interpolation'],
                           use_prefetcher=False)
    t, s = logits_of(teacher, loader), logits_of(student, loader)
    classes = t.shape[1]
    rows = {}
    print(f'{len(t)} Fashion-MNIST test images, {classes} classes: vanilla KD loss from top-K teacher logits')
    print('| K | T | exact loss | top-K loss | relative error |\n|---|---|---|---|---|')
    for k in [k for k in (1, 2, 3, 5, classes) if k <= classes]:
        top = t.topk(k, dim=1)
        tail = t.scatter(1, top.indices, float('-inf')).logsumexp(1)
        rebuilt = rebuild_logits(top.values, top.indices, tail, classes)
        for temperature in args.temperatures:
            kd = create_kd_loss('kd', temperature=temperature)
            exact, approx = kd(s, t, None).item(), kd(s, rebuilt, None).item()
            error = abs(approx - exact) / exact
            rows[f'K={k},T={temperature:g}'] = dict(exact=round(exact, 5), top_k=round(approx, 5),
                                                    relative_error=round(error, 5))
            print(f'| {k} | {temperature:g} | {exact:.5f} | {approx:.5f} | {100 * error:.2f}% |')
    print(json.dumps({'images': len(t), 'classes': classes, 'loss': rows}))


if __name__ == '__main__':
    main()
