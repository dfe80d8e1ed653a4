"""`python -m timm_kd.cache build`: the teacher's top-K answers for every slot of every epoch.

    python -m timm_kd.cache build DATA [timm-kd-train flags: --model, --teacher, data, augmentation,
        --epochs, ...] --top-k K --out DIR [--value-dtype float32|float16]

What the cache holds and how training reads it: `timm_kd.cache`.
"""

import argparse
import logging
import os
import sys
import time
from typing import List, Optional

import numpy as np
import torch
from timm.utils import setup_default_logging

from ..cache import (
    FORMAT,
    TeacherCache,
    _files,
    fingerprint,
    first_difference,
    top_k_logits,
    write_manifest,
)
from ..ensemble import create_teachers
from ..errors import KDError, one_line_errors
from ..runtime import amp_setup, init_process
from .train.build import setup_run, training_stream
from .train.config import parse_args

_logger = logging.getLogger('timm_kd.cache')


def build(argv: Optional[List[str]] = None) -> str:
    """`python -m timm_kd.cache build`: the teacher's top-K answers for every slot of every epoch; returns DIR."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument('--top-k', type=int, required=True)
    own.add_argument('--out', required=True)
    own.add_argument('--value-dtype', choices=('float32', 'float16'), default='float32')
    mine, rest = own.parse_known_args(argv)
    setup_default_logging()
    args, _ = parse_args(rest)
    if not args.teacher:
        raise KDError(
            'cache build needs --teacher (and --teacher-checkpoint where it has no pretrained '
            'weights)'
        )
    process = init_process(args.device)
    device = process.device
    setup = setup_run(args, [args], process, with_eval=False)  # as training sets up its stream
    run, train_set, num_classes = setup.run, setup.train_set, setup.run.num_classes
    data_config = run.student_data_config
    del setup.models[:]  # the student only resolved the data config
    teacher = create_teachers(run.teachers, num_classes, setup.in_chans, data_config, device)
    k = min(mine.top_k, num_classes)
    if k < 1:
        raise KDError(f'--top-k {mine.top_k}: keep at least one logit per sample')
    stream, _, replayable = training_stream(args, setup, process)
    if args.train_img_sizes is not None or not replayable:
        raise KDError('the teacher cache needs a fixed input and batch size (no --train-img-sizes)')
    slots = len(stream) * args.batch_size
    now = fingerprint(run, train_set, process.world_size)
    os.makedirs(mine.out, exist_ok=True)
    path = os.path.join(mine.out, 'manifest.json')
    manifest = {
        'format': FORMAT,
        'fingerprint': now,
        'top_k': k,
        'num_classes': num_classes,
        'slots_per_rank': slots,
        'value_dtype': mine.value_dtype,
        'epochs': [],
    }
    if os.path.isfile(path):
        old = TeacherCache(mine.out).manifest
        diff = first_difference(old['fingerprint'], now)
        if diff:
            raise KDError(f'--out {mine.out!r} holds a cache for other {diff}; use another --out')
        if (old['top_k'], old['value_dtype']) != (k, mine.value_dtype):
            raise KDError(
                f'--out {mine.out!r} holds a cache with --top-k {old["top_k"]} --value-dtype '
                f'{old["value_dtype"]}; use the same or another --out'
            )
        manifest['epochs'] = old['epochs']
    amp_autocast, _ = amp_setup(args.amp, args.amp_dtype, device)
    value_dtype = np.float16 if mine.value_dtype == 'float16' else np.float32
    index_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
    start, done_images = time.time(), 0
    todo = [
        e
        for e in range(args.epochs)
        if not os.path.isfile(_files(mine.out, e, process.rank)['values'])
    ]
    for n, epoch in enumerate(todo):
        files = _files(mine.out, epoch, process.rank)
        arrays = {
            'values': np.lib.format.open_memmap(
                files['values'] + '.tmp', 'w+', value_dtype, (slots, k)
            ),
            'indices': np.lib.format.open_memmap(
                files['indices'] + '.tmp', 'w+', index_dtype, (slots, k)
            ),
            'tail': np.lib.format.open_memmap(files['tail'] + '.tmp', 'w+', np.float32, (slots,)),
        }
        row, epoch_start = 0, time.time()
        for batch_idx, batch in stream.epoch(epoch):  # the batches training sees, in its order
            with amp_autocast():
                logits = teacher(batch.input).logits.float()
            rows = slice(row, row + len(batch))
            for part, value in zip(('values', 'indices', 'tail'), top_k_logits(logits, k)):
                arrays[part][rows] = value.cpu().numpy()
            row += len(batch)
            done_images += len(batch)
            if batch_idx % args.log_interval == 0 or batch_idx + 1 == len(stream):
                rate = done_images / (time.time() - start)
                left = (len(todo) - n) * slots - row
                _logger.info(
                    f'Cache: epoch {epoch} [{batch_idx + 1:>4d}/{len(stream)}]  {rate:.1f} img/s  '
                    f'ETA {left / max(rate, 1e-9) / 60:.1f} min'
                )
        for part, array in arrays.items():
            array.flush()
            os.replace(files[part] + '.tmp', files[part])
        # the teacher pass with the writes, data loading included, of the last epoch built
        manifest['build_images_per_s'] = row / (time.time() - epoch_start)
        if process.distributed:
            torch.distributed.barrier()
        manifest['epochs'] = sorted(set(manifest['epochs']) | {epoch})
        if process.is_primary:
            write_manifest(mine.out, manifest)
    if process.is_primary:
        write_manifest(mine.out, manifest)
        _logger.info(
            f'Teacher cache: {len(manifest["epochs"])} epochs x {slots * process.world_size} '
            'samples, '
            f'top-{k} of {num_classes} classes, in {mine.out}'
        )
    return mine.out


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != 'build':
        print(__doc__)
        raise SystemExit(2)
    with one_line_errors():
        build(argv[1:])
