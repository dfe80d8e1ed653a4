"""`python -m timm_kd.cache build | push | pull`: the teacher's top-K answers for every slot of
every epoch, and a cache published on (and fetched from) the Hugging Face Hub.

    python -m timm_kd.cache build DATA [timm-kd-train flags: --model, --teacher, data, augmentation,
        --epochs, ...] --top-k K --out DIR [--value-dtype float32|float16] [--layout exact|compact]
        [--strict-files]
    python -m timm_kd.cache build DATA [...] --layout dense --out DIR  (every class, 12 bits each)

    python -m timm_kd.cache push DIR ORG/NAME [--private] [--revision BRANCH]
    python -m timm_kd.cache pull ORG/NAME[@REVISION] [--epochs E ...] [--ranks R ...]

--strict-files adds the training files' modification times to the dataset signature (sizes are
always in it). A rerun with the same flags continues at the first epoch not completely built.

What the cache holds and how training reads it: `timm_kd.cache`; push, pull and
`--teacher-cache hf-hub:ORG/NAME`: `timm_kd.cache.hub`.
"""

import argparse
import logging
import os
import sys
import time
from typing import Any, List, Optional

import torch
from timm.utils import setup_default_logging

from ..cache import (
    FORMAT,
    TeacherCache,
    fingerprint,
    first_difference,
    hub,
    top_k_logits,
    top_k_loss_error,
    write_manifest,
    write_sample_checksums,
)
from ..cache.layout import LAYOUTS, Layout
from ..cache.shards import ShardWriter, is_built
from ..data import dataset_class_names
from ..decoding import decoded_images
from ..ensemble import create_teachers
from ..errors import KDError, one_line_errors
from ..locks import FolderLock
from ..replay import order_digest
from ..run import RunSpec
from ..runtime import Process, init_process, over_ranks
from ..training import setup_run, training_stream
from .train.parse import parse_run

_logger = logging.getLogger('timm_kd.cache')


def build(argv: Optional[List[str]] = None) -> str:
    """`python -m timm_kd.cache build`: the teacher's top-K
    answers for every slot of every epoch; returns DIR."""
    mine, rest = build_flags().parse_known_args(argv)
    setup_default_logging()
    run = parse_run(rest)
    if not run.teachers.members:
        raise KDError(
            'cache build needs --teacher (and --teacher-checkpoint where it has no pretrained '
            'weights)'
        )
    process = init_process(run.process.device)
    device = process.device
    setup = setup_run(run, process, with_eval=False)  # as training sets up its stream
    run, train_set, num_classes = setup.run, setup.train_set, setup.run.num_classes
    _one_view_per_sample(run)  # before the teacher loads
    images = decoded_images(train_set)  # each sample's checksum, recorded as it is read
    if images is not None:
        images.start_recording()
    data_config = run.student_data_config
    del setup.models[:]  # the student only resolved the data config
    # the cache stores logits: a headless teacher is one line here
    class_names = dataset_class_names(train_set)
    teacher = create_teachers(
        run.teachers, num_classes, run.in_chans, data_config, device, class_names
    )
    stream, _, replayable = training_stream(setup, process)
    layout = _buildable(mine, run, replayable)
    slots = len(stream) * run.views.batch_size
    now = fingerprint(run, train_set, process.world_size, mtimes=mine.strict_files)
    manifest = _manifest(mine.out, now, layout, slots)
    if run.teachers.compile:  # as training compiles it (--teacher-compile, --teacher-fast)
        teacher.compile(backend=run.teachers.compile, mode=run.teachers.compile_mode)
    if process.is_primary and 'loss_error' not in manifest:  # the card's table; rank 0 writes it
        manifest['loss_error'] = _loss_error(stream, teacher, layout)
    answers = _TopKAnswers(teacher, layout)
    with FolderLock(mine.out, f'build-rank-{process.rank}.lock', 'the cache folder --out'):
        views = min(run.views.epochs, run.views.view_cycle or run.views.epochs)  # distinct views
        todo = _epochs_to_build(mine.out, views, process)
        built = [e for e in range(views) if e not in todo]  # a kill may have come before
        manifest['epochs'] = sorted(set(manifest['epochs']) | set(built))  # the manifest's update
        progress = _Progress(len(stream), slots * len(todo), run.loop.log_interval)
        for epoch in todo:
            if not is_built(mine.out, epoch, process.rank):  # else another rank's shard is missing
                shard = ShardWriter(mine.out, epoch, process.rank, layout.arrays(slots))
                rate = _build_shard(shard, stream, epoch, answers, images, progress)
                manifest['build_images_per_s'] = rate  # of the last epoch built
            _wait_for_ranks(process)
            manifest['epochs'] = sorted(set(manifest['epochs']) | {epoch})
            if process.is_primary:
                write_manifest(mine.out, manifest)
    if process.is_primary:
        write_manifest(mine.out, manifest)
        _logger.info(
            f'Teacher cache: {len(manifest["epochs"])} epochs x {slots * process.world_size} '
            f'samples, {layout.describe()}, in {mine.out}'
        )
    return mine.out


