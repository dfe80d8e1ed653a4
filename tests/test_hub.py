"""`python -m timm_kd.hub`: export of train_kd.py checkpoints
and release files to timm Hub folders, and push."""

import json
import logging
import os
import re
import sys

import pytest
import timm
import torch
import yaml
from conftest import ROOT, TINY, fair_convnextv2_layout
from safetensors.torch import load_file

from timm_kd.cli.hub import main
from timm_kd.hub import export

sys.path.insert(0, ROOT)
import train_kd  # noqa: E402


@pytest.fixture(scope='module')
def kd_checkpoint(image_folder, tmp_path_factory):
    """A timm-kd training checkpoint with EMA and learnable
    KD parts (fitnet regressors, an auxiliary head)."""
    out = tmp_path_factory.mktemp('kdrun')
    vit = out / 'vit.pth'
    torch.save(timm.create_model('test_vit', num_classes=3, img_size=32).state_dict(), vit)
    train_kd.main(
        [
            image_folder,
            '--model',
            'test_resnet',
            '--img-size',
            '32',
            '-b',
            '8',
            '-j',
            '0',
            '--epochs',
            '1',
            '--device',
            'cpu',
            '--teacher',
            'test_vit',
            '--teacher-kwargs',
            'img_size=32',
            '--teacher-checkpoint',
            str(vit),
            '--kd-loss',
            'kd',
            'fitnet',
            '--kd-deep-supervision',
            '2',
            '--model-ema',
            '--model-ema-decay',
            '0.5',
            '--output',
            str(out),
            '--experiment',
            'kd',
        ]
    )
    return out / 'kd' / 'last.pth.tar'


def test_export_writes_a_timm_folder_of_the_student_only(kd_checkpoint, tmp_path):
    folder = tmp_path / 'export'
    main(
        [
            'export',
            str(kd_checkpoint),
            '--model',
            'test_resnet',
            '--out',
            str(folder),
            '--top5',
            '99.5',
        ]
    )
    weights = load_file(folder / 'model.safetensors')
    assert set(weights) == set(timm.create_model('test_resnet', num_classes=3).state_dict())
    ckpt = torch.load(kd_checkpoint, map_location='cpu', weights_only=False)
    # EMA weights by default
    assert all(torch.equal(weights[k], v) for k, v in ckpt['state_dict_ema'].items())
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['num_classes'] == 3
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32]
    kd = dict(config['kd'])
    training = kd.pop('training')
    # every loss with its weight and hyperparameters
    assert kd == {
        'teacher': 'test_vit',
        'kd_loss': 'kd, fitnet',
        'kd_loss_weights': {'kd': 1.0, 'fitnet': 1.0},
        'kd_loss_hyperparameters': {'kd': {'temperature': 1.0}, 'fitnet': {}},
        'hard_label_loss_weight': 1.0,
        'epochs': 1,
        'top1': round(ckpt['metric'], 3),
        'top5': 99.5,
    }
    assert (
        training[0].startswith('optimizer sgd, lr ') and 'batch size 8 per process' in training[2]
    )
    assert config['label_names'] == ['class0', 'class1', 'class2']  # the ImageFolder's classes
    assert oct((folder / 'model.safetensors').stat().st_mode & 0o777) == '0o644'
    # no borrowed cfg
    assert config['pretrained_cfg']['tag'] == 'kd' and 'license' not in config['pretrained_cfg']
    card = (folder / 'README.md').read_text()
    front = yaml.safe_load(card.split('---')[1])
    assert front['library_name'] == 'timm' and 'knowledge-distillation' in front['tags']
    # neither is known: a folder's name is no dataset
    assert 'license' not in front and 'datasets' not in front
    for fact in (
        'Params (M):',
        'GMACs:',
        'Activations (M):',
        'Image size: train = 32 x 32, test = 32 x 32',
        '**Teacher:** `test_vit`',
        'hao2023vanillakd',
        'rw2019timm',
        '| test_resnet | test_vit | kd, fitnet |',
        '### Image Classification',
        '### Feature Map Extraction',
        '### Image Embeddings',
    ):
        assert fact in card, fact
    raw = tmp_path / 'raw'
    # as timm_kd.validate writes
    (tmp_path / 'results.json').write_text(json.dumps({'top1': 71.25, 'top5': 90.5}))
    main(
        [
            'export',
            str(kd_checkpoint),
            '--model',
            'test_resnet',
            '--out',
            str(raw),
            '--no-ema',
            '--results',
            str(tmp_path / 'results.json'),
        ]
    )
    assert torch.equal(
        load_file(raw / 'model.safetensors')['fc.weight'], ckpt['state_dict']['fc.weight']
    )
    assert '| 71.25 | 90.5 |' in (raw / 'README.md').read_text()


