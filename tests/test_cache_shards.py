"""timm_kd.cache.shards: a shard is built whole or not at all, and a damaged one never trains."""

import errno
import json
import os

import numpy as np
import pytest

from timm_kd import KDError
from timm_kd.cache import shards
from timm_kd.cache.layout import Layout
from timm_kd.cache.shards import ShardWriter, is_built, open_shard, shard_files


def _write(root, epoch=0, slots=6, k=3):
    rng = np.random.default_rng(epoch)
    shard = ShardWriter(str(root), epoch, 0, Layout('exact', k, 100).arrays(slots))
    values = rng.standard_normal((slots, k)).astype(np.float32)
    indices = rng.integers(0, 10, (slots, k)).astype(np.int16)
    tail = rng.standard_normal(slots).astype(np.float32)
    shard.write(slice(0, slots), dict(values=values, indices=indices, tail=tail))
    shard.commit()
    return values, indices, tail


def test_a_committed_shard_reads_back_and_leaves_no_temporary_file(tmp_path):
    values, indices, tail = _write(tmp_path)
    arrays = open_shard(str(tmp_path), 0, 0)
    assert np.array_equal(arrays['values'], values) and np.array_equal(arrays['indices'], indices)
    assert np.array_equal(arrays['tail'], tail) and not list(tmp_path.glob('*.tmp'))
    sidecar = json.loads((tmp_path / 'epoch-0000-rank-0.json').read_text())
    assert set(sidecar['crc32']) == {'values', 'indices', 'tail'}


@pytest.mark.parametrize('part', ['values', 'indices', 'tail'])
def test_a_flipped_byte_is_one_line_naming_the_file_and_the_rebuild(tmp_path, part):
    _write(tmp_path)
    path = shard_files(str(tmp_path), 0, 0)[part]
    with open(path, 'r+b') as f:
        f.seek(os.path.getsize(path) - 3)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(KDError) as e:
        open_shard(str(tmp_path), 0, 0)
    message = str(e.value)
    assert path in message and 'checksum differs' in message
    assert (
        'delete epoch-0000-rank-0.json and rerun the same python -m timm_kd.cache build' in message
    )
    assert open_shard(str(tmp_path), 0, 0, verify=False)  # the check is what caught it


def test_a_truncated_shard_is_one_line_with_its_size(tmp_path):
    _write(tmp_path)
    path = shard_files(str(tmp_path), 0, 0)['values']
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) - 8)
    with pytest.raises(KDError, match='is damaged .* bytes, the build wrote'):
        open_shard(str(tmp_path), 0, 0)


def test_an_epoch_without_its_sidecar_is_not_built(tmp_path):
    _write(tmp_path)
    os.remove(shard_files(str(tmp_path), 0, 0)['sidecar'])  # killed between the renames and it
    assert not is_built(str(tmp_path), 0, 0)
    with pytest.raises(KDError, match='epoch 0 of rank 0 was not completely built; rerun'):
        open_shard(str(tmp_path), 0, 0)


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(shards.os, 'posix_fallocate', full)
    with pytest.raises(
        KDError, match='is full; the partial epoch was removed: free space and rerun'
    ):
        _write(tmp_path)
    assert not list(tmp_path.iterdir())


def test_the_compact_layout_packs_indices_exactly_and_rounds_values_finely():
    import torch

    from timm_kd.cache import top_k_logits

    logits = torch.randn(64, 1000) * 4
    values, indices, tail = top_k_logits(logits, 10)
    compact = Layout('compact', 10, 1000)
    assert compact.bytes_per_sample() == 41 and Layout('exact', 10, 1000).bytes_per_sample() == 64
    arrays = compact.encode(values, indices, tail)
    assert arrays['indices'].shape == (64, 13)  # 10 indices of 10 bits
    v, i, t = compact.decode(arrays)
    assert torch.equal(i, indices) and torch.equal(t, tail)
    assert (v - values).abs().max() < 4e-3 and torch.equal(v[:, 0], values[:, 0])


def test_the_dense_layout_keeps_every_class_within_its_rows_range_over_8190():
    import torch

    from timm_kd.cache import rebuild_logits, top_k_logits

    torch.manual_seed(0)
    logits = torch.randn(64, 1001) * 4  # an odd class count: the last code pads its three bytes
    logits[0] = 2.5  # a constant row
    dense = Layout('dense', 1001, 1001)
    assert Layout('dense', 1000, 1000).bytes_per_sample() == 1508
    arrays = dense.encode(*top_k_logits(logits, 1001))
    assert set(arrays) == {'values', 'tail'} and arrays['values'].shape == (64, 1503)
    rebuilt = rebuild_logits(*dense.decode(arrays), 1001)
    span = logits.max(1).values - logits.min(1).values
    assert ((rebuilt - logits).abs().max(1).values <= span / 8190 + 1e-5).all()
    assert torch.equal(rebuilt[0], logits[0])
    for end in (torch.amax, torch.amin):  # the row's ends are stored exactly
        assert torch.allclose(end(rebuilt, 1), end(logits, 1), rtol=0, atol=1e-5)
