"""What keeps a long run safe: random streams derived from (seed,
epoch), honest records across crashes, and preemption by SIGTERM/SIGINT.

- `reseed(seed, epoch, rank, step)`: at the start of every epoch (and before every batch) the
  Python, NumPy and torch generators are seeded from (seed, epoch[, step], rank).
  Everything random in a training epoch draws from them: the sampler's order, the loader workers'
  seeds (hence crops, flips, RandAugment, random erasing), mixup/cutmix, dropout and drop-path,
  CRD's negatives. A run resumed at an epoch boundary therefore trains exactly as the uninterrupted
  one, with nothing to save.
- `truncate_summary(path, start_epoch)`: a resumed run drops the rows of `summary.csv` from the
  epoch it restarts at, so a kill between the row and the checkpoint never leaves two rows for one
  epoch.
- `summary_row`, `append_summary(path, row)`: a `summary.csv` row with timm's columns first,
  in timm's order (`epoch, train_loss, eval_loss, eval_top1, eval_top5, lr`), then ours (each
  loss component, the teacher agreement), so that a script written for timm's file reads ours.
- `Preemption`: the first SIGTERM or SIGINT sets a flag; the loop finishes the current step, writes
  a recovery checkpoint and exits with one line saying how to resume. Under torchrun the ranks agree
  (an all-reduce of the flag at log intervals, so the step itself stays free of host syncs) before
  anyone writes.
"""

import csv
import io
import os
import signal
import threading
from typing import Dict, Optional

import torch
from timm.utils import random_seed

from .runtime import Process, over_ranks


def reseed(seed: int, epoch: int, rank: int = 0, step: Optional[int] = None) -> None:
    """Seed every generator from (seed, epoch, step, rank): distinct per rank, reproducible per
    position."""
    mixed = (seed * 1_000_003 + epoch) * 1_000_003 + (0 if step is None else step + 1)
    random_seed(mixed % (2**31 - 65_536), rank)  # random_seed adds the rank; NumPy takes < 2**32


def write_bytes(path: str, data: bytes) -> None:
    """Write a small file atomically: a temporary file, fsynced, renamed over `path`."""
    with open(path + '.tmp', 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + '.tmp', path)


def write_text(path: str, text: str) -> None:
    """Write a small text file atomically (`write_bytes`, UTF-8, newlines as given)."""
    write_bytes(path, text.encode())


def fsync_path(path: str) -> None:
    """fsync a file or a folder by its path (a folder: so that a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate_summary(path: str, start_epoch: int) -> None:
    """Keep only the rows of `summary.csv` for epochs
    before `start_epoch` (rewritten atomically)."""
    if not os.path.isfile(path):
        return
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) < start_epoch]
    if len(kept) == len(rows):
        return
    text = io.StringIO()
    csv.writer(text).writerows(kept)
    write_text(path, text.getvalue())


# timm's train.py writes these, in this order (its update_summary with train_one_epoch's 'loss' and
# validate's 'loss', 'top1', 'top5')
TIMM_SUMMARY_COLUMNS = ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr')


def summary_row(
    epoch: int, train: dict, evaluation: Optional[dict], lr: Optional[float]
) -> Dict[str, float]:
    """An epoch's row of `summary.csv`, as timm names its columns."""
    row = {'epoch': epoch, **{f'train_{k}': v for k, v in train.items()}}
    row.update({f'eval_{k}': v for k, v in (evaluation or {}).items()})
    if lr is not None:
        row['lr'] = lr
    return row


def append_summary(path: str, row: Dict[str, float]) -> None:
    """Append an epoch's `summary_row` to `summary.csv`: timm's columns first in timm's order, then
    ours in the order the run reports them. A file that exists keeps its own header's order."""
    columns = [c for c in TIMM_SUMMARY_COLUMNS if c in row]
    columns += [c for c in row if c not in columns]
    header = None
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, newline='') as f:
            header = next(csv.reader(f), None)
    if header and set(header) == set(columns):
        columns = header
    with open(path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if header is None:
            writer.writeheader()
        writer.writerow(row)


class Preemption:
    """Turns the first SIGTERM/SIGINT into a flag the
    training loop polls (a second one kills as usual)."""

    def __init__(self, distributed: bool = False, device: Optional[torch.device] = None):
        self.signum = 0
        self.process = Process(device, distributed=distributed)  # where the ranks compare flags
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum

    def requested(self, check_ranks: bool = True) -> int:
        """The signal number if any rank was signalled
        (ranks compared only when `check_ranks`), else 0."""
        if self.process.distributed:
            if not check_ranks:
                return 0
            return int(over_ranks(self.signum, self.process, 'max'))
        return self.signum

    def __enter__(self) -> 'Preemption':
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
