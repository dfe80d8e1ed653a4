"""Checkpoints that are never lost: timm's `CheckpointSaver` ranking
and history, with every file written durably and replaced atomically.

timm's saver deletes `last.pth.tar` before renaming the new file over it and never fsyncs, so a kill
in that gap, or a power cut before the page cache is flushed, leaves no loadable `last.pth.tar`.
Here each file is written to a temporary name, fsynced, renamed over the old one (`os.replace`,
atomic on POSIX), and the folder is fsynced: at every instant `last.pth.tar` is either the previous
checkpoint or the new one. A full disk is one line, keeps the previous checkpoint and removes the
temporary file. Weights that are not finite are never written (`NonFiniteError`): a run that
diverged keeps its last good checkpoints.
"""

import errno
import os
import shutil
from typing import Any, Dict, List, Optional

import torch
from timm.utils import CheckpointSaver

from .errors import KDError, NonFiniteError, flat
from .reliability import fsync_path


def resumable_checkpoint(folder: str) -> str:
    """The checkpoint `--resume auto` takes in `folder`: the newest of last.pth.tar and the
    recovery checkpoints ('' when there is none)."""
    if not os.path.isdir(folder):
        return ''
    paths = [
        os.path.join(folder, n)
        for n in os.listdir(folder)
        if n == 'last.pth.tar' or (n.startswith('recovery-') and n.endswith('.pth.tar'))
    ]
    return max(paths, key=os.path.getmtime) if paths else ''


def resume_candidates(folder: str) -> List[List[str]]:
    """What `--resume auto` may take in `folder`, newest first: last.pth.tar, the recovery and the
    numbered checkpoints, the names of one file (timm hard-links last, checkpoint-N and model_best)
    grouped together, last.pth.tar's group first among files of the same time."""
    if not os.path.isdir(folder):
        return []
    groups: Dict[Any, List[str]] = {}
    for name in sorted(os.listdir(folder)):
        if name == 'last.pth.tar' or (
            name.startswith(('recovery-', 'checkpoint-')) and name.endswith('.pth.tar')
        ):
            path = os.path.join(folder, name)
            stat = os.stat(path)
            groups.setdefault((stat.st_dev, stat.st_ino), []).append(path)
    last = os.path.join(folder, 'last.pth.tar')
    ranked = sorted(
        groups.values(), key=lambda g: (os.path.getmtime(g[0]), last in g), reverse=True
    )
    return [sorted(g, key=lambda p: p != last) for g in ranked]


def newest_checkpoint(folder: str) -> str:
    """`resumable_checkpoint`, else the newest numbered checkpoint; '' when there is none."""
    numbered = [os.path.join(folder, n) for n in os.listdir(folder)
                if n.startswith('checkpoint-') and n.endswith('.pth.tar')]  # fmt: skip
    return resumable_checkpoint(folder) or (max(numbered, key=os.path.getmtime) if numbered else '')


def non_finite_tensors(state: Dict[str, Any]) -> list:
    """Names of the floating-point tensors of `state` holding
    a NaN or an infinity (one host sync per device)."""
    names = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not names:
        return []
    devices = {state[k].device for k in names}  # one blocking copy per device
    finite = {}
    for device in devices:
        keys = [k for k in names if state[k].device == device]
        finite.update(
            zip(keys, torch.stack([state[k].isfinite().all() for k in keys]).cpu().tolist())
        )
    return [k for k in names if not finite[k]]


