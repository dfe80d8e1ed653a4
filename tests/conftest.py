import os

os.environ['HF_HUB_OFFLINE'] = '1'  # tests never touch the network

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def image_folder(tmp_path_factory):
    """A tiny 3-class ImageFolder (train/ and validation/) of 32px RGB images whose class sets the brightness."""
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


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache per test, so nothing cached on the machine leaks in."""
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf_home'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    torch.manual_seed(0)
