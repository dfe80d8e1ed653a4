"""Teacher-output cache: run the teacher once, distill many times at the cost of plain training.

    python -m timm_kd.cache build DATA [timm-kd-train flags: --model, --teacher, data,
        augmentation, --epochs, ...] --top-k K --out DIR [--value-dtype float32|float16]
    timm-kd-train DATA [the same flags] --teacher-cache DIR

The views are replayable (`timm_kd.replay`): epoch e's slot p is the same image, augmentation and
mixup in every run with the same data flags, so the teacher's answer for it can be computed once.
The build (the program `timm_kd.cli.cache`) reads the stream training reads (`timm_kd.stream`:
same reseeds, mixup in the training process), runs the teacher under the same autocast, and
stores, per (epoch, rank, slot), the top-K teacher logits (values and class indices) and the
log-sum-exp of the other C-K logits.
Training with `--teacher-cache` builds no teacher: each batch's teacher logits are rebuilt from the
cache (`rebuild_logits`), and every logit loss and deep supervision reads them.

Rebuilding: the K stored logits are exact; each of the C-K others gets the value m = LSE(tail) -
log(C-K), the logit that, shared by all of them, gives the tail the mass it had at T=1. So with K =
C the targets are exact at every temperature (a cached run equals the live one); with K < C the
tail's total mass is exact at T=1 and its shape inside is flattened (see the README for the measured
effect).

Files: `manifest.json` (format, fingerprint of everything that fixes the views and the teacher, K,
classes, slots per rank, epochs done) and per epoch and rank a shard
`epoch-E-rank-R.{values,indices,tail}.npy` with its sidecar `epoch-E-rank-R.json` (sizes and
checksums, written last: `shards`); training verifies each shard when it opens it. A killed build
resumes at the first epoch not completely built; under torchrun every rank builds its own shard.
"""

import dataclasses
import glob
import hashlib
import io
import json
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..dataset_views import dataset_targets
from ..errors import KDError
from ..identity import file_identity, identity
from ..losses import create_kd_loss, get_kd_loss_class, list_kd_losses
from ..reliability import write_bytes, write_text
from ..replay import stream_readers
from ..run import RunSpec, TeacherSpec, as_json, teacher_precision
from ..teacher import TeacherOutput
from .layout import Layout
from .shards import ShardPrefetch, is_built, open_shard, shard_order

_logger = logging.getLogger(__name__)
FORMAT = 4  # 3: per-shard checksums, file sizes in the dataset signature; 4: sample order
# independent of the loader workers, each shard bound to its epoch, rank and order


def dataset_signature(dataset: Any, root: str, mtimes: bool = False) -> str:
    """A hash of the training set's files (paths relative to the data root, so a copy under
    another root matches; sizes, and with `mtimes` modification times) and labels: image files of
    a folder, the shards of webdataset input; labels alone for datasets without a file list
    (torchvision's, timm's readers of archives). Pixels are not read: a file replaced by another
    of the same size (and, with `mtimes`, the same time) goes unseen."""
    digest = hashlib.sha256()
    reader = getattr(dataset, 'reader', None)
    samples = getattr(reader, 'samples', None) or getattr(dataset, 'samples', None)
    shards = getattr(getattr(reader, 'split_info', None), 'filenames', None)  # timm's wds reader
    if shards is not None:
        samples = [(os.path.join(reader.root, name), -1) for name in shards]
    if samples is not None:
        for path, target in samples:
            stat = os.stat(path)
            seen = f'{stat.st_size}\t{stat.st_mtime_ns}' if mtimes else f'{stat.st_size}'
            digest.update(f'{os.path.relpath(str(path), root)}\t{int(target)}\t{seen}\n'.encode())
    else:
        digest.update(dataset_targets(dataset).numpy().tobytes())
    return f'{len(dataset)}:{"sizes+mtimes" if mtimes else "sizes"}:{digest.hexdigest()[:16]}'


def signature_uses_mtimes(built: Dict[str, Dict[str, Any]]) -> bool:
    """Whether a built fingerprint's dataset signature includes modification times."""
    return ':sizes+mtimes:' in str(built['views'].get('dataset files', ''))