class DurableCheckpointSaver(CheckpointSaver):
    """`CheckpointSaver` with atomic, fsynced files, a
    one-line full-disk error and a non-finite guard.

    `extra_state` (a dict) is written into every checkpoint: the loop puts the position of a
    recovery checkpoint there (`recovery_update`), so that `--resume` continues mid-epoch. Beside
    timm's `args`, each checkpoint records the typed run (`run_record`) in the saver's state,
    `checkpoint['saver']['run']`.
    """

    extra_state: Optional[Dict[str, Any]] = None
    run_record: Optional[Dict[str, Any]] = None  # the typed run, `timm_kd.run.run_record`
    label_names: Optional[list] = None  # the training data's class names, for the exported config

    def _save(self, save_path, epoch, metric=None):
        models = {'': self.model}
        if self.task is not None and self.task.has_ema():
            models['EMA '] = self.task.get_eval_model(ema=True)
        for which, model in models.items():
            bad = non_finite_tensors(model.state_dict())
            if bad:
                raise NonFiniteError(
                    f'the {which}weights are not finite in epoch {epoch} ({bad[0]} and '
                    f'{len(bad) - 1} more); nothing was saved and the last good checkpoints stay: '
                    f'resume from one with a lower --lr or with --clip-grad'
                )
        try:
            with open(save_path, 'wb') as f:
                # timm's checkpoint layout; torch.save writes into the open file
                super()._save(f, epoch, metric)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:  # ENOSPC: a RuntimeError from torch's zip writer
            if os.path.exists(save_path):
                os.remove(save_path)
            folder = os.path.dirname(save_path) or '.'
            newest = newest_checkpoint(folder)
            where = f'resume from {newest}' if newest else 'no checkpoint of this run exists yet'
            raise KDError(_write_problem(save_path, e, newest) + where) from None

    def state_dict(self, epoch=None, metric=None):
        labels = {'label_names': self.label_names} if self.label_names else {}
        run = {'run': self.run_record} if self.run_record else {}
        return {**super().state_dict(epoch, metric), **labels, **run, **(self.extra_state or {})}

    def load_state_dict(self, state_dict):
        """timm's restore, plus the resumed checkpoint's own metric, which timm counts only when its
        numbered file is in this folder: a run resumed into another folder would otherwise forget
        the best epoch."""
        super().load_state_dict({**state_dict, 'pending': (None, None)})
        self._restored_best = (self.best_metric, self.best_epoch)
        self.pending = state_dict.get('pending', (None, None))
        epoch, metric = self.pending
        if metric is not None and (self.best_metric is None or self.cmp(metric, self.best_metric)):
            self.best_metric, self.best_epoch = metric, epoch

    def remove_temporary_files(self) -> None:
        """Temporary files a killed run left behind (a checkpoint being written, a copy being
        linked, a file being replaced): a run that resumes into the folder drops them."""
        for name in os.listdir(self.checkpoint_dir):
            if name.endswith('.tmp') or name in (
                'tmp' + self.extension,
                'recovery_tmp' + self.extension,
            ):
                os.remove(os.path.join(self.checkpoint_dir, name))

    def finish_pending_save(self, resumed_from: str) -> None:
        """After a resume from this folder's `last.pth.tar`: do what its save did not finish when
        it was killed after writing it (the numbered copy, `model_best`), as the uninterrupted
        run did. Called when the resumed run is accepted, before it writes anything else."""
        epoch, metric = getattr(self, 'pending', (None, None))
        last = os.path.join(self.checkpoint_dir, 'last' + self.extension)
        if epoch is None or os.path.abspath(resumed_from) != os.path.abspath(last):
            return
        self.best_metric, self.best_epoch = self._restored_best
        path = self._checkpoint_path(epoch)
        if path in [f for f, _ in self.checkpoint_files]:
            self.checkpoint_files = [c for c in self.checkpoint_files if c[0] != path]
        worst = self.checkpoint_files[-1] if self.checkpoint_files else None
        keep = (
            len(self.checkpoint_files) < self.max_history
            or worst[1] is None
            or (metric is not None and self.cmp(metric, worst[1]))
        )
        if keep:
            if len(self.checkpoint_files) >= self.max_history:
                self._cleanup_checkpoints(1)
            self._duplicate(last, path)
            self._track_checkpoint(path, epoch, metric)

    def _replace(self, src, dst):
        # atomic; timm deletes dst first (for Windows), which opens a gap with no file
        os.replace(src, dst)
        fsync_path(os.path.dirname(dst) or '.')

    def _duplicate(self, src, dst):
        if os.path.exists(dst) and os.path.samefile(src, dst):
            return  # already a link to it (renaming a link over its twin would do nothing)
        tmp = dst + '.tmp'
        if os.path.exists(tmp):
            os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
            with open(tmp, 'rb') as f:
                os.fsync(f.fileno())
        self._replace(tmp, dst)


def _write_problem(path: str, e: BaseException, newest: Optional[str]) -> str:
    """Why a checkpoint could not be written. A full disk only when it is one (ENOSPC, or less free
    space than the newest checkpoint takes): a write interrupted by something else, such as a
    killed loader worker's signal, says so instead."""
    folder = os.path.dirname(path) or '.'
    free = shutil.disk_usage(folder).free
    needed = os.path.getsize(newest) if newest and os.path.exists(newest) else 64 * 2**20
    what = flat(e, 100)
    if getattr(e, 'errno', None) == errno.ENOSPC or 'No space left' in what or free < needed:
        return (
            f'cannot write checkpoint {path} ({what}; {free / 2**20:.0f} MiB free); free disk '
            'space or choose another --output: the previous checkpoints are kept, '
        )
    return (
        f'the write of checkpoint {path} was interrupted ({what}); it was removed and the '
        'previous checkpoints are kept, '
    )
