"""The cache's files: one shard per (epoch, rank), written so that a crash, a full disk or a
damaged byte never reaches training unnoticed.

A shard is three `.npy` arrays (top-K `values`, class `indices`, the `tail`'s log-sum-exp, stored
as `timm_kd.cache.layout` says) and a
sidecar `epoch-E-rank-R.json` with each array's size and CRC-32. The build writes the arrays under
temporary names (preallocated, so a full disk is one line before the teacher runs), computes the
checksums, fsyncs and renames them, and writes the sidecar last, atomically: an epoch is built
only when its sidecar is there, so a build killed between two renames is rebuilt by the rerun.
Training verifies a shard's sizes and checksums before it reads it: the first epoch's when it
opens it, each next one in the background while the previous trains (`ShardPrefetch`;
`benchmarks/cache_read.py` measures the cost).
"""

import errno
import json
import os
import threading
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import KDError
from ..reliability import fsync_path, write_text

PARTS = ('values', 'indices', 'tail')  # a layout stores some of them (`Layout.arrays`)


def shard_files(root: str, epoch: int, rank: int, parts: Sequence[str] = PARTS) -> Dict[str, str]:
    """The arrays of one shard (those of `parts`, by default any a layout may have), and its
    sidecar ('sidecar')."""
    stem = os.path.join(root, f'epoch-{epoch:04d}-rank-{rank}')
    return {**{part: f'{stem}.{part}.npy' for part in parts}, 'sidecar': f'{stem}.json'}


def crc32(path: str, value: int = 0) -> int:
    """The file's CRC-32, continuing from `value`."""
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            value = zlib.crc32(block, value)
    return value


def is_built(root: str, epoch: int, rank: int) -> bool:
    """Whether the shard was committed (its sidecar written after every array was in place)."""
    files = shard_files(root, epoch, rank)
    try:
        parts = stored_parts(read_sidecar(files['sidecar']))
    except (OSError, ValueError, KeyError):  # no sidecar yet, or not one the build wrote
        return False
    return all(os.path.isfile(files[p]) for p in parts)


