"""Teacher-output cache: run the teacher once, distill many times at the cost of plain training.

    python -m timm_kd.cache build DATA [timm-kd-train flags: --model, --teacher, data, augmentation, --epochs, ...]
        --top-k K --out DIR [--value-dtype float32|float16]
    timm-kd-train DATA [the same flags] --teacher-cache DIR

The views are replayable (`timm_kd.replay`): epoch e's slot p is the same image, augmentation and
mixup in every run with the same data flags, so the teacher's answer for it can be computed once.
`build` runs the data stream and the teacher exactly as training would (same reseeds, mixup in the
training process, the teacher under the same autocast) and stores, per (epoch, rank, slot), the
top-K teacher logits (values and class indices) and the log-sum-exp of the other C-K logits.
Training with `--teacher-cache` builds no teacher: each batch's teacher logits are rebuilt from the
cache (`rebuild_logits`), and every logit loss and deep supervision reads them.

Rebuilding: the K stored logits are exact; each of the C-K others gets the value m = LSE(tail) -
log(C-K), the logit that, shared by all of them, gives the tail the mass it had at T=1. So with K =
C the targets are exact at every temperature (a cached run equals the live one); with K < C the
tail's total mass is exact at T=1 and its shape inside is flattened (see the README for the measured
effect).

Files: `manifest.json` (format, fingerprint of everything that fixes the views and the teacher, K,
classes, slots per rank, epochs done) and per epoch and rank
`epoch-E-rank-R.{values,indices,tail}.npy`, memory-mapped, written under temporary names and renamed
when the epoch is complete: a killed build resumes at the first epoch without files; under torchrun
every rank builds its own shard.
"""

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .errors import KDError, one_line_errors
from .teacher import TeacherOutput

_logger = logging.getLogger(__name__)
FORMAT = 1
# LoaderOptions / DatasetOptions fields that do not change what a slot holds
_NOT_VIEWS = {
    'validation_batch_size',
    'workers',
    'pin_mem',
    'use_multi_epochs_loader',
    'epochs',
    'data_dir',
    'val_split',
    'val_num_samples',
    'dataset_download',
    'dataset_trust_remote_code',
}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def dataset_signature(dataset: Any, root: str) -> str:
    """A hash of the training set's files (paths relative to the data root) and labels, or of its labels alone."""
    from .data import dataset_targets

    digest = hashlib.sha256()
    samples = getattr(getattr(dataset, 'reader', None), 'samples', None) or getattr(
        dataset, 'samples', None
    )
    if samples is not None:
        for path, target in samples:
            digest.update(f'{os.path.relpath(str(path), root)}\t{int(target)}\n'.encode())
    else:
        digest.update(dataset_targets(dataset).numpy().tobytes())
    return f'{len(dataset)}:{digest.hexdigest()[:16]}'


def fingerprint(
    args: argparse.Namespace,
    data_config: Dict[str, Any],
    dataset: Any,
    num_classes: int,
    world_size: int,
) -> Dict[str, Dict[str, Any]]:
    """What fixes each slot's view ('views') and the teacher's answer to it ('teacher'), setting by setting."""
    from .train.build import dataset_options, loader_options

    views: Dict[str, Any] = {'dataset files': dataset_signature(dataset, args.data_dir)}
    for opts in (dataset_options(args), loader_options(args)):
        views.update({k: v for k, v in vars(opts).items() if k not in _NOT_VIEWS})
    views.update(
        seed=args.seed,
        world_size=world_size,
        grad_accum_steps=args.grad_accum_steps,
        prefetcher=not args.no_prefetcher,
        num_classes=num_classes,
        model_dtype=args.model_dtype,
        **{f'student {k}': v for k, v in data_config.items()},
    )
    checkpoint = args.teacher_checkpoint
    teacher = dict(
        teacher=args.teacher,
        teacher_checkpoint=_sha256(checkpoint) if checkpoint else None,
        teacher_no_ema=args.teacher_no_ema,
        teacher_kwargs=args.teacher_kwargs,
        teacher_mean=args.teacher_mean,
        teacher_std=args.teacher_std,
        teacher_input_size=args.teacher_input_size,
        teacher_dtype=args.teacher_dtype,
        amp=args.amp,
        amp_dtype=args.amp_dtype,
        teachers=[
            {**t, 'checkpoint': _sha256(t['checkpoint']) if t['checkpoint'] else None}
            for t in args.teachers or []
        ],
        teacher_ensemble=args.teacher_ensemble,
        kd_temperature=args.kd_temperature if args.teachers else None,
    )
    return json.loads(
        json.dumps({'views': views, 'teacher': teacher}, default=list)
    )  # tuples -> lists


def first_difference(
    built: Dict[str, Dict[str, Any]],
    now: Dict[str, Dict[str, Any]],
    parts: Sequence[str] = ('views', 'teacher'),
) -> Optional[str]:
    """The first setting, in `parts` of two fingerprints, where they differ: 'views (mixup: the cache has ...)'."""
    for part in parts:
        for key in sorted(set(built[part]) | set(now[part])):
            if built[part].get(key) != now[part].get(key):
                return f'{part} ({key}: the cache has {built[part].get(key)!r}, this run {now[part].get(key)!r})'
    return None


