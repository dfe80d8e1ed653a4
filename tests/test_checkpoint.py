"""Safe checkpoint loading: formats, EMA choice, and refusal of pickles that would run code."""

import os

import pytest
import torch
from safetensors.torch import save_file

from timm_kd import KDError
from timm_kd.checkpoint import load_state_dict


class RunsCodeOnLoad:
    """Unpickling this calls `open(marker, 'w')`: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


class PlainObject:
    pass


def _weights(value):
    return {'fc.weight': torch.full((2, 3), float(value)), 'fc.bias': torch.zeros(2)}


def test_training_checkpoint_prefers_ema_unless_told(tmp_path):
    path = str(tmp_path / 'ckpt.pth.tar')
    torch.save({'epoch': 3, 'state_dict': _weights(1), 'state_dict_ema': _weights(2)}, path)
    assert load_state_dict(path)['fc.weight'][0, 0] == 2
    assert load_state_dict(path, use_ema=False)['fc.weight'][0, 0] == 1


def test_bare_state_dict_safetensors_and_ddp_prefix(tmp_path):
    torch.save({'module.' + k: v for k, v in _weights(3).items()}, tmp_path / 'bare.pth')
    assert set(load_state_dict(str(tmp_path / 'bare.pth'))) == {'fc.weight', 'fc.bias'}
    save_file(_weights(4), str(tmp_path / 'w.safetensors'))
    assert load_state_dict(str(tmp_path / 'w.safetensors'))['fc.weight'][0, 0] == 4


def test_timm_style_checkpoint_with_args_namespace_loads_safely(tmp_path):
    import argparse

    path = str(tmp_path / 'ckpt.pth.tar')
    torch.save({'state_dict': _weights(5), 'args': argparse.Namespace(model='x', lr=0.1)}, path)
    assert load_state_dict(path)['fc.weight'][0, 0] == 5


def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = str(tmp_path / 'code_ran')
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': _weights(1), 'payload': RunsCodeOnLoad(marker)}, path)
    with pytest.raises(KDError, match=r'refusing to load .*--allow-unsafe-pickle'):
        load_state_dict(path)
    assert not os.path.exists(marker)


def test_unsafe_pickle_loads_only_with_explicit_opt_in(tmp_path):
    path = str(tmp_path / 'custom.pth')
    torch.save({'state_dict': _weights(6), 'meta': PlainObject()}, path)
    with pytest.raises(KDError, match='refusing to load'):
        load_state_dict(path)
    assert load_state_dict(path, allow_pickle=True)['fc.weight'][0, 0] == 6


@pytest.mark.parametrize('content', [b'', b'not a checkpoint' * 8])
def test_corrupt_files_give_one_line_errors(tmp_path, content):
    for name in ('bad.pth', 'bad.safetensors'):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(KDError, match='corrupt or unreadable.*re-download') as err:
            load_state_dict(str(tmp_path / name))
        assert '\n' not in str(err.value)


def test_truncated_checkpoint_and_missing_file(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save(_weights(1), good)
    (tmp_path / 'cut.pth').write_bytes(good.read_bytes()[:200])
    with pytest.raises(KDError, match='corrupt'):
        load_state_dict(str(tmp_path / 'cut.pth'))
    with pytest.raises(KDError, match='checkpoint not found'):
        load_state_dict(str(tmp_path / 'absent.pth'))


def test_file_without_tensors_is_rejected(tmp_path):
    torch.save({'epoch': 1}, tmp_path / 'empty.pth')
    with pytest.raises(KDError, match='no model weights'):
        load_state_dict(str(tmp_path / 'empty.pth'))