def test_export_converts_a_fair_convnextv2_release_file(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('convnextv2_atto', num_classes=10).eval()
    fair = fair_convnextv2_layout(model.state_dict())
    assert 'downsample_layers.1.1.weight' in fair and 'stages.0.0.grn.gamma' in fair
    torch.save({'model': fair}, tmp_path / 'convnextv2_atto-release.pth')
    export(str(tmp_path / 'convnextv2_atto-release.pth'), 'convnextv2_atto', str(tmp_path / 'out'))
    loaded = timm.create_model(
        f'local-dir:{tmp_path / "out"}', pretrained=True
    ).eval()  # config.json + weights
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


class _Boom:
    def __reduce__(self):
        return (print, ('PWNED',))


def test_export_refuses_pickled_code_and_names_the_fix(tmp_path, capsys):
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': _Boom()}, tmp_path / 'evil.pth')
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                'export',
                str(tmp_path / 'evil.pth'),
                '--model',
                'test_resnet',
                '--out',
                str(tmp_path / 'o'),
            ]
        )
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and 'PWNED' not in out
    assert err.startswith('error: refusing to load') and '--allow-unsafe-pickle' in err


def test_export_of_a_mismatched_architecture_is_one_line(kd_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(['export', str(kd_checkpoint), '--model', 'test_vit', '--out', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert (
        err.startswith('error: checkpoint')
        and "does not fit 'test_vit'" in err
        and 'as --model' in err
    )
    assert len(err.strip().splitlines()) == 1


class _RecordingApi:
    """Stands in for huggingface_hub.HfApi: records
    calls and the uploaded files, talks to no server."""

    calls = []
    readme_exists = False

    def __init__(self, *args, **kwargs):
        self.calls.append(('HfApi', kwargs.get('library_name')))

    def file_exists(self, repo_id, filename, revision=None, **kwargs):
        return self.readme_exists

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


def test_push_creates_the_repo_uploads_the_folder_and_never_shows_the_token(
    kd_checkpoint, monkeypatch, capsys, caplog
):
    import huggingface_hub

    secret = 'hf_' + 'S3cr3tT0ken' * 3
    monkeypatch.setenv('HF_TOKEN', secret)
    monkeypatch.setattr(huggingface_hub, 'HfApi', _RecordingApi)
    _RecordingApi.calls = []
    with caplog.at_level(logging.DEBUG):
        main(
            [
                'push',
                str(kd_checkpoint),
                '--model',
                'test_resnet',
                '--repo-id',
                'me/test_resnet.kd',
                '--private',
                '--revision',
                'v1',
            ]
        )
    out, err = capsys.readouterr()
    assert _RecordingApi.calls == [
        ('HfApi', 'timm'),
        ('create_repo', 'me/test_resnet.kd', True),
        ('create_branch', 'me/test_resnet.kd', 'v1'),
        (
            'upload_folder',
            'me/test_resnet.kd',
            'v1',
            ['README.md', 'config.json', 'model.safetensors'],
        ),
    ]
    assert 'pushed to https://huggingface.co/me/test_resnet.kd' in out
    assert secret not in out + err + caplog.text


@pytest.mark.parametrize('overwrite', [False, True])
def test_push_keeps_an_existing_readme_unless_asked(kd_checkpoint, monkeypatch, overwrite):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, 'HfApi', _RecordingApi)
    monkeypatch.setattr(_RecordingApi, 'readme_exists', True)
    _RecordingApi.calls = []
    main(
        ['push', str(kd_checkpoint), '--model', 'test_resnet', '--repo-id', 'me/m']
        + ['--overwrite-card'] * overwrite
    )
    uploaded = _RecordingApi.calls[-1][-1]
    assert ('README.md' in uploaded) == overwrite and 'model.safetensors' in uploaded


def test_push_offline_is_one_line(kd_checkpoint, capsys):
    with pytest.raises(SystemExit) as info:  # conftest: HF_HUB_OFFLINE=1
        main(['push', str(kd_checkpoint), '--model', 'test_resnet', '--repo-id', 'me/m'])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(
        'error: cannot push to the Hugging Face Hub repo me/m (offline mode is on; unset '
        'HF_HUB_OFFLINE'
    )


def test_push_unauthorized_is_one_line(kd_checkpoint):
    """A local server answers every Hub call with 401, as
    huggingface.co does for a missing or read-only token."""
    import http.server
    import subprocess
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _refuse(self):
            self.send_response(401)
            self.send_header('Content-Type', 'application/json')
            self.end_headers()
            self.wfile.write(b'{"error": "Invalid credentials in Authorization header"}')

        do_GET = do_POST = do_HEAD = do_PUT = _refuse

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE='0',
        HF_ENDPOINT=f'http://127.0.0.1:{server.server_address[1]}',
        HF_TOKEN='hf_' + 'x' * 34,
    )
    run = subprocess.run(
        [
            sys.executable,
            '-m',
            'timm_kd.hub',
            'push',
            str(kd_checkpoint),
            '--model',
            'test_resnet',
            '--repo-id',
            'me/m',
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    server.shutdown()
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert 'HTTP 401: not authorized' in run.stderr and 'hf auth login' in run.stderr


def test_card_snippets_run_and_the_front_matter_carries_the_results(
    kd_checkpoint, tmp_path, capsys
):
    """Each code block of the card runs as written, with the
    Hub id and the example image swapped for local ones."""
    folder = tmp_path / 'export'
    main(
        [
            'export',
            str(kd_checkpoint),
            '--model',
            'test_resnet',
            '--out',
            str(folder),
            '--dataset',
            'ImageNet-1k',
            '--top1',
            '81.5',
            '--top5',
            '95.25',
            '--license',
            'apache-2.0',
        ]
    )
    capsys.readouterr()
    card = (folder / 'README.md').read_text()
    front = yaml.safe_load(card.split('---')[1])
    assert front['license'] == 'apache-2.0' and front['datasets'] == ['imagenet-1k']
    result = front['model-index'][0]['results'][0]
    assert result['dataset'] == {'type': 'imagenet-1k', 'name': 'ImageNet-1k'}
    assert [m['value'] for m in result['metrics']] == [81.5, 95.25]
    from PIL import Image

    Image.new('RGB', (48, 40), (200, 30, 60)).save(tmp_path / 'image.png')
    blocks = re.findall(r'```python\n(.*?)```', card, re.S)
    assert len(blocks) == 3
    outputs = []
    for code in blocks:
        # loads from where it was written
        assert f'local-dir:{folder}' in code and 'ORG' not in code
        code = re.sub(r"urlopen\('[^']+'\)", f"urlopen('file://{tmp_path}/image.png')", code)
        exec(compile(code, 'card', 'exec'), {})
        outputs.append(capsys.readouterr().out.strip().splitlines())
    # top-5 of a 3-class model: 3 lines
    assert len(outputs[0]) == 3 and outputs[0][0].startswith('class ')
    assert len(outputs[1]) == len(timm.create_model('test_resnet', features_only=True).feature_info)
    assert outputs[2] == ['torch.Size([1, 96])']


def test_validate_and_export_use_the_preprocessing_the_checkpoint_records(
    kd_checkpoint, image_folder, tmp_path
):
    """The student trained at 32 px is scored and published
    at 32 px, not at the architecture's default size."""
    from timm_kd.cli.validate import main as validate_main

    assert timm.create_model('test_resnet').pretrained_cfg['input_size'] != (3, 32, 32)
    result = validate_main(
        [image_folder, '--model', 'test_resnet', '--checkpoint', str(kd_checkpoint), '-j', '0']
    )
    assert (
        result['data_config']['input_size'] == [3, 32, 32]
        and result['data_config']['crop_pct'] == 0.95
    )
    main(['export', str(kd_checkpoint), '--model', 'test_resnet', '--out', str(tmp_path / 'e')])
    config = json.loads((tmp_path / 'e' / 'config.json').read_text())['pretrained_cfg']
    assert config['input_size'] == [3, 32, 32] and config['crop_pct'] == 0.95
    loaded = timm.create_model(f'local-dir:{tmp_path / "e"}', pretrained=True)
    assert timm.data.resolve_data_config({}, model=loaded, use_test_size=True)['input_size'] == (
        3,
        32,
        32,
    )


def test_export_refuses_non_finite_weights(kd_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(kd_checkpoint, map_location='cpu', weights_only=False)
    checkpoint['state_dict_ema']['fc.weight'][0, 0] = float('nan')
    torch.save(checkpoint, tmp_path / 'diverged.pth.tar')
    with pytest.raises(SystemExit):
        main(
            [
                'export',
                str(tmp_path / 'diverged.pth.tar'),
                '--model',
                'test_resnet',
                '--out',
                str(tmp_path / 'o'),
            ]
        )
    err = capsys.readouterr().err
    assert 'non-finite weights (fc.weight' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'o').exists()


def test_export_targets_that_cannot_work_are_one_line(kd_checkpoint, tmp_path, capsys):
    def line(*argv):
        with pytest.raises(SystemExit) as info:
            main(['export', str(kd_checkpoint), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1, err
        return err[0]

    assert "unknown --model 'no_such_net'" in line(
        '--model', 'no_such_net', '--out', str(tmp_path / 'a')
    )
    (tmp_path / 'file').write_text('x')
    assert 'is a file; pass a folder' in line(
        '--model', 'test_resnet', '--out', str(tmp_path / 'file' / 'o')
    )
    export(str(kd_checkpoint), 'test_resnet', str(tmp_path / 'done'))
    before = (tmp_path / 'done' / 'config.json').read_text()
    assert 'already holds config.json, model.safetensors, README.md; pass --overwrite' in line(
        '--model', 'test_resnet', '--out', str(tmp_path / 'done'), '--license', 'mit'
    )
    assert (tmp_path / 'done' / 'config.json').read_text() == before
    main(['export', str(kd_checkpoint), '--model', 'test_resnet', '--out', str(tmp_path / 'done'),
          '--license', 'mit', '--overwrite'])  # fmt: skip
    assert '"license": "mit"' in (tmp_path / 'done' / 'config.json').read_text()


def test_a_student_trained_without_a_teacher_gets_a_plain_card(image_folder, tmp_path):
    train_kd.main([image_folder, '--model', 'test_resnet', '--img-size', '32', '-b', '8', '-j', '0',
                   '--epochs', '1', '--output', str(tmp_path),
                   '--experiment', 'plain'])  # fmt: skip
    folder = export(str(tmp_path / 'plain' / 'last.pth.tar'), 'test_resnet', str(tmp_path / 'out'))
    card = (tmp_path / 'out' / 'README.md').read_text()
    front = yaml.safe_load(card.split('---')[1])
    assert 'knowledge-distillation' not in front['tags'] and 'trained without a teacher' in card
    assert 'distilled' not in card and 'hao2023vanillakd' not in card
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert 'teacher' not in config['kd'] and config['label_names'] == ['class0', 'class1', 'class2']
    assert folder == str(tmp_path / 'out')


def test_the_vkd_cards_cite_the_teacher_and_name_vanillakd_as_the_paper():
    import timm_kd  # noqa: F401  (registers the .vkd names)
    from timm_kd.card import model_card
    from timm_kd.hub import kd_metadata

    meta = kd_metadata('resnet50.vkd', {}, {})
    cfg = timm.models.get_pretrained_cfg('resnet50.vkd').to_dict()
    card = model_card('resnet50.vkd', timm.create_model('resnet50'), meta, cfg, 'hf-hub:o/m')
    assert '@article{peng2022beitv2' in card and '@inproceedings{he2016deep' in card
    convnext = timm.models.get_pretrained_cfg('convnextv2_tiny.vkd')
    assert convnext.paper_ids == 'arXiv:2305.15781' and convnext.paper_name.startswith('VanillaKD')


def test_a_local_teacher_is_named_not_located():
    from timm_kd.hub import kd_metadata

    args = {'teacher': 'local-dir:/home/me/teachers/convnext_base', 'kd_loss': ['kd'],
            'kd_loss_weight': [1.0], 'kd_temperature': 2.0, 'ori_loss_weight': 0.5}  # fmt: skip
    meta = kd_metadata('test_resnet', {'args': args}, {})
    assert meta['teacher'] == 'convnext_base' and '/home' not in json.dumps(meta)
    assert meta['kd_loss_hyperparameters'] == {'kd': {'temperature': 2.0}}
    assert meta['hard_label_loss_weight'] == 0.5


def test_a_checkpoint_rebuilds_its_student_from_its_record_alone(image_folder, tmp_path):
    """`timm_kd.load_student(checkpoint)`: the architecture, drop rates, pooling and
    --model-kwargs the run recorded, the weights loaded strictly (a qkv without bias would not
    load into the default model); the global pooling changes the output, not the weights."""
    import timm_kd
    from timm_kd.cli.train import main as train_main

    train_main([image_folder, '--model', 'test_vit', *TINY, '-b', '8', '--epochs', '1',
                '--drop-path', '0.1', '--gp', 'avg', '--model-kwargs', 'img_size=32',
                'qkv_bias=False', '--output', str(tmp_path), '--experiment', 's'])  # fmt: skip
    model = timm_kd.load_student(str(tmp_path / 's' / 'last.pth.tar'))
    assert type(model).__name__ == 'VisionTransformer' and model.global_pool == 'avg'
    assert model.blocks[-1].attn.qkv.bias is None and model.num_classes == 3
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert not model.training