def rebuild_logits(
    values: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Full teacher logits from the top-K values/indices and the tail's log-sum-exp (exact when K = C)."""
    n, k = values.shape
    if k == num_classes:  # every class is stored
        logits = values.new_zeros(n, num_classes, dtype=torch.float32)
    else:
        logits = (tail.float() - math.log(num_classes - k)).unsqueeze(1).repeat(1, num_classes)
    return logits.scatter_(1, indices.long(), values.float())


def top_k_logits(logits: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the cache stores of each row of logits: the top-K values and indices, and the other logits' log-sum-exp."""
    top = logits.topk(k, dim=1)
    return top.values, top.indices, logits.scatter(1, top.indices, float('-inf')).logsumexp(1)


def top_k_loss_error(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    ks: Sequence[int],
    temperatures: Sequence[float],
) -> List[Dict[str, float]]:
    """How far the vanilla KD loss (mean over rows) moves when the teacher's logits keep only their top K.

    For each K and T: the loss from the full logits, from `rebuild_logits` of the top K, and the
    relative error.
    """
    from .losses import create_kd_loss

    classes, rows = teacher_logits.shape[1], []
    for k in ks:
        rebuilt = rebuild_logits(*top_k_logits(teacher_logits, k), classes)
        for temperature in temperatures:
            kd = create_kd_loss('kd', temperature=temperature)
            exact, approx = (
                kd(student_logits, teacher_logits, None).item(),
                kd(student_logits, rebuilt, None).item(),
            )
            rows.append(
                dict(
                    k=k,
                    temperature=temperature,
                    exact=round(exact, 5),
                    top_k=round(approx, 5),
                    relative_error=round(abs(approx - exact) / exact, 5),
                )
            )
    return rows


def _files(root: str, epoch: int, rank: int) -> Dict[str, str]:
    return {
        part: os.path.join(root, f'epoch-{epoch:04d}-rank-{rank}.{part}.npy')
        for part in ('values', 'indices', 'tail')
    }


class TeacherCache:
    """A built cache: its manifest, and the teacher's answers of one (epoch, rank) as memory-mapped arrays."""

    def __init__(self, root: str):
        path = os.path.join(root, 'manifest.json')
        if not os.path.isfile(path):
            raise KDError(
                f'--teacher-cache {root!r} holds no manifest.json; build it with python -m '
                'timm_kd.cache '
                f'build DATA ... --out {root}'
            )
        with open(path) as f:
            self.manifest = json.load(f)
        if self.manifest.get('format') != FORMAT:
            raise KDError(
                f'--teacher-cache {root!r} has format {self.manifest.get("format")}, this timm-kd '
                'reads '
                f'{FORMAT}; rebuild it'
            )
        self.root = root

    def check(
        self, now: Dict[str, Dict[str, Any]], epochs: Sequence[int], rank: int, has_teacher: bool
    ) -> None:
        """One line for a run whose views (or named teacher) differ from the cache's, or epochs it lacks."""
        diff = first_difference(
            self.manifest['fingerprint'], now, ('views', 'teacher') if has_teacher else ('views',)
        )
        if diff:
            raise KDError(
                f"--teacher-cache {self.root!r} was built for other {diff}; train with the cache's "
                'setting '
                f'or rebuild the cache'
            )
        missing = [e for e in epochs if not os.path.isfile(_files(self.root, e, rank)['values'])]
        if missing:
            raise KDError(
                f'--teacher-cache {self.root!r} lacks epoch {missing[0]} (it covers '
                f'{len(self.manifest["epochs"])} epochs); build more with --epochs '
                f'{max(epochs) + 1}, or '
                f'train fewer epochs'
            )

    def open(self, epoch: int, rank: int) -> Dict[str, np.ndarray]:
        return {
            part: np.load(path, mmap_mode='r')
            for part, path in _files(self.root, epoch, rank).items()
        }


class CachedTeacher(nn.Module):
    """Stands in for `Teacher` in training: hands out the cached logits of the slots of each batch, in order."""

    def __init__(self, cache: TeacherCache, rank: int, device: torch.device):
        super().__init__()
        self.cache, self.rank, self.device = cache, rank, device
        self.arrays: Dict[str, np.ndarray] = {}
        self.cursor = 0

    @property
    def num_classes(self) -> int:
        return self.cache.manifest['num_classes']

    def train(self, mode: bool = True) -> 'CachedTeacher':
        return super().train(False)

    def compile(self, *args: Any, **kwargs: Any) -> 'CachedTeacher':
        return self  # nothing runs

    def start_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.arrays, self.cursor = self.cache.open(epoch, self.rank), skip_samples

    def forward(
        self, images: torch.Tensor, stages: Optional[Sequence[int]] = None
    ) -> TeacherOutput:
        if stages is not None:
            raise KDError('feature losses need the live teacher: --teacher-cache holds logits only')
        n = images.shape[0]
        rows = slice(self.cursor, self.cursor + n)
        self.cursor += n
        parts = {
            k: torch.from_numpy(np.array(v[rows])).to(
                self.device, non_blocking=True
            )  # a copy off the map
            for k, v in self.arrays.items()
        }
        return TeacherOutput(
            rebuild_logits(parts['values'], parts['indices'], parts['tail'], self.num_classes)
        )

    def forward_many(
        self, images: torch.Tensor, stage_sets: Sequence[Optional[Sequence[int]]]
    ) -> List[TeacherOutput]:
        return [self(images)] * len(stage_sets)


def check_logit_losses_only(students: Sequence[tuple]) -> None:
    """One line for feature losses, which need the live teacher's feature maps, under --teacher-cache."""
    from .losses import get_kd_loss_class

    for sargs, _ in students:
        features = [n for n in sargs.kd_loss if get_kd_loss_class(n).kind == 'feature']
        if features:
            raise KDError(
                f"--kd-loss {features[0]} is a feature loss: it needs the live teacher's feature "
                'maps, '
                'which --teacher-cache does not store; use logit losses (kd, bkd, bkl, dkd, dist, '
                'ls) or '
                f'drop --teacher-cache'
            )


def _write_manifest(root: str, manifest: Dict[str, Any]) -> None:
    tmp = os.path.join(root, 'manifest.json.tmp')
    with open(tmp, 'w') as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, 'manifest.json'))


