"""timm_kd.locks: one run per folder; a lock whose holder died is taken over with a line."""

import json
import logging
import os

import pytest

from timm_kd import KDError
from timm_kd.locks import FolderLock


def test_a_second_holder_is_refused_in_one_line_naming_the_first(tmp_path):
    with FolderLock(str(tmp_path), 'run.lock', 'the experiment folder'):
        with pytest.raises(KDError) as info:
            FolderLock(str(tmp_path), 'run.lock', 'the experiment folder')
    message = str(info.value)
    assert message.startswith(f"the experiment folder '{tmp_path}' is in use by another run (pid ")
    assert '\n' not in message
    FolderLock(str(tmp_path), 'run.lock', 'the experiment folder').release()  # free again


def test_the_lock_of_a_dead_process_is_taken_over_with_a_line(tmp_path, caplog):
    (tmp_path / 'run.lock').write_text(json.dumps({'pid': 999999, 'host': 'gone'}))  # killed
    with caplog.at_level(logging.INFO, logger='timm_kd.locks'):
        lock = FolderLock(str(tmp_path), 'run.lock', 'the experiment folder')
    assert 'Took over the lock of the experiment folder' in caplog.text and '999999' in caplog.text
    lock.release()
    assert not (tmp_path / 'run.lock').exists()  # a clean end leaves no lock file


def test_a_lock_file_removed_while_it_was_being_locked_is_not_held(tmp_path, monkeypatch):
    """A run that opened the lock file as its holder ended (and removed it) locks a file nobody
    else can find; it must lock the file at the path instead, or two runs would hold the folder."""
    from timm_kd import locks

    flock, calls = locks.fcntl.flock, []

    def holder_ends_meanwhile(fd, op):
        if op & locks.fcntl.LOCK_EX and not calls:
            calls.append(fd)
            os.unlink(tmp_path / 'run.lock')  # as the holder's release does
        return flock(fd, op)

    monkeypatch.setattr(locks.fcntl, 'flock', holder_ends_meanwhile)
    lock = FolderLock(str(tmp_path), 'run.lock', 'the experiment folder')
    assert calls  # the first file was removed under it
    assert os.fstat(lock.fd).st_ino == os.stat(tmp_path / 'run.lock').st_ino
    lock.release()


def test_a_folder_the_run_cannot_write_is_one_line(tmp_path, monkeypatch):
    import errno

    from timm_kd import locks

    def refuse(*args, **kwargs):  # as a read-only folder answers a user who is not root
        raise PermissionError(errno.EACCES, 'Permission denied')

    monkeypatch.setattr(locks.os, 'open', refuse)
    with pytest.raises(
        KDError, match=r"cannot lock the experiment folder '.*' \(Permission denied\)"
    ):
        FolderLock(str(tmp_path), 'run.lock', 'the experiment folder')


def test_a_killed_holders_lingering_workers_do_not_hold_its_lock(tmp_path):
    """A run killed with -9 leaves its forked loader workers alive for a few seconds; a resume
    started at once (a scheduler's requeue) takes the folder."""
    import signal
    import subprocess
    import sys

    script = (
        'import os, sys, time\n'
        'from timm_kd.locks import FolderLock\n'
        f'lock = FolderLock({str(tmp_path)!r}, "run.lock", "the experiment folder")\n'
        'child = os.fork()\n'
        'if child == 0:\n'
        '    time.sleep(60)\n'
        '    os._exit(0)\n'
        'print(child, flush=True)\n'
        'time.sleep(60)\n'
    )
    holder = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        assert (tmp_path / 'run.lock').exists()
        with pytest.raises(KDError):  # the holder is alive: refused
            FolderLock(str(tmp_path), 'run.lock', 'the experiment folder')
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the worker lingers
        FolderLock(str(tmp_path), 'run.lock', 'the experiment folder').release()
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)


def test_a_forked_child_neither_holds_nor_releases_its_parents_lock(tmp_path):
    lock = FolderLock(str(tmp_path), 'run.lock', 'the experiment folder')
    child = os.fork()
    if child == 0:  # releasing here would unlock and remove the parent's file
        lock.release()
        os._exit(0)
    os.waitpid(child, 0)
    assert (tmp_path / 'run.lock').exists()
    with pytest.raises(KDError):
        FolderLock(str(tmp_path), 'run.lock', 'the experiment folder')
    lock.release()
