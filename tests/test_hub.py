"""`python -m timm_kd.hub`: export of train_kd.py checkpoints and release files to timm Hub folders, and push."""
import json
import logging
import re
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import ROOT, fair_convnextv2_layout
from timm_kd.hub import export, main

sys.path.insert(0, ROOT)
import train_kd  # noqa: E402


@pytest.fixture(scope='module')
def kd_checkpoint(image_folder, tmp_path_factory):
    """A timm-kd training checkpoint with EMA and learnable KD parts (fitnet regressors, an auxiliary head)."""
    out = tmp_path_factory.mktemp('kdrun')
    vit = out / 'vit.pth'
    torch.save(timm.create_model('test_vit', num_classes=3, img_size=32).state_dict(), vit)
    train_kd.main([image_folder, '--model', 'test_resnet', '--img-size', '32', '-b', '8', '-j', '0', '--epochs', '1',
                   '--teacher', 'test_vit', '--teacher-kwargs', 'img_size=32', '--teacher-checkpoint', str(vit),
                   '--kd-loss', 'kd', 'fitnet', '--kd-deep-supervision', '2', '--model-ema', '--model-ema-decay', '0.5',
                   '--output', str(out), '--experiment', 'kd'])
    return out / 'kd' / 'last.pth.tar'


def test_export_writes_a_timm_folder_of_the_student_only(kd_checkpoint, tmp_path):
    folder = tmp_path / 'export'
    main(['export', str(kd_checkpoint), '--model', 'test_resnet', '--out', str(folder), '--top5', '99.5'])
    weights = load_file(folder / 'model.safetensors')
    assert set(weights) == set(timm.create_model('test_resnet', num_classes=3).state_dict())
    ckpt = torch.load(kd_checkpoint, map_location='cpu', weights_only=False)
    assert all(torch.equal(weights[k], v) for k, v in ckpt['state_dict_ema'].items())  # EMA weights by default
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['num_classes'] == 3
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32]
    assert config['kd'] == {'teacher': 'test_vit', 'kd_loss': 'kd, fitnet', 'epochs': 1, 'top1': round(ckpt['metric'], 3),
                            'top5': 99.5, 'dataset': re.sub('.*/', '', str(config['kd']['dataset']))}
    card = (folder / 'README.md').read_text()
    front = card.split('---')[1]
    assert 'library_name: timm' in front and 'license: apache-2.0' in front and '- knowledge-distillation' in front
    assert 'datasets:' in front
    for fact in ('Params (M):', 'GMACs:', 'Image size: 32 x 32', '**Teacher:** test_vit', 'hao2023vanillakd',
                 '| test_resnet |'):
        assert fact in card, fact
    raw = tmp_path / 'raw'
    (tmp_path / 'results.json').write_text(json.dumps({'top1': 71.25, 'top5': 90.5}))  # as timm_kd.validate writes
    main(['export', str(kd_checkpoint), '--model', 'test_resnet', '--out', str(raw), '--no-ema',
          '--results', str(tmp_path / 'results.json')])
    assert torch.equal(load_file(raw / 'model.safetensors')['fc.weight'], ckpt['state_dict']['fc.weight'])
    assert '| test_resnet | 71.25 | 90.5 |' in (raw / 'README.md').read_text()


def test_export_converts_a_fair_convnextv2_release_file(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('convnextv2_atto', num_classes=10).eval()
    fair = fair_convnextv2_layout(model.state_dict())
    assert 'downsample_layers.1.1.weight' in fair and 'stages.0.0.grn.gamma' in fair
    torch.save({'model': fair}, tmp_path / 'convnextv2_atto-release.pth')
    export(str(tmp_path / 'convnextv2_atto-release.pth'), 'convnextv2_atto', str(tmp_path / 'out'))
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()  # config.json + weights
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


class _Boom:
    def __reduce__(self):
        return (print, ('PWNED',))


def test_export_refuses_pickled_code_and_names_the_fix(tmp_path, capsys):
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': _Boom()}, tmp_path / 'evil.pth')
    with pytest.raises(SystemExit) as exit_info:
        main(['export', str(tmp_path / 'evil.pth'), '--model', 'test_resnet', '--out', str(tmp_path / 'o')])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and 'PWNED' not in out
    assert err.startswith('error: refusing to load') and '--allow-unsafe-pickle' in err


def test_export_of_a_mismatched_architecture_is_one_line(kd_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(['export', str(kd_checkpoint), '--model', 'test_vit', '--out', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "does not fit 'test_vit'" in err and 'as --model' in err
    assert len(err.strip().splitlines()) == 1


class _RecordingApi:
    """Stands in for huggingface_hub.HfApi: records calls and the uploaded files, talks to no server."""
    calls = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        self.calls.append(('create_repo', repo_id, private))

        class Url:
            pass
        url = Url()
        url.repo_id = repo_id
        return url

    def create_branch(self, repo_id, branch, exist_ok=False, **kwargs):
        self.calls.append(('create_branch', repo_id, branch))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message='', **kwargs):
        import os
        self.calls.append(('upload_folder', repo_id, revision, sorted(os.listdir(folder_path))))


def test_push_creates_the_repo_uploads_the_folder_and_never_shows_the_token(kd_checkpoint, monkeypatch, capsys,
                                                                              caplog):
    import huggingface_hub
    secret = 'hf_' + 'S3cr3tT0ken' * 3
    monkeypatch.setenv('HF_TOKEN', secret)
    monkeypatch.setattr(huggingface_hub, 'HfApi', _RecordingApi)
    _RecordingApi.calls = []
    with caplog.at_level(logging.DEBUG):
        main(['push', str(kd_checkpoint), '--model', 'test_resnet', '--repo-id', 'me/test_resnet.kd', '--private',
              '--revision', 'v1'])
    out, err = capsys.readouterr()
    assert _RecordingApi.calls == [('create_repo', 'me/test_resnet.kd', True), ('create_branch', 'me/test_resnet.kd', 'v1'),
                                   ('upload_folder', 'me/test_resnet.kd', 'v1', ['README.md', 'config.json', 'model.safetensors'])]
    assert 'pushed to https://huggingface.co/me/test_resnet.kd' in out
    assert secret not in out + err + caplog.text
