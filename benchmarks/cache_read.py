"""What verifying the teacher-cache shards costs the reading of them.

    python benchmarks/cache_read.py [--epochs 4 --samples 500000 --top-k 10 --classes 1000]
        [--layout exact|compact|dense]

Writes synthetic shards (one per epoch) with the cache's writer (`timm_kd.cache.shards`), then
reads every epoch as training does (`CachedTeacher`: each batch's rows copied off the memory map
and rebuilt into full logits) with and without verification, alternating, on a warm page cache.
Verified, the first epoch's shard is checked when it opens and each next one in the background
while the previous is read. Prints one JSON line: samples/s of each and `verified_vs_plain` (1.0:
free; the target is at least 0.98), and `first_epoch_vs_plain` (the one check that is not hidden).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from functools import partial

import torch

from timm_kd.cache import CachedTeacher, top_k_logits
from timm_kd.cache.layout import LAYOUTS, Layout
from timm_kd.cache.shards import ShardWriter, open_shard


class _Cache:  # a TeacherCache without a manifest: only the shards
    def __init__(self, root, classes, layout):
        self.root, self.manifest, self.layout = root, {'num_classes': classes}, layout

    def open(self, epoch, rank, verify=True):
        return open_shard(self.root, epoch, rank, verify)


def _read(root, layout, verify, epochs, samples, batch) -> float:
    """Samples/s over `epochs` epochs (or the first alone when `epochs` is 1)."""
    cache = _Cache(root, layout.num_classes, layout)
    teacher = CachedTeacher(cache, 0, torch.device('cpu'), verify=verify)
    images = torch.empty(batch, 1)
    start = time.perf_counter()
    for epoch in range(epochs):
        teacher.start_epoch(epoch)
        for _ in range(samples // batch):
            teacher(images)
    if teacher._next is not None:
        teacher._next.result()  # the check of an epoch after the last is not left running
    return epochs * (samples // batch) * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--samples', type=int, default=500_000, help='per epoch')
    p.add_argument('--top-k', type=int, default=10)
    p.add_argument('--classes', type=int, default=1000)
    p.add_argument('--batch', type=int, default=256)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--layout', choices=LAYOUTS, default='exact')
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as root:
        torch.manual_seed(0)
        k = args.classes if args.layout == 'dense' else args.top_k  # dense: every class
        layout = Layout(args.layout, k, args.classes)
        for epoch in range(args.epochs):
            shard = ShardWriter(root, epoch, 0, layout.arrays(args.samples))
            for start in range(0, args.samples, 16384):
                rows = slice(start, min(start + 16384, args.samples))
                logits = torch.randn(rows.stop - rows.start, args.classes) * 3
                shard.write(rows, layout.encode(*top_k_logits(logits, k)))
            shard.commit()
        size = sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root))
        rates = {key: [] for key in ('plain', 'verified', 'plain_1', 'verified_1')}
        read = partial(_read, root, layout, samples=args.samples, batch=args.batch)
        read(False, args.epochs)  # warm the page cache
        for _ in range(args.repeats):
            for verify in (False, True):
                name = 'verified' if verify else 'plain'
                rates[name].append(read(verify, args.epochs))
                rates[name + '_1'].append(read(verify, 1))
    rate = {key: statistics.median(values) for key, values in rates.items()}
    print(json.dumps({
        'epochs': args.epochs, 'samples_per_epoch': args.samples, 'top_k': layout.k,
        'layout': args.layout, 'bytes_per_sample': layout.bytes_per_sample(),
        'shards_mb': round(size / 2**20, 1), 'plain_samples_per_s': round(rate['plain']),
        'verified_samples_per_s': round(rate['verified']),
        'verified_vs_plain': round(rate['verified'] / rate['plain'], 4),
        'first_epoch_vs_plain': round(rate['verified_1'] / rate['plain_1'], 4),
    }))  # fmt: skip


if __name__ == '__main__':
    main()
