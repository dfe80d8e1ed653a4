"""What replayable views cost timm's loader, and
what a mid-epoch resume costs before its first step.

    python benchmarks/loader.py [--images 512 --size 224 --workers 0 2 --repeats 5]

Writes an ImageFolder of JPEGs (smooth random images, 320x256, 10 classes) and reads one epoch of
it through timm's `create_loader` with the ResNet Strikes Back A2 augmentation (random-resized
crop to `--size`, flip, RandAugment `rand-m7-mstd0.5-inc1`, random erasing 0.25), without the
prefetcher, for each worker count: once over timm's plain dataset and once over our replayable
views (`timm_kd.replay`), alternating, `--repeats` times. Then it times the first batch of a
mid-epoch resume at 10% and 90% of the epoch (`TrainingStream.epoch(e, skip_batches)`), where the
sampler starts at its position instead of loading the skipped batches.

The per-sample check of a run from a teacher-output cache (`timm_kd.decoding`: each file's bytes
against the CRC-32 the build recorded) is timed the same way: the replayable views over
`DecodedImages` with the check on against the same without it (`checked_vs_unchecked`, the target
is at least 0.98). The checksum was picked by `checksum_mb_per_s`: CRC-32 and Adler-32 over the
same image bytes, single-threaded, against JPEG decoding's own bytes per second.

The end-to-end rates carry the spread of what each epoch draws (its mix of RandAugment ops: each
repeat reads another epoch) and of the machine: a few percent on 2 cores. `per_sample_same_draws`
measures what the views and the check add without it: timm's dataset, the views, and the views over
`DecodedImages` with the check on, each sample with the same augmentation draws, timed in turn in
one process (`replay_vs_timm`, `checked_vs_timm`; the targets are at least 0.98).

Prints one JSON line: images/s of each per worker count, `replay_vs_timm` and
`checked_vs_unchecked` (the lowest ratios over the worker counts; 1.0: free),
`per_sample_same_draws`, and `resume_first_batch_s` at 10% and 90% with `epoch_s` (one epoch's
load time) for scale.
"""

import argparse
import io
import json
import os
import statistics
import tempfile
import time
import zlib

import numpy as np
import torch
from PIL import Image
from timm.data import ImageDataset, create_loader

from timm_kd.decoding import DecodedImages, checksum, read_bytes
from timm_kd.replay import ReplayableViews, make_replayable, seed_all, slot_seed
from timm_kd.run import ProcessSpec
from timm_kd.stream import TrainingStream, set_loader_epoch


def _write_images(root: str, count: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = os.path.join(root, f'class{i % classes}')
        os.makedirs(folder, exist_ok=True)
        small = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)  # smooth when upsampled: JPEG-like
        image = Image.fromarray(small).resize((320, 256), Image.BICUBIC)
        image.save(os.path.join(folder, f'{i}.jpg'), quality=90)


def _loader(dataset, args, workers: int):
    return create_loader(
        dataset, input_size=(3, args.size, args.size), batch_size=args.batch, is_training=True,
        use_prefetcher=False, no_aug=False, re_prob=0.25, re_mode='pixel', hflip=0.5,
        auto_augment='rand-m7-mstd0.5-inc1', interpolation='bicubic', num_workers=workers,
        persistent_workers=False,
    )  # fmt: skip


def _checksum_rates(root: str) -> dict:
    """MB/s of CRC-32 and Adler-32 over the images' bytes, and of decoding them (PIL, to RGB)."""
    files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in sorted(names)]
    data = [read_bytes(f) for f in files]
    size = sum(len(d) for d in data) / 1e6
    rates = {}
    decode = lambda d: Image.open(io.BytesIO(d)).convert('RGB')  # noqa: E731
    for name, fn in (('crc32', zlib.crc32), ('adler32', zlib.adler32), ('jpeg_decode', decode)):
        start = time.perf_counter()
        for d in data:
            fn(d)
        rates[name] = round(size / (time.perf_counter() - start), 1)
    return rates


def _checked(root: str, verify: bool):
    images = DecodedImages(ImageDataset(root), 'RGB')
    if verify:
        files = [path for path, _ in images.reader.samples]
        images.verify(np.array([checksum(read_bytes(f)) for f in files], np.uint64), 'bench')
    return ReplayableViews(images, seed=0)


