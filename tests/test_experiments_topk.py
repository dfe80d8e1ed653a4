"""`python -m timm_kd.experiments topk`: the 100-class Fashion-MNIST pairs task it trains on."""

import struct

import numpy as np
from PIL import Image

from timm_kd.cli.experiments.topk import write_pairs


def _idx_files(raw, prefix, images, labels):
    with open(raw / f'{prefix}-images-idx3-ubyte', 'wb') as f:
        f.write(struct.pack('>4i', 0x803, *images.shape) + images.tobytes())
    with open(raw / f'{prefix}-labels-idx1-ubyte', 'wb') as f:
        f.write(struct.pack('>2i', 0x801, len(labels)) + labels.tobytes())


def test_pairs_put_two_items_side_by_side_labelled_by_both_classes(tmp_path):
    raw = tmp_path / 'data' / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    sets = {}
    for prefix, n in (('train', 40), ('t10k', 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _idx_files(raw, prefix, images, labels)
        sets[prefix] = images, labels
    write_pairs(str(tmp_path / 'data'), str(tmp_path / 'pairs'))

    for split, prefix in (('train', 'train'), ('validation', 't10k')):
        images, labels = sets[prefix]
        files = sorted((tmp_path / 'pairs' / split).glob('*/*.png'))
        assert (
            len(files) == len(labels) // 2
            and len(list((tmp_path / 'pairs' / split).iterdir())) == 100
        )
        used = []
        for path in files:
            pair = np.asarray(Image.open(path))
            assert pair.shape == (28, 56)
            a = next(i for i in range(len(images)) if (images[i] == pair[:, :28]).all())
            b = next(i for i in range(len(images)) if (images[i] == pair[:, 28:]).all())
            assert int(path.parent.name) == 10 * labels[a] + labels[b]
            used += [a, b]
        assert sorted(used) == list(range(len(labels)))  # each image used once
    stamp = (tmp_path / 'pairs' / 'done').stat().st_mtime
    write_pairs(str(tmp_path / 'data'), str(tmp_path / 'pairs'))  # written once
    assert (tmp_path / 'pairs' / 'done').stat().st_mtime == stamp


def test_the_table_gives_loss_error_and_top1_per_k_and_temperature(tmp_path):
    from timm_kd.cli.experiments.topk import plot, table

    results = {
        'teacher': {'top1': 79.0},
        'scratch': {'top1': 64.4},
        'T=1': {'live': {'top1': 75.0}, 'K=1': {'top1': 71.2}, 'K=100': {'top1': 75.0}},
        'T=4': {'live': {'top1': 76.0}, 'K=1': {'top1': 60.5}, 'K=100': {'top1': 76.0}},
        'loss_error': [
            dict(k=k, temperature=t, relative_error=e)
            for k, t, e in ((1, 1.0, 0.5), (1, 4.0, 0.25), (100, 1.0, 0.0), (100, 4.0, 0.0))
        ],
    }
    text = table(results, [1, 100], [1.0, 4.0])
    assert (
        '| K of 100 | KD loss error, T = 1 | top-1 (%), T = 1 | KD loss error, T = 4 | top-1 (%), '
        'T = 4 |' in text
    )
    assert (
        '| 1 | 50.00% | 71.20 | 25.00% | 60.50 |' in text
        and '| 100 | 0.00% | 75.00 | 0.00% | 76.00 |' in text
    )
    assert (
        '| live teacher | - | 75.00 | - | 76.00 |' in text
        and '| no teacher | - | 64.40 | - | 64.40 |' in text
    )
    plot(results, [1, 100], [1.0, 4.0], str(tmp_path))
    assert (tmp_path / 'topk.png').stat().st_size > 1000