def read_sidecar(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def stored_parts(sidecar: Dict[str, Any]) -> List[str]:
    """The arrays a committed shard holds, as its sidecar lists them."""
    return [p for p in sidecar['size'] if p in PARTS]


class ShardWriter:
    """One shard being built: memory-mapped temporary arrays, then `commit` (or `abort`)."""

    def __init__(self, root: str, epoch: int, rank: int, arrays: Dict[str, Tuple[Any, Tuple]]):
        """`arrays`: the dtype and shape of each part (`timm_kd.cache.layout.Layout.arrays`)."""
        self.root, self.files = root, shard_files(root, epoch, rank)
        self.place = {'epoch': epoch, 'rank': rank}
        self.arrays: Dict[str, np.ndarray] = {}
        try:
            for part, (dtype, shape) in arrays.items():
                path = self.files[part] + '.tmp'
                self.arrays[part] = np.lib.format.open_memmap(path, 'w+', dtype, shape)
                _preallocate(path)
        except OSError as e:
            self.abort()
            raise KDError(_disk_problem(e, os.path.dirname(self.files['sidecar']))) from None

    def write(self, rows: slice, parts: Dict[str, np.ndarray]) -> None:
        for part, array in parts.items():
            self.arrays[part][rows] = array

    def commit(self, order: Optional[str] = None) -> None:
        """Flush, checksum, fsync and rename the arrays; then the sidecar, which marks it built.

        The sidecar binds the arrays to their place: the epoch, rank and slot range they answer
        (in the checksums too), and `order`, the digest of the sample indices in slot order
        (`timm_kd.replay.order_digest`; None for a stream)."""
        rows = len(next(iter(self.arrays.values())))
        sidecar = {**self.place, 'slots': [0, rows], 'order': order, 'size': {}, 'crc32': {}}
        seed = _binding(sidecar)
        try:
            for part, array in self.arrays.items():
                array.flush()
                tmp = self.files[part] + '.tmp'
                sidecar['size'][part] = os.path.getsize(tmp)
                sidecar['crc32'][part] = crc32(tmp, seed)
                fsync_path(tmp)
            parts = list(self.arrays)
            self.arrays.clear()  # the maps close before the renames
            for part in parts:
                os.replace(self.files[part] + '.tmp', self.files[part])
            write_text(self.files['sidecar'], json.dumps(sidecar, indent=1))
        except OSError as e:
            self.abort()
            raise KDError(_disk_problem(e, os.path.dirname(self.files['sidecar']))) from None

    def abort(self) -> None:
        """Remove what this shard wrote (its temporary arrays)."""
        self.arrays.clear()
        for part in PARTS:  # whichever this layout wrote
            if os.path.exists(self.files[part] + '.tmp'):
                os.remove(self.files[part] + '.tmp')


def _preallocate(path: str) -> None:
    """Reserve the file's blocks now: a memory map over a sparse file on a full disk dies with
    SIGBUS in the middle of the epoch, with no message."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, 'posix_fallocate'):
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _disk_problem(e: OSError, root: str) -> str:
    if e.errno == errno.ENOSPC:
        return (
            f'the disk under --out {root!r} is full; the partial epoch was removed: free space and '
            'rerun the build (it continues at the first epoch not built)'
        )
    return f'cannot write the cache in {root!r} ({e.strerror}); pass an --out you can write to'


def _binding(sidecar: Dict[str, Any]) -> int:
    """Where a shard belongs, as the start of its arrays' checksums: a sidecar edited to another
    place no longer matches its arrays."""
    place = {k: sidecar[k] for k in ('epoch', 'rank', 'slots', 'order')}
    return zlib.crc32(json.dumps(place, sort_keys=True).encode())


def _rebuild_hint(root: str, epoch: int, rank: int) -> str:
    sidecar = os.path.basename(shard_files(root, epoch, rank)['sidecar'])
    return (
        f'rebuild it: delete {sidecar} and rerun the same python -m timm_kd.cache build ... '
        f'--out {root} (it rebuilds that epoch only)'
    )


def verify_shard(root: str, epoch: int, rank: int) -> None:
    """One line for a shard that was not completely built, or whose sizes or checksums differ from
    those its build wrote, naming the file and how to rebuild that epoch."""
    files = shard_files(root, epoch, rank)
    if not is_built(root, epoch, rank):
        raise KDError(
            f'--teacher-cache {root!r}: epoch {epoch} of rank {rank} was not completely built; '
            f'rerun the same python -m timm_kd.cache build ... --out {root} to complete it'
        )
    sidecar = read_sidecar(files['sidecar'])
    if (sidecar.get('epoch'), sidecar.get('rank')) != (epoch, rank):
        found = os.path.basename(
            shard_files(root, sidecar.get('epoch'), sidecar.get('rank'))['sidecar']
        )
        raise KDError(
            f'--teacher-cache shard {os.path.basename(files["sidecar"])} in {root!r} holds the '
            f'answers of epoch {sidecar.get("epoch")}, rank {sidecar.get("rank")} (its sidecar '
            f'says), which belong at {found}: a copy or merge misplaced it; put each shard '
            'back under its own name, or rebuild the cache'
        )
    seed = _binding(sidecar)
    for part in stored_parts(sidecar):
        problem = _damage(files[part], sidecar['size'][part], sidecar['crc32'][part], seed)
        if problem:
            raise KDError(
                f'--teacher-cache shard {files[part]} is damaged ({problem}); '
                f'{_rebuild_hint(root, epoch, rank)}'
            )


def shard_order(root: str, epoch: int, rank: int) -> Optional[str]:
    """The digest of the sample order a committed shard answers (None for a stream's)."""
    return read_sidecar(shard_files(root, epoch, rank)['sidecar']).get('order')


def open_shard(root: str, epoch: int, rank: int, verify: bool = True) -> Dict[str, np.ndarray]:
    """The arrays of a committed shard, memory-mapped, verified first unless `verify` is False
    (the caller verified it already)."""
    if verify:
        verify_shard(root, epoch, rank)
    files = shard_files(root, epoch, rank)
    try:
        parts = stored_parts(read_sidecar(files['sidecar']))
        return {part: np.load(files[part], mmap_mode='r') for part in parts}
    except (OSError, ValueError) as e:  # missing, or a header that does not parse
        raise KDError(
            f'--teacher-cache shard of epoch {epoch} cannot be read ({e}); '
            f'{_rebuild_hint(root, epoch, rank)}'
        ) from None


class ShardPrefetch:
    """Verifies the next epoch's shard in a background thread while this one trains (CRC-32 lets
    go of the GIL), so that in steady state the check costs the reading nothing."""

    def __init__(self, root: str, epoch: int, rank: int):
        self.epoch, self.error = epoch, None
        self.thread = threading.Thread(target=self._run, args=(root, epoch, rank), daemon=True)
        self.thread.start()

    def _run(self, root: str, epoch: int, rank: int) -> None:
        try:
            verify_shard(root, epoch, rank)
        except KDError as e:
            self.error = e

    def result(self) -> None:
        """Wait for the check; its one-line error, if any, is raised here."""
        self.thread.join()
        if self.error is not None:
            raise self.error


def _damage(path: str, size: int, checksum: int, seed: int) -> Optional[str]:
    actual = os.path.getsize(path)
    if actual != size:
        return f'{actual} bytes, the build wrote {size}'
    if crc32(path, seed) != checksum:
        return 'its checksum differs from the one written at build time'
    return None