def fingerprint(
    run: RunSpec, dataset: Any, world_size: int, mtimes: bool = False
) -> Dict[str, Dict[str, Any]]:
    """What fixes each slot's view ('views'), the teachers' answer to it ('teacher') and what that
    answer depends on besides the teachers ('target': an ensemble's mixing temperature), field by
    field from the typed run (`timm_kd.identity`)."""
    views: Dict[str, Any] = {'dataset files': dataset_signature(dataset, run.data.data_dir, mtimes)}
    for name in ('data', 'views', 'process'):  # a flag shared by two sections is one key
        for key, value in identity(getattr(run, name)).items():
            views[key if views.get(key, value) == value else f'{name} {key}'] = value
    readers = stream_readers(dataset, run.views.workers)
    if readers is not None:  # a stream's order depends on its readers
        views['workers (streamed input)'] = readers
    views.update(
        world_size=world_size,
        num_classes=run.num_classes,
        **{f'student {k}': v for k, v in run.data_config if k in _views_config(run)},
    )
    parts = {
        'views': views,
        'teacher': identity(run.teachers),
        'target': run.teachers.target_identity(),
    }
    return as_json(parts)


def _views_config(run: RunSpec) -> Tuple[str, ...]:
    """The keys of the student's data config that fix the training views: the size and the
    normalization; the interpolation only where the training transform resizes with it (--no-aug,
    or no --train-interpolation). The crop fraction and the rest are validation's."""
    uses_interpolation = run.views.no_aug or not run.views.train_interpolation
    return ('input_size', 'mean', 'std') + (('interpolation',) if uses_interpolation else ())


def first_difference(
    built: Dict[str, Dict[str, Any]],
    now: Dict[str, Dict[str, Any]],
    parts: Sequence[str] = ('views', 'teacher', 'target'),
) -> Optional[str]:
    """The first setting, in `parts` of two fingerprints,
    where they differ: 'views (mixup: the cache has ...)'."""
    for part in parts:
        for key in sorted(set(built[part]) | set(now[part])):
            if built[part].get(key) != now[part].get(key):
                cached, current = built[part].get(key), now[part].get(key)
                return f'{part} ({key}: the cache has {cached!r}, this run {current!r})'
    return None


def rebuild_logits(
    values: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Full teacher logits from the top-K values/indices
    and the tail's log-sum-exp (exact when K = C)."""
    n, k = values.shape
    if k == num_classes:  # every class is stored
        logits = values.new_zeros(n, num_classes, dtype=torch.float32)
    else:
        logits = (tail.float() - math.log(num_classes - k)).unsqueeze(1).repeat(1, num_classes)
    return logits.scatter_(1, indices.long(), values.float())


def top_k_logits(logits: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the cache stores of each row of logits: the top-K
    values and indices, and the other logits' log-sum-exp."""
    top = logits.topk(k, dim=1)
    return top.values, top.indices, logits.scatter(1, top.indices, float('-inf')).logsumexp(1)


def top_k_loss_error(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    ks: Sequence[int],
    temperatures: Sequence[float],
    layout: str = 'exact',
) -> List[Dict[str, float]]:
    """How far the vanilla KD loss (mean over rows) moves when the teacher's logits are stored as
    the cache stores them: the top K, in `layout` (`timm_kd.cache.layout`).

    For each K and T: the loss from the full logits, from the logits rebuilt from storage, and
    the relative error.
    """
    classes, rows = teacher_logits.shape[1], []
    for k in ks:
        stored = Layout(layout, k, classes)
        rebuilt = rebuild_logits(
            *stored.decode(stored.encode(*top_k_logits(teacher_logits, k))), classes
        )
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
                    exact=round(exact, 7),
                    top_k=round(approx, 7),
                    relative_error=round(abs(approx - exact) / exact, 6),
                )
            )
    return rows


