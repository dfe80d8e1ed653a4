"""Fault injection for the multi-node tests (`tests/test_multinode.py`): on PYTHONPATH, Python runs
this at the start of every process torchrun starts. In the first round (TORCHELASTIC_RESTART_COUNT
0), `TIMM_KD_TEST_FAULT` picks one fault:

- `worker`: rank 1 kills itself (SIGKILL) once the run has written a checkpoint;
- `loader`: rank 0 kills one of its loader workers while it writes its second checkpoint (between
  the write and its fsync), as a preemption or an OOM kill would;
- `write`: rank 0 kills itself in the middle of its second checkpoint write.
"""

import os

FAULT = os.environ.get('TIMM_KD_TEST_FAULT')
FIRST_ROUND = os.environ.get('TORCHELASTIC_RESTART_COUNT') == '0'
RANK = os.environ.get('RANK')

if FAULT and FIRST_ROUND and RANK is not None:
    import signal
    import threading
    import time

    def _kill_self_after_a_checkpoint():
        folder = os.environ['TIMM_KD_TEST_OUTPUT']
        while not any(
            name.endswith('.pth.tar') for _, _, files in os.walk(folder) for name in files
        ):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)

    def _loader_workers():
        """This process's forked children (DataLoader workers share its command line), not the
        helpers it may have started (a resource tracker, a compiler)."""

        def cmdline(pid):
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                return f.read()

        with open(f'/proc/{os.getpid()}/task/{os.getpid()}/children') as f:
            children = [int(pid) for pid in f.read().split()]
        return [pid for pid in children if cmdline(pid) == cmdline(os.getpid())]

    if FAULT == 'worker' and RANK == '1':
        threading.Thread(target=_kill_self_after_a_checkpoint, daemon=True).start()
    if FAULT in ('loader', 'write') and RANK == '0':
        real_fsync, calls = os.fsync, []

        def fsync(fd):
            name = os.readlink(f'/proc/self/fd/{fd}') if isinstance(fd, int) else ''
            if name.endswith('.pth.tar'):
                calls.append(name)
                if len(calls) == 2:  # the second checkpoint: its bytes written, not yet synced
                    if FAULT == 'write':
                        os.kill(os.getpid(), signal.SIGKILL)
                    os.kill(_loader_workers()[0], signal.SIGKILL)
                    time.sleep(1.0)  # the loader's SIGCHLD handler fires here
            return real_fsync(fd)

        os.fsync = fsync