def build(argv: Optional[List[str]] = None) -> str:
    """`python -m timm_kd.cache build`: the teacher's top-K answers for every slot of every epoch; returns DIR."""
    from timm.data import resolve_data_config
    from timm.utils import setup_default_logging

    from .data import create_datasets, dataset_num_classes, set_loader_epoch
    from .engine import _to_device
    from .runtime import amp_setup, init_process
    from .train.build import (
        build_teacher,
        create_student,
        dataset_options,
        model_dtype,
        replayable_loaders,
    )
    from .train.config import parse_args
    from .train.reliability import reseed

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
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    train_set, _ = create_datasets(dataset_options(args), in_chans)
    num_classes = args.num_classes or dataset_num_classes(train_set)
    args.num_classes = num_classes
    student = create_student(
        args, in_chans, process
    )  # only for the data config training resolves from it
    data_config = resolve_data_config(vars(args), model=student)
    del student
    teacher = build_teacher(args, num_classes, in_chans, data_config, device)
    k = min(mine.top_k, num_classes)
    if k < 1:
        raise KDError(f'--top-k {mine.top_k}: keep at least one logit per sample')
    loader, _, mixup_fn, replayable = replayable_loaders(
        args, train_set, None, data_config, num_classes, process
    )
    if args.train_img_sizes is not None or not replayable:
        raise KDError('the teacher cache needs a fixed input and batch size (no --train-img-sizes)')
    slots = len(loader) * args.batch_size
    now = fingerprint(args, data_config, train_set, num_classes, process.world_size)
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
        reseed(args.seed, epoch, process.rank)  # as the training loop: the same stream of views
        set_loader_epoch(loader, epoch)
        row, epoch_start = 0, time.time()
        for batch_idx, (input, target) in enumerate(loader):
            input, target = _to_device(input, target, device, args.channels_last, model_dtype(args))
            target = target.clamp(
                min=0
            )  # unlabeled images (-1): the labels do not reach the teacher
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
            with amp_autocast():
                logits = teacher(input).logits.float()
            rows = slice(row, row + input.shape[0])
            for part, value in zip(('values', 'indices', 'tail'), top_k_logits(logits, k)):
                arrays[part][rows] = value.cpu().numpy()
            row += input.shape[0]
            if (batch_idx + 1) % args.grad_accum_steps == 0 or batch_idx + 1 == len(loader):
                reseed(
                    args.seed, epoch, process.rank, batch_idx // args.grad_accum_steps
                )  # as after_update
            done_images += input.shape[0]
            if batch_idx % args.log_interval == 0 or batch_idx + 1 == len(loader):
                rate = done_images / (time.time() - start)
                left = (len(todo) - n) * slots - row
                _logger.info(
                    f'Cache: epoch {epoch} [{batch_idx + 1:>4d}/{len(loader)}]  {rate:.1f} img/s  '
                    'ETA '
                    f'{left / max(rate, 1e-9) / 60:.1f} min'
                )
        for part, array in arrays.items():
            array.flush()
            os.replace(files[part] + '.tmp', files[part])
        # the teacher pass with the writes, data loading included, of the last epoch built (warm loader and model)
        manifest['build_images_per_s'] = row / (time.time() - epoch_start)
        if process.distributed:
            torch.distributed.barrier()
        manifest['epochs'] = sorted(set(manifest['epochs']) | {epoch})
        if process.is_primary:
            _write_manifest(mine.out, manifest)
    if process.is_primary:
        _write_manifest(mine.out, manifest)
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


if __name__ == '__main__':
    main()