def _build_shard(shard: ShardWriter, stream, epoch: int, answers, images, progress) -> float:
    """Write and commit one epoch's shard of this rank; returns the images per second of the
    teacher pass with the writes, data loading included."""
    start = time.time()
    try:
        rows = _write_epoch(stream, epoch, answers, shard, progress)
    except BaseException:
        shard.abort()
        raise
    if images is not None:  # before the epoch counts as built: every sample it read
        write_sample_checksums(shard.root, shard.place['rank'], images.recorded())
    shard.commit(order_digest(stream.loader, epoch))
    return rows / (time.time() - start)


def _epochs_to_build(out: str, epochs: int, process: Process) -> List[int]:
    """The epochs some rank has not built, the same list on every rank: a build killed between two
    ranks' commits leaves one rank's shard of an epoch without the other's, and ranks with lists
    of their own would meet at different barriers (and hang until the collective's timeout)."""
    return [
        epoch
        for epoch in range(epochs)
        if over_ranks(float(not is_built(out, epoch, process.rank)), process, 'max')
    ]


def _wait_for_ranks(process: Process) -> None:
    """Every rank has committed this epoch's shard (only then does rank 0 record it)."""
    if process.distributed:
        torch.distributed.barrier()


def build_flags() -> argparse.ArgumentParser:
    """The build's own flags, beside the training flags."""
    own = argparse.ArgumentParser(prog='python -m timm_kd.cache build', add_help=False)
    own.add_argument(
        '--top-k', type=int, help='teacher logits stored per sample (K = C: exact; dense: C)'
    )
    own.add_argument('--out', required=True, help='the cache folder (a killed build resumes)')
    own.add_argument(
        '--value-dtype', choices=('float32', 'float16'), default='float32', help='stored values'
    )
    own.add_argument(
        '--layout', choices=LAYOUTS, default='exact', help='how a row is stored (cache/layout.py)'
    )
    own.add_argument(
        '--strict-files',
        action='store_true',
        help="also record each training file's modification time in the dataset signature",
    )
    return own


def _one_view_per_sample(run: RunSpec) -> None:
    if run.views.aug_splits > 1:
        raise KDError(
            f'--aug-splits {run.views.aug_splits} puts several views of each image in a batch, and '
            'the teacher cache stores one answer per sample; distill with a live teacher'
        )


def _buildable(mine: Any, run: RunSpec, replayable: bool) -> Layout:
    """The cache's layout, or one line for a run the cache cannot serve."""
    classes = run.num_classes
    if mine.layout == 'dense' and mine.top_k not in (None, classes):
        raise KDError(f'--layout dense stores all {classes} classes; drop --top-k {mine.top_k}')
    if mine.top_k is None and mine.layout != 'dense':
        raise KDError('pass --top-k K, the logits to keep per sample, or --layout dense (all)')
    k = classes if mine.top_k is None else min(mine.top_k, classes)
    if k < 1:
        raise KDError(f'--top-k {mine.top_k}: keep at least one logit per sample')
    if run.views.train_img_sizes is not None:
        raise KDError('the teacher cache needs a fixed input and batch size (no --train-img-sizes)')
    if not replayable:
        raise KDError(
            'the teacher cache needs replayable views: map-style or webdataset input (ImageFolder, '
            f'hfds/, wds/; not {run.data.dataset or "--use-multi-epochs-loader"})'
        )
    if mine.layout != 'exact' and mine.value_dtype != 'float32':
        raise KDError(f"--value-dtype is the exact layout's; --layout {mine.layout} sets its own")
    return Layout(mine.layout, k, classes, mine.value_dtype)


class _TopKAnswers:
    """The teacher's top-K answers to a batch, encoded in the cache's layout."""

    def __init__(self, teacher, layout: Layout):
        self.teacher, self.layout = teacher, layout

    def __call__(self, images: torch.Tensor, epoch: int, batch_idx: int) -> dict:
        logits = self.teacher(images).logits.float()  # at the teacher's own precision
        if not torch.isfinite(logits).all():
            raise KDError(
                f'the teacher answered NaN or infinity in epoch {epoch}, batch {batch_idx}; '
                "nothing of this epoch was kept: check the teacher's weights and --teacher-dtype "
                '(float16 overflows)'
            )
        return self.layout.encode(*top_k_logits(logits, self.layout.k))


class _Progress:
    """The build's log line every --log-interval batches: images/s and the ETA of what is left."""

    def __init__(self, batches: int, images: int, interval: int):
        self.batches, self.images, self.interval = batches, images, interval
        self.start, self.done = time.time(), 0

    def __call__(self, epoch: int, batch_idx: int, images: int) -> None:
        self.done += images
        if batch_idx % self.interval == 0 or batch_idx + 1 == self.batches:
            rate = self.done / (time.time() - self.start)
            left = self.images - self.done
            _logger.info(
                f'Cache: epoch {epoch} [{batch_idx + 1:>4d}/{self.batches}]  {rate:.1f} img/s  '
                f'ETA {left / max(rate, 1e-9) / 60:.1f} min'
            )


