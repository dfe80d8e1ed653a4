"""timm_kd.decoding: 16-bit images scaled (not clipped), other modes converted with a line, and
unreadable files counted at the epoch's end, the run stopped past --max-skipped-fraction."""

import logging
import shutil

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from timm_kd import KDError
from timm_kd.cli.train import main
from timm_kd.cli.train.config import parse_args
from timm_kd.cli.train.parse import dataset_options
from timm_kd.data import create_datasets
from timm_kd.decoding import DecodedImages


@pytest.fixture
def odd_images(image_folder, tmp_path):
    """The image folder with a 16-bit grayscale PNG, a CMYK JPEG and a zero-byte PNG added."""
    root = tmp_path / 'data'
    shutil.copytree(image_folder, root)
    folder = root / 'train' / 'class0'
    Image.fromarray(np.full((32, 32), 30000, dtype=np.uint16)).save(folder / 'z16.png')
    Image.new('CMYK', (32, 32), (0, 128, 255, 0)).save(folder / 'zcmyk.jpg')
    (folder / 'zzero.png').write_bytes(b'')
    return root


def _item(dataset, name):
    index = next(i for i, (path, _) in enumerate(dataset.reader.samples) if path.endswith(name))
    return dataset[index][0]


def test_a_16_bit_image_is_scaled_and_each_converted_kind_is_named_once(odd_images, caplog):
    train, _ = create_datasets(dataset_options(parse_args([str(odd_images)])[0]))
    assert isinstance(train, DecodedImages)
    with caplog.at_level(logging.INFO, logger='timm_kd.decoding'):
        sixteen = np.asarray(_item(train, 'z16.png'))
        _item(train, 'z16.png')
        cmyk = np.asarray(_item(train, 'zcmyk.jpg'))
    assert sixteen.shape == (32, 32, 3) and abs(sixteen.mean() - 30000 / 257) < 1  # not 255
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 2].mean() < 20  # PIL's CMYK -> RGB
    lines = [r.getMessage() for r in caplog.records]
    assert sum('16 bits scaled to 8' in line for line in lines) == 1
    assert sum("CMYK images to RGB by PIL's conversion" in line for line in lines) == 1


def test_unreadable_files_are_counted_at_the_epochs_end_and_too_many_stop_the_run(
    odd_images, tmp_path, caplog
):
    flags = [str(odd_images), '--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '1',
             '--output', str(tmp_path)]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger='timm_kd.train'):
        main([*flags, '--experiment', 'a', '--max-skipped-fraction', '0.05'])
    assert 'epoch 0: 1 of 48 training files could not be read' in caplog.text
    with pytest.raises(KDError, match='more than --max-skipped-fraction 0.01'):
        main([*flags, '--experiment', 'b'])  # 1 in 48 is above the default 1%
