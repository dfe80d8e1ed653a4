"""Folder locks: one run per experiment folder, one cache build per output folder (and rank).

The lock is an advisory `flock` on a file in the folder, which the kernel releases when its
process dies however it dies; the file keeps the holder's pid and host so that the next holder can
say whose lock it took over, and a refused run can say who holds it. A forked child (a DataLoader
worker) inherits the locked descriptor, and a `flock` lasts while any copy of it is open: so each
child closes its copies at once (`os.register_at_fork`), and the lock ends with its holder even
while the killed holder's workers linger for a few seconds. A clean release removes the
file (a finished experiment folder holds no lock file); a holder checks, once it has the lock, that
the file it locked is still the one at the path, so a file removed under a waiting opener is never
held twice.
"""

import fcntl
import json
import logging
import os
import socket
from typing import Optional, Set

from .errors import KDError

_logger = logging.getLogger(__name__)
_HELD: Set[int] = set()  # the descriptors of the locks this process holds


def _close_inherited() -> None:
    """In a forked child: close the lock descriptors the parent holds (the child holds none)."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited)


class FolderLock:
    """Hold `folder/name` for this process until `release` (or the process ends)."""

    def __init__(self, folder: str, name: str, what: str):
        self.path = os.path.join(folder, name)
        self.fd: Optional[int] = None
        while self.fd is None:
            self.fd, previous = self._acquire(folder, what)
        if previous and (previous.get('pid'), previous.get('host')) != (os.getpid(), _host()):
            _logger.info(
                f'Took over the lock of {what} {folder!r} from pid {previous["pid"]} on '
                f'{previous["host"]}, which no longer holds it (it ended or was killed)'
            )
        self.owner = os.getpid()  # a forked copy of this object holds nothing
        _HELD.add(self.fd)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({'pid': os.getpid(), 'host': _host()}).encode(), 0)

    def _acquire(self, folder: str, what: str):
        """(the locked file's descriptor, its previous holder), or (None, None) when the file was
        removed or replaced between opening and locking it (then the caller tries again)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise KDError(
                f'cannot lock {what} {folder!r} ({e.strerror}); pass a folder you can write to'
            ) from None
        previous = _read_holder(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = f' (pid {previous["pid"]} on {previous["host"]})' if previous else ''
            raise KDError(
                f'{what} {folder!r} is in use by another run{holder}; wait for it to end or use '
                'another folder'
            ) from None
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None, None
        return fd, previous

    def release(self) -> None:
        if self.fd is not None and self.owner == os.getpid():  # never a forked copy
            _HELD.discard(self.fd)
            try:
                os.unlink(self.path)  # a clean end leaves no lock file, and no holder to take over
            except FileNotFoundError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> 'FolderLock':
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _host() -> str:
    return socket.gethostname()


def _read_holder(fd: int) -> Optional[dict]:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data else None
    except (OSError, ValueError):
        return None