def _write_epoch(stream, epoch: int, answers: _TopKAnswers, shard: ShardWriter, progress) -> int:
    """The teacher's answers to every batch of `epoch`, the batches training sees, in order, into
    `shard`; returns the rows written."""
    row = 0
    for batch_idx, batch in stream.epoch(epoch):
        shard.write(slice(row, row + len(batch)), answers(batch.input, epoch, batch_idx))
        row += len(batch)
        progress(epoch, batch_idx, len(batch))
    return row


def _manifest(out: str, now: dict, layout: Layout, slots: int) -> dict:
    """The manifest to write: a new one, or the one in --out when it was built for this run."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise KDError(f'--out {out!r} is a file; pass a folder for the cache')
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise KDError(
            f'cannot create --out {out!r} ({e.strerror}); pass a folder you can write to'
        ) from None
    manifest = {
        'format': FORMAT,
        'fingerprint': now,
        'top_k': layout.k,
        'num_classes': layout.num_classes,
        'slots_per_rank': slots,
        'value_dtype': layout.value_dtype,
        'layout': layout.name,
        'bytes_per_sample': layout.bytes_per_sample(),
        'epochs': [],
    }
    if os.path.isfile(os.path.join(out, 'manifest.json')):
        old = TeacherCache(out).manifest
        diff = first_difference(old['fingerprint'], now)
        if diff:
            raise KDError(f'--out {out!r} holds a cache for other {diff}; use another --out')
        mine_layout = (layout.k, layout.value_dtype, layout.name)
        if (old['top_k'], old['value_dtype'], old.get('layout', 'exact')) != mine_layout:
            raise KDError(
                f'--out {out!r} holds a cache with --top-k {old["top_k"]} --value-dtype '
                f'{old["value_dtype"]} --layout {old.get("layout", "exact")}; use the same or '
                'another --out'
            )
        manifest['epochs'] = old['epochs']
        if 'loss_error' in old:
            manifest['loss_error'] = old['loss_error']
    return manifest


def _loss_error(stream, teacher, layout: Layout) -> list:
    """The KD loss error of the stored answers against the full logits, on the first batch of
    epoch 0 (a fixed batch, whatever epochs this invocation builds), with a uniform student."""
    _, batch = next(iter(stream.epoch(0)))
    logits = teacher(batch.input).logits.float()
    student = torch.zeros_like(logits)
    return top_k_loss_error(logits, student, [layout.k], [1.0, 4.0], layout.name)


def push(argv: List[str]) -> str:
    """`python -m timm_kd.cache push DIR ORG/NAME [--private] [--revision REV]`."""
    args = push_parser().parse_args(argv)
    repo_id = hub.push(args.dir, args.repo_id, private=args.private, revision=args.revision)
    print(f'pushed {args.dir} to the dataset repository {repo_id}')
    return repo_id


def pull(argv: List[str]) -> str:
    """`python -m timm_kd.cache pull ORG/NAME [--epochs E ...] [--ranks R ...]`:
    prints the folder."""
    args = pull_parser().parse_args(argv)
    repo_id, revision = hub.parse_hub_spec(hub.HUB_PREFIX + args.repo_id)
    root = hub.pull(repo_id, revision, cache_dir=args.cache_dir)  # the manifest says what exists
    manifest = TeacherCache(root).manifest
    epochs = manifest['epochs'] if args.epochs is None else args.epochs
    ranks = range(hub.world_size(manifest))
    root = hub.pull(repo_id, revision, epochs, ranks if args.ranks is None else args.ranks,
                    cache_dir=args.cache_dir)  # fmt: skip
    print(root)
    return root


def push_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m timm_kd.cache push')
    p.add_argument('dir', help='a built cache folder')
    p.add_argument('repo_id', help='ORG/NAME of the dataset repository')
    p.add_argument('--private', action='store_true', help='create the repository private')
    p.add_argument('--revision', default=None, help='a branch to push to (created if needed)')
    return p


def pull_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m timm_kd.cache pull')
    p.add_argument('repo_id', help='ORG/NAME[@REVISION]')
    p.add_argument('--epochs', type=int, nargs='*', default=None, help='default: every epoch')
    p.add_argument('--ranks', type=int, nargs='*', default=None, help='default: every rank')
    p.add_argument('--cache-dir', default=None, help="default: huggingface_hub's (HF_HOME)")
    return p


COMMANDS = {'build': build, 'push': push, 'pull': pull}


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        raise SystemExit(2)
    with one_line_errors():
        COMMANDS[argv[0]](argv[1:])
