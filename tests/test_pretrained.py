"""The `vkd` tags: registered in timm's registry, weights from the paper's release files (here
served by a local HTTP server through TIMM_KD_RELEASE_URL) or from a Hub org (TIMM_KD_HUB_ORG),
evaluated at the paper's 224 px."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import huggingface_hub
import pytest
import timm
import torch
from conftest import ROOT, fair_convnextv2_layout
from timm.data import resolve_data_config
from timm.models import _builder, _registry, get_pretrained_cfg

import timm_kd
from timm_kd.cli.validate import main as validate_main
from timm_kd.hub import export
from timm_kd.pretrained import VKD_CHECKPOINTS, release_url

# Table 8, the reference README; crops of timm 0.6.5
PAPER = {
    'resnet50': (83.08, 96.35, 4800, 0.95),
    'vit_tiny_patch16_224': (78.11, 94.26, 4800, 0.9),
    'vit_small_patch16_224': (84.33, 97.09, 4800, 0.9),
    'convnextv2_tiny': (85.03, 97.44, 1200, 0.875),
}


class _RunsCode:
    def __reduce__(self):
        return (print, ('PWNED',))


# The layouts a release file may have: a bare state_dict, timm training checkpoints (DDP
# prefix, args, EMA), a {'model': ...} wrapper, and for ConvNeXt-V2 FAIR's own key names.
LAYOUTS = {
    'state_dict': lambda sd: sd,
    'training': lambda sd: {
        'epoch': 599,
        'arch': 'x',
        'args': argparse.Namespace(lr=5e-3),
        'metric': 83.0,
        'state_dict': {f'module.{k}': torch.zeros_like(v) for k, v in sd.items()},
        'state_dict_ema': sd,
    },
    'model': lambda sd: {'model': sd},
    'fair': lambda sd: {'model': fair_convnextv2_layout(sd)},
}
CASES = [
    (arch, layout)
    for arch in PAPER
    for layout in LAYOUTS
    if layout != 'fair' or arch == 'convnextv2_tiny'
]


@pytest.fixture(scope='module')
def sources():
    """One randomly initialised model per tagged
    architecture: the weights the release files hold."""
    torch.manual_seed(0)
    return {arch: timm.create_model(arch).eval() for arch in PAPER}


def _publish(server, layout, arch, checkpoint):
    folder = server.root / layout
    folder.mkdir(exist_ok=True)
    torch.save(checkpoint, folder / VKD_CHECKPOINTS[arch]['release_file'])
    return server.url + layout + '/'


def test_vkd_tags_are_listed_with_the_paper_figures_and_release_urls(monkeypatch):
    assert timm.list_pretrained('*vkd*') == sorted(f'{a}.vkd' for a in PAPER)
    monkeypatch.delenv('TIMM_KD_RELEASE_URL')
    assert (
        release_url('resnet50-83.078.pth')
        == 'https://github.com/Hao840/vanillaKD/releases/download/checkpoint/resnet50-83.078.pth'
    )
    for arch, (top1, top5, epochs, _) in PAPER.items():
        cfg = get_pretrained_cfg(f'{arch}.vkd')
        assert cfg.url.endswith('/' + VKD_CHECKPOINTS[arch]['release_file'])
        # no Hub repo by default; no license is stated
        assert cfg.hf_hub_id is None and cfg.license is None
        assert (cfg.kd['top1'], cfg.kd['top5'], cfg.kd['epochs']) == (top1, top5, epochs)
        assert cfg.kd['teacher'] == 'beitv2_base_patch16_224.in1k_ft_in22k_in1k'
        # the architecture's own head name
        assert cfg.classifier == get_pretrained_cfg(arch).classifier


@pytest.mark.parametrize('arch', PAPER)
def test_evaluation_is_at_224_px_with_the_paper_crop_for_timm_too(arch):
    model = timm.create_model(f'{arch}.vkd')
    for use_test_size in (False, True):  # timm's validate.py uses the test size
        config = resolve_data_config({}, model=model, use_test_size=use_test_size)
        assert config['input_size'] == (3, 224, 224) and config['crop_pct'] == PAPER[arch][3], (
            config
        )


def test_timm_touch_points_still_exist():
    """Fails loudly if timm renames the registry tables or the loader that pretrained.py wraps."""
    for table in (
        '_model_pretrained_cfgs',
        '_model_has_pretrained',
        '_model_with_tags',
        '_model_default_cfgs',
    ):
        assert hasattr(_registry, table), table
    assert 'resnet50.vkd' in _registry._model_with_tags['resnet50']
    assert 'vkd' in _registry._model_default_cfgs['resnet50'].tags
    assert timm.is_model_pretrained('resnet50.vkd')
    assert _builder.load_pretrained.timm_original.__module__ == 'timm.models._builder'
    assert all(hasattr(_builder, n) for n in ('_DOWNLOAD_PROGRESS', 'build_model_with_cfg'))


def test_add_pretrained_tag_rejects_unknown_architectures():
    with pytest.raises(timm_kd.KDError, match="'nope' is not a timm architecture"):
        timm_kd.add_pretrained_tag('nope', 'vkd')


@pytest.mark.parametrize('arch,layout', CASES)
def test_each_tag_loads_each_release_layout_by_name(
    arch, layout, sources, file_server, monkeypatch
):
    source = sources[arch]
    monkeypatch.setenv(
        'TIMM_KD_RELEASE_URL',
        _publish(file_server, layout, arch, LAYOUTS[layout](source.state_dict())),
    )
    model = timm.create_model(f'{arch}.vkd', pretrained=True).eval()
    expected = source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), source(x), atol=1e-5)
    assert file_server.requests == [f'/{layout}/{VKD_CHECKPOINTS[arch]["release_file"]}']


def test_a_second_load_uses_timm_download_cache(sources, file_server, monkeypatch, tmp_path):
    monkeypatch.setenv(
        'TIMM_KD_RELEASE_URL',
        _publish(
            file_server, 'v', 'vit_tiny_patch16_224', sources['vit_tiny_patch16_224'].state_dict()
        ),
    )
    timm.create_model('vit_tiny_patch16_224.vkd', pretrained=True)
    cached = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'vit_tiny_patch16_224-78.106.pth'
    assert cached.is_file() and len(file_server.requests) == 1
    # timm adapts the head
    again = timm.create_model('vit_tiny_patch16_224.vkd', pretrained=True, num_classes=10)
    assert len(file_server.requests) == 1 and again.num_classes == 10
    features = timm.create_model(
        'vit_tiny_patch16_224.vkd', pretrained=True, features_only=True, out_indices=(-1,)
    )
    assert features(torch.randn(1, 3, 224, 224))[0].shape == (1, 192, 14, 14)


def test_a_404_is_one_line_naming_the_url_and_the_fix(file_server, monkeypatch):
    monkeypatch.setenv('TIMM_KD_RELEASE_URL', file_server.url + 'missing')
    with pytest.raises(timm_kd.KDError) as info:
        timm.create_model('resnet50.vkd', pretrained=True)
    message = str(info.value)
    assert (
        f'{file_server.url}missing/resnet50-83.078.pth' in message
        and 'HTTPError' in message
        and '404' in message
    )
    assert 'TIMM_KD_RELEASE_URL' in message and '\n' not in message


def test_a_corrupt_file_is_one_line_and_leaves_the_cache(file_server, monkeypatch, tmp_path):
    (file_server.root / 'bad').mkdir()
    (file_server.root / 'bad' / 'resnet50-83.078.pth').write_bytes(b'<html>rate limited</html>')
    monkeypatch.setenv('TIMM_KD_RELEASE_URL', file_server.url + 'bad')
    with pytest.raises(timm_kd.KDError) as info:
        timm.create_model('resnet50.vkd', pretrained=True)
    assert (
        'unusable' in str(info.value)
        and 'corrupt' in str(info.value)
        and '\n' not in str(info.value)
    )
    # the next load downloads again
    assert not os.listdir(tmp_path / 'torch_home' / 'hub' / 'checkpoints')


def test_a_release_file_with_pickled_code_is_refused_without_running_it(
    sources, file_server, monkeypatch, capsys
):
    checkpoint = {'state_dict': sources['resnet50'].state_dict(), 'payload': _RunsCode()}
    monkeypatch.setenv('TIMM_KD_RELEASE_URL', _publish(file_server, 'evil', 'resnet50', checkpoint))
    with pytest.raises(timm_kd.KDError, match='pickled code'):
        timm.create_model('resnet50.vkd', pretrained=True)
    assert 'PWNED' not in capsys.readouterr().out


def test_an_explicit_file_overlay_still_wins(sources, tmp_path):
    """timm's own overrides (pretrained_cfg_overlay=dict(file=...)) bypass the release download."""
    torch.save(sources['resnet50'].state_dict(), tmp_path / 'mine.pth')
    model = timm.create_model(
        'resnet50.vkd',
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / 'mine.pth')),
    )
    assert torch.equal(model.fc.weight, sources['resnet50'].fc.weight)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache; `publish(folder, repo_id)`
    lays a folder out as a cached snapshot."""
    cache = tmp_path / 'hub'
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))

    def publish(folder, repo_id, commit='0123456789abcdef0123456789abcdef01234567'):
        repo = cache / f'models--{repo_id.replace("/", "--")}'
        shutil.copytree(folder, repo / 'snapshots' / commit)
        (repo / 'refs').mkdir()
        (repo / 'refs' / 'main').write_text(commit)

    return publish


def test_hub_org_route_loads_a_published_folder(tmp_path, hf_cache, monkeypatch, sources):
    """TIMM_KD_HUB_ORG=ORG: the tag resolves to ORG/<arch>.vkd;
    plain timm also loads it as hf-hub:ORG/NAME."""
    source = sources['vit_tiny_patch16_224']
    torch.save(source.state_dict(), tmp_path / 'release.pth')
    export(str(tmp_path / 'release.pth'), 'vit_tiny_patch16_224.vkd', str(tmp_path / 'folder'))
    hf_cache(tmp_path / 'folder', 'my-org/vit_tiny_patch16_224.vkd')
    monkeypatch.setenv('TIMM_KD_HUB_ORG', 'my-org')
    x = torch.randn(1, 3, 224, 224)
    by_tag = timm.create_model('vit_tiny_patch16_224.vkd', pretrained=True).eval()
    by_hub = timm.create_model('hf-hub:my-org/vit_tiny_patch16_224.vkd', pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(by_tag(x), source(x), atol=1e-5) and torch.allclose(
            by_hub(x), source(x), atol=1e-5
        )
    assert resolve_data_config({}, model=by_hub, use_test_size=True)['crop_pct'] == 0.9
    with pytest.raises(
        timm_kd.KDError, match=r'Hub repo my-org/resnet50.vkd .*unset TIMM_KD_HUB_ORG'
    ):
        timm.create_model('resnet50.vkd', pretrained=True)


def test_validate_cli_on_a_tag_uses_224_px_and_the_paper_crop(
    sources, file_server, image_folder, run_cli, monkeypatch
):
    env = dict(
        os.environ,
        TIMM_KD_RELEASE_URL=_publish(
            file_server, 'v', 'vit_tiny_patch16_224', sources['vit_tiny_patch16_224'].state_dict()
        ),
    )
    run = subprocess.run(
        [
            sys.executable,
            '-m',
            'timm_kd.validate',
            image_folder,
            '--model',
            'vit_tiny_patch16_224.vkd',
            '-b',
            '24',
            '-j',
            '0',
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    config = json.loads(run.stdout)['data_config']
    assert config['input_size'] == [3, 224, 224] and config['crop_pct'] == 0.9
    monkeypatch.setenv('TIMM_KD_RELEASE_URL', file_server.url + 'nothing-here')
    run = run_cli(validate_main, image_folder, '--model', 'resnet50.vkd')  # in-process
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert (
        run.stderr.startswith('error: cannot download the weights of resnet50.vkd')
        and '404' in run.stderr
    )