class TeacherCache:
    """A built cache: its manifest, and the teacher's
    answers of one (epoch, rank) as memory-mapped arrays."""

    def __init__(self, root: str):
        path = os.path.join(root, 'manifest.json')
        if not os.path.isfile(path):
            raise KDError(
                f'--teacher-cache {root!r} holds no manifest.json; build it with python -m '
                f'timm_kd.cache build DATA ... --out {root}'
            )
        with open(path) as f:
            self.manifest = json.load(f)
        if self.manifest.get('format') != FORMAT:
            raise KDError(
                f'--teacher-cache {root!r} has format {self.manifest.get("format")}, this timm-kd '
                f'reads {FORMAT}; rebuild it'
            )
        self.root = root
        m = self.manifest
        self.layout = Layout.of_manifest(m)

    def check(self, run: RunSpec, dataset: Any, world_size: int, epochs: Sequence[int], rank: int):
        """One line for a run whose views, teachers or targets differ from the cache's, or whose
        epochs it lacks. A run that names no teacher is compared on its views and on what the
        cached target depends on (an ensemble's temperature against this run's KD temperature)."""
        built = self.manifest['fingerprint']
        self._check_teacher_settings(run.teachers.beside_cache, built['teacher'])
        now = fingerprint(run, dataset, world_size, signature_uses_mtimes(built))
        if not run.teachers.members:
            now['target'] = {
                k: v
                for k, v in {'temperature': run.teachers.temperature}.items()
                if k in built.get('target', {})
            }
        if not run.teachers.members:
            self._say_precision(run, built['teacher'])
        parts = ('views', 'teacher', 'target') if run.teachers.members else ('views', 'target')
        diff = first_difference(built, now, parts)
        if diff:
            raise KDError(
                f"--teacher-cache {self.root!r} was built for other {diff}; train with the cache's "
                'setting or rebuild the cache'
            )
        self.fetch(epochs, rank)
        missing = [e for e in epochs if not is_built(self.root, e, rank)]
        if missing:
            covered = len(self.manifest['epochs'])
            cycle = f', or cycle its views with --view-cycle {covered}' if covered else ''
            raise KDError(
                f'--teacher-cache {self.root!r} lacks epoch {missing[0]} (it covers {covered} '
                f'epochs); build more with --epochs {max(epochs) + 1}, train fewer epochs{cycle}'
            )

    def _say_precision(self, run: RunSpec, built: Dict[str, Any]) -> None:
        """One line when the cached answers are at another precision than a live teacher of this
        run would give (--amp, --amp-dtype beside a cache built without them): the cached run
        then trains on the cache's answers, which are that rounding away from the live run's."""
        keys = ('dtype', 'amp', 'amp_dtype')
        if not all(key in built for key in keys):  # an ensemble's members keep their own dtypes
            return
        cached, live = teacher_precision(*(built[k] for k in keys)), run.teachers.precision()
        if cached != live:
            _logger.warning(
                f"--teacher-cache {self.root!r} holds the teacher's answers at {cached}; a live "
                f'teacher would answer at {live} in this run, so the targets differ from a live '
                f"run's by that rounding (build the cache with the same --amp/--amp-dtype to "
                'match it)'
            )

    def _check_teacher_settings(self, given: Sequence[Tuple[str, str, Any]], built: Dict[str, Any]):
        """One line for a teacher setting (`--teacher-mean`, ...) given without a teacher's name
        that differs from how the cache's teacher ran: the cached answers are that teacher's."""
        for key, flag, value in given:
            if 'teacher' not in built:  # one teacher's name; an ensemble's are 'teacher 1', ...
                raise KDError(
                    f'{flag} beside --teacher-cache {self.root!r}, whose answers are an '
                    "ensemble's: name its teachers with --teacher (each with its own flags) to "
                    f'compare, or drop {flag}'
                )
            cached = built.get(key)  # a setting counted only when set is absent at its default
            if _counted(key, value) != cached:
                ran = 'its own default' if cached is None else repr(cached)
                raise KDError(
                    f'{flag} {value!r} beside --teacher-cache {self.root!r}, whose teacher ran '
                    f"with {ran}: the cached answers are that teacher's; drop {flag}, or build a "
                    'cache with it'
                )

    def sample_checksums(self) -> Optional[np.ndarray]:
        """The checksum of each sample the build read, over its ranks (`write_sample_checksums`),
        or None for a cache built without them."""
        paths = sorted(glob.glob(samples_file(self.root, '*')))
        if not paths:
            return None
        merged = np.load(paths[0])
        for path in paths[1:]:
            merged = np.maximum(merged, np.load(path))
        return merged

    def fetch(self, epochs: Sequence[int], rank: int) -> None:
        """Bring the shards of `epochs` for `rank` here: a local cache has them already (a Hub
        copy downloads them, `timm_kd.cache.hub.HubTeacherCache`)."""

    def open(self, epoch: int, rank: int, verify: bool = True) -> Dict[str, np.ndarray]:
        """One epoch's shard of `rank`, its sizes and checksums verified (`shards.open_shard`)."""
        return open_shard(self.root, epoch, rank, verify)