def _paired_costs(root: str, args) -> dict:
    """Microseconds per sample of timm's dataset, the replayable views, and the views over
    `DecodedImages` with the cache's check on, each sample given the same augmentation draws (timm's
    dataset gets the seed the views set for that slot, outside its timing) and timed in turn in
    one process: what the views and the check add, without the run-to-run spread of the mix of
    RandAugment ops and of the machine that the end-to-end rates carry."""
    from timm.data import create_transform

    transform = create_transform(
        (3, args.size, args.size), is_training=True, re_prob=0.25, re_mode='pixel', hflip=0.5,
        auto_augment='rand-m7-mstd0.5-inc1', interpolation='bicubic',
    )  # fmt: skip
    plain = ImageDataset(root, transform=transform)
    views = {'replay': ReplayableViews(ImageDataset(root, transform=transform), seed=0),
             'checked': _checked(root, verify=True)}  # fmt: skip
    views['checked'].dataset.dataset.transform = transform
    seconds = {'timm': 0.0, 'replay': 0.0, 'checked': 0.0}
    for epoch in range(args.repeats):
        for position in range(len(plain)):
            seed_all(slot_seed(0, epoch, 0, position), torch.default_generator)
            start = time.perf_counter()
            plain[position]
            seconds['timm'] += time.perf_counter() - start
            for name, dataset in views.items():
                start = time.perf_counter()
                dataset[(epoch, 0, position, position)]
                seconds[name] += time.perf_counter() - start
    count = args.repeats * len(plain)
    return {
        **{f'{name}_us': round(s / count * 1e6, 1) for name, s in seconds.items()},
        'replay_vs_timm': round(seconds['timm'] / seconds['replay'], 4),
        'checked_vs_timm': round(seconds['timm'] / seconds['checked'], 4),
    }


def _epoch_rate(loader) -> float:
    start, images = time.perf_counter(), 0
    for input, _ in loader:
        images += input.shape[0]
    return images / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--images', type=int, default=512)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    p.add_argument('--repeats', type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)  # per core: the loader's work, not intra-op threads
    with tempfile.TemporaryDirectory() as root:
        _write_images(root, args.images, 10)
        rates, ratios, checks = {}, [], []
        for workers in args.workers:
            loaders = {
                'timm': _loader(ImageDataset(root), args, workers),
                'replay': _loader(ReplayableViews(ImageDataset(root), seed=0), args, workers),
                'unchecked': _loader(_checked(root, verify=False), args, workers),
                'checked': _loader(_checked(root, verify=True), args, workers),
            }
            assert all(make_replayable(loaders[k]) for k in ('replay', 'unchecked', 'checked'))
            replay = loaders['replay']
            _epoch_rate(loaders['timm'])  # warm the page cache and the decoders
            samples = {name: [] for name in loaders}
            for repeat in range(
                args.repeats
            ):  # alternating, so drifts of the machine hit all alike
                for name, loader in loaders.items():
                    # another epoch each time: other draws of the augmentation, as timm's loader
                    # makes at every pass (an epoch's mix of RandAugment ops costs what it costs)
                    set_loader_epoch(loader, repeat)
                    samples[name].append(_epoch_rate(loader))
            median = {name: statistics.median(v) for name, v in samples.items()}
            rates[f'workers_{workers}'] = {
                **{f'{name}_images_per_s': round(v, 1) for name, v in median.items()},
                'replay_vs_timm': round(median['replay'] / median['timm'], 4),
                'checked_vs_unchecked': round(median['checked'] / median['unchecked'], 4),
                'checked_vs_timm': round(median['checked'] / median['timm'], 4),  # a cached run's
            }
            ratios.append(median['replay'] / median['timm'])
            checks.append(median['checked'] / median['unchecked'])
        checksums = _checksum_rates(root)
        paired = _paired_costs(root, args)
        stream = TrainingStream(replay, device=torch.device('cpu'), process=ProcessSpec(seed=0))
        batches = len(stream)
        start = time.perf_counter()
        for _ in stream.epoch(1):
            pass
        epoch_s = time.perf_counter() - start
        first_batch = {}
        for fraction in (0.1, 0.9):
            start = time.perf_counter()
            next(iter(stream.epoch(1, skip_batches=int(fraction * batches))))
            first_batch[f'{round(fraction * 100)}%'] = round(time.perf_counter() - start, 3)
    print(json.dumps({
        'images': args.images, 'size': args.size, 'batch': args.batch, **rates,
        'replay_vs_timm': round(min(ratios), 4),
        'checked_vs_unchecked': round(min(checks), 4), 'per_sample_same_draws': paired,
        'checksum_mb_per_s': checksums,
        'epoch_s': round(epoch_s, 3), 'resume_first_batch_s': first_batch,
    }))  # fmt: skip


if __name__ == '__main__':
    main()
