"""Several nodes and elastic restarts under torchrun
(gloo on the CPU, c10d rendezvous on localhost).

Two agents of one process each train what one agent of two processes trains; with --max-restarts 1
and --resume auto, a killed worker, a killed loader worker and a kill during a checkpoint write each
end equal to the uninterrupted run: the restarted group forms every time.

Only the loader fault runs loader workers (the views replay whatever --workers): CPython up to
3.11.7 can deadlock a child forked while another thread creates a Python thread state (CPython
gh-112275), and gloo's threads do so, so every fork next to them is a chance of a hung worker. A run
that hangs anyway is killed with its workers and fails with its log.
"""

import csv
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

FLAGS = ['--model', 'test_resnet', '--img-size', '32', '-b', '4', '--lr', '0.01',
         '--warmup-epochs', '0', '-j', '0', '--device', 'cpu', '--epochs', '2',
         '--mixup', '0.5', '--aa', 'rand-m9-mstd0.5', '--reprob', '0.25', '--drop', '0.1',
         '--recovery-interval', '2', '--resume', 'auto']  # fmt: skip


def _port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _torchrun(nnodes, nproc, port, image_folder, output, *, restarts=0, fault=None):
    workers = ['-j', '1'] if fault == 'loader' else []  # a loader worker to kill
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nnodes={nnodes}',
           f'--nproc-per-node={nproc}', '--rdzv-backend=c10d', f'--rdzv-endpoint=localhost:{port}',
           '--rdzv-id=kd', f'--max-restarts={restarts}', '-m', 'timm_kd.train', image_folder,
           *FLAGS, *workers, '--output', str(output.parent),
           '--experiment', output.name]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS='1', TIMM_KD_TEST_OUTPUT=str(output))
    if fault:
        hooks = os.path.join(ROOT, 'tests', 'elastic')
        env.update(TIMM_KD_TEST_FAULT=fault, PYTHONPATH=os.pathsep.join([hooks, ROOT]))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def _finish(*agents, timeout=180):
    """The agents' logs once all have ended; a run still going after `timeout` seconds (a run takes
    about 20) is killed with its workers, and fails with its log."""
    logs = []
    for agent in agents:
        try:
            logs.append(agent.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for other in agents:
                if other.poll() is None:
                    os.killpg(other.pid, signal.SIGKILL)
            pytest.fail(f'hung for {timeout} s; its log ends:\n{agent.communicate()[0][-3000:]}')
    for agent, log in zip(agents, logs):
        assert agent.returncode == 0, log[-3000:]
    return '\n'.join(logs)


def _rows(folder):
    with open(folder / 'summary.csv') as f:
        return list(csv.DictReader(f))


def _same_run(a, b):
    assert _rows(a) == _rows(b)
    wa, wb = (torch.load(f / 'last.pth.tar', weights_only=False)['state_dict'] for f in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope='module')
def one_agent(image_folder, tmp_path_factory):
    """The uninterrupted run: one agent, two processes."""
    output = tmp_path_factory.mktemp('runs') / 'one-agent'
    _finish(_torchrun(1, 2, _port(), image_folder, output))
    return output


def test_two_agents_of_one_process_train_as_one_agent_of_two(one_agent, image_folder, tmp_path):
    port, output = _port(), tmp_path / 'two-agents'
    _finish(*[_torchrun(2, 1, port, image_folder, output) for _ in range(2)])
    _same_run(output, one_agent)


@pytest.mark.parametrize('fault', ['worker', 'loader', 'write'])
def test_an_elastic_restart_after_a_kill_ends_as_the_uninterrupted_run(
    one_agent, image_folder, tmp_path, fault
):
    output = tmp_path / fault
    log = _finish(_torchrun(1, 2, _port(), image_folder, output, restarts=1, fault=fault))
    assert 'Loaded checkpoint' in log  # the restarted group resumed
    assert 'free disk space' not in log
    if fault == 'loader':  # the worker's death interrupted the write, and is named
        assert 'was interrupted (DataLoader worker' in log
    _same_run(output, one_agent)