class CachedTeacher(nn.Module):
    """Stands in for `Teacher` in training: hands out the
    cached logits of the slots of each batch, in order."""

    def __init__(self, cache: TeacherCache, rank: int, device: torch.device, verify: bool = True):
        super().__init__()
        self.cache, self.rank, self.device, self.verify = cache, rank, device, verify
        self.arrays: Dict[str, np.ndarray] = {}
        self.cursor = 0
        self._next: Optional[ShardPrefetch] = None  # the next epoch's shard, being verified

    @property
    def num_classes(self) -> int:
        return self.cache.manifest['num_classes']

    def train(self, mode: bool = True) -> 'CachedTeacher':
        return super().train(False)

    def compile(self, *args: Any, **kwargs: Any) -> 'CachedTeacher':
        return self  # nothing runs

    def start_epoch(self, epoch: int, skip_samples: int = 0, order: Optional[str] = None) -> None:
        """Open the epoch's shard (verified: by the check started during the previous epoch, or
        now) and start checking the next one in the background. `order`, the digest of this
        run's sample order (`timm_kd.replay.order_digest`), must be the build's."""
        checked = self._next is not None and self._next.epoch == epoch
        if checked:
            self._next.result()
        self.arrays, self.cursor = (
            self.cache.open(epoch, self.rank, verify=not checked),
            skip_samples,
        )
        built = shard_order(self.cache.root, epoch, self.rank)
        if order is not None and built is not None and order != built:
            raise KDError(
                f'--teacher-cache {self.cache.root!r}: epoch {epoch} reads its samples in another '
                'order than the build did (the same flags, another timm-kd or torch), so its '
                'answers would belong to other images; rebuild the cache with this version'
            )
        following = epoch + 1
        self._next = None
        if is_built(self.cache.root, following, self.rank):
            self._next = ShardPrefetch(self.cache.root, following, self.rank)

    def forward(
        self, images: torch.Tensor, stages: Optional[Sequence[int]] = None
    ) -> TeacherOutput:
        if stages is not None:
            raise KDError('feature losses need the live teacher: --teacher-cache holds logits only')
        n = images.shape[0]
        rows = slice(self.cursor, self.cursor + n)
        self.cursor += n
        read = {part: np.array(array[rows]) for part, array in self.arrays.items()}  # off the map
        decoded = self.cache.layout.decode(read)
        values, indices, tail = (t.to(self.device, non_blocking=True) for t in decoded)
        return TeacherOutput(rebuild_logits(values, indices, tail, self.num_classes))

    def forward_many(
        self, images: torch.Tensor, stage_sets: Sequence[Optional[Sequence[int]]]
    ) -> List[TeacherOutput]:
        return [self(images)] * len(stage_sets)


def _logit_losses() -> List[str]:
    return [n for n in list_kd_losses() if not get_kd_loss_class(n).needs_features]


def _counted(key: str, value: Any) -> Any:
    """A teacher setting (fingerprint key 'teacher checkpoint', its flag's value) as the
    fingerprint counts it: a file by its content (`timm_kd.identity`)."""
    kinds = {
        f'teacher {f.name}': f.metadata.get('identity') for f in dataclasses.fields(TeacherSpec)
    }
    return file_identity(value) if kinds.get(key) == 'file' else as_json(value)


def check_logit_losses_only(loss_names: Sequence[str]) -> None:
    """One line for feature losses, which need the live
    teacher's feature maps, under --teacher-cache."""
    features = [n for n in loss_names if get_kd_loss_class(n).needs_features]
    if features:
        raise KDError(
            f"--kd-loss {features[0]} is a feature loss: it needs the live teacher's feature maps, "
            'which --teacher-cache does not store; use logit losses '
            f'({", ".join(_logit_losses())}) or drop --teacher-cache'
        )


def samples_file(root: str, rank: int) -> str:
    """Where rank `rank` of a build keeps the checksum of each sample it read
    (`timm_kd.decoding`): `samples-rank-R.npy`, uint64 per dataset index, 0 where not read."""
    return os.path.join(root, f'samples-rank-{rank}.npy')


def write_sample_checksums(root: str, rank: int, recorded: np.ndarray) -> None:
    """Add what this build read to what earlier invocations of it recorded; one line when a file
    changed between them (the epochs already built hold answers to its old bytes)."""
    path = samples_file(root, rank)
    if os.path.isfile(path):
        old = np.load(path)
        both = (old != 0) & (recorded != 0)
        changed = np.flatnonzero(both & (old != recorded))
        if changed.size:
            raise KDError(
                f'training sample {int(changed[0])} changed since the epochs already in {root!r} '
                'were built; build the cache again into an empty --out'
            )
        recorded = np.maximum(old, recorded)
    buffer = io.BytesIO()
    np.save(buffer, recorded)
    write_bytes(path, buffer.getvalue())


def write_manifest(root: str, manifest: Dict[str, Any]) -> None:
    write_text(os.path.join(root, 'manifest.json'), json.dumps(manifest, indent=1))
