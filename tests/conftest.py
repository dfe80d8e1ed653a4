import functools
import http.server
import io
import json
import os
import re
import tarfile
import threading
from types import SimpleNamespace

os.environ['HF_HUB_OFFLINE'] = '1'  # tests never touch the network

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What every tiny training run of the tests shares: 32 px, on the CPU (the tests compare CPU
# tensors, also on a CUDA machine), no loader workers, no warmup.
TINY = ['--img-size', '32', '--lr', '0.01', '--warmup-epochs', '0', '-j', '0', '--device', 'cpu']


@pytest.fixture(scope='session', autouse=True)
def _temporary_files_inside_the_base_temp(tmp_path_factory):
    """What the code under test and the programs it starts put in the temporary folder (torchrun's
    run folders, wandb's, DataLoader sockets) goes under pytest's base temp, and is removed with
    it."""
    import tempfile

    folder = str(tmp_path_factory.mktemp('tmp'))
    saved = tempfile.tempdir, os.environ.get('TMPDIR')
    tempfile.tempdir = os.environ['TMPDIR'] = folder
    yield
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        del os.environ['TMPDIR']
    else:
        os.environ['TMPDIR'] = saved[1]


@pytest.fixture(scope='session')
def image_folder(tmp_path_factory):
    """A tiny 3-class ImageFolder (train/ and validation/)
    of 32px RGB images whose class sets the brightness."""
    root = tmp_path_factory.mktemp('imagefolder')
    rng = np.random.default_rng(0)
    for split, per_class in (('train', 16), ('validation', 8)):
        for c in range(3):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = (rng.random((32, 32, 3)) * 80 + c * 60).astype('uint8')
                Image.fromarray(pixels).save(folder / f'{i}.png')
    return str(root)


@pytest.fixture(scope='session')
def vit_teacher(tmp_path_factory):
    """The flags of a 3-class test_vit teacher at 32 px, from a checkpoint of random weights."""
    import timm

    path = tmp_path_factory.mktemp('vit') / 'vit.pth'
    torch.save(timm.create_model('test_vit', num_classes=3, img_size=32).state_dict(), path)
    return ['--teacher', 'test_vit', '--teacher-kwargs', 'img_size=32',
            '--teacher-checkpoint', str(path)]  # fmt: skip


@pytest.fixture(scope='session')
def wds_shards(tmp_path_factory):
    """The images of `image_folder`'s kind as webdataset shards, as timm's `--dataset wds/` reads
    them: two training shards of 24 and one validation shard of 24 (.jpg + .cls) with an
    `_info.json`."""
    root = tmp_path_factory.mktemp('wds')
    rng = np.random.default_rng(1)
    splits = {}
    for split, shards in (('train', 2), ('validation', 1)):
        names, lengths = [], []
        for shard in range(shards):
            name = f'{split}-{shard:03d}.tar'
            with tarfile.open(root / name, 'w') as tar:
                for i in range(24):
                    c = i % 3
                    pixels = (rng.random((32, 32, 3)) * 80 + c * 60).astype('uint8')
                    image = io.BytesIO()
                    Image.fromarray(pixels).save(image, format='JPEG', quality=95)
                    for ext, data in (('jpg', image.getvalue()), ('cls', str(c).encode())):
                        info = tarfile.TarInfo(f'{split}{shard}_{i:04d}.{ext}')
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            names.append(name)
            lengths.append(24)
        splits[split] = dict(name=split, num_samples=sum(lengths), filenames=names,
                             shard_lengths=lengths)  # fmt: skip
    (root / '_info.json').write_text(json.dumps({'name': 'tiny', 'splits': splits}))
    return str(root)


@pytest.fixture
def hub_endpoint(tmp_path, monkeypatch):
    """A local Hugging Face Hub (`hub_endpoint.HubEndpoint`) that huggingface_hub talks to, online,
    with an empty Hub cache of its own."""
    from hub_endpoint import HubEndpoint
    from huggingface_hub import constants

    hub = HubEndpoint()
    monkeypatch.setattr(constants, 'ENDPOINT', hub.url)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                        hub.url + '/{repo_id}/resolve/{revision}/{filename}')  # fmt: skip
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hub_cache'))
    monkeypatch.setenv('HF_TOKEN', 'hf_' + 'x' * 34)
    yield hub
    hub.close()


class FileServer:
    """A local HTTP server for the files under `root` (a
    stand-in for a GitHub release); records request paths."""

    def __init__(self, root):
        self.root, self.requests = root, []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(
            ('127.0.0.1', 0), functools.partial(Handler, directory=str(root))
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}/'


@pytest.fixture
def file_server(tmp_path):
    server = FileServer(tmp_path / 'served')
    server.root.mkdir()
    yield server
    server.server.shutdown()


@pytest.fixture
def run_cli(capsys):
    """Run a program's `cli(argv)` in-process and end as its console script would: returns its exit
    status and stderr (the one-line errors), without the start-up of a subprocess."""

    def run(cli, *args):
        capsys.readouterr()
        try:
            cli([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)

    return run


@pytest.fixture(autouse=True)
def _no_handlers_on_closed_streams():
    """In-process training installs logging handlers bound to the captured stderr of the test (or
    fixture) that ran it; once pytest closes that stream, drop them, so later log records do not
    fail on it."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(getattr(handler, 'stream', None), 'closed', False):
            root.removeHandler(handler)


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    """Empty Hugging Face and torch caches per test, so nothing cached on the machine leaks in."""
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf_home'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))  # timm's download cache
    # release files: refused at once, never GitHub
    monkeypatch.setenv('TIMM_KD_RELEASE_URL', 'http://127.0.0.1:9/')
    monkeypatch.delenv('TIMM_KD_HUB_ORG', raising=False)
    torch.manual_seed(0)


def fair_convnextv2_layout(state_dict):
    """timm ConvNeXt-V2 keys -> the FAIR release layout (the
    file format VanillaKD's convnextv2_tiny shipped in)."""
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r'^stem\.', 'downsample_layers.0.', k)
        k = re.sub(r'stages\.(\d+)\.downsample\.(\d+)', r'downsample_layers.\1.\2', k)
        k = re.sub(r'stages\.(\d+)\.blocks\.(\d+)', r'stages.\1.\2', k)
        k = k.replace('conv_dw', 'dwconv').replace('mlp.fc', 'pwconv')
        if 'mlp.grn' in k:
            k, v = (
                k.replace('mlp.grn.weight', 'grn.gamma').replace('mlp.grn.bias', 'grn.beta'),
                v.reshape(1, 1, 1, -1),
            )
        k = k.replace('head.norm', 'norm').replace('head.fc', 'head')
        out[k] = v
    return out
