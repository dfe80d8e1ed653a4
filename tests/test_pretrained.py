"""The `vkd` pretrained tags: registered in timm's registry, loaded from a (local) Hugging Face cache by name."""
import shutil

import huggingface_hub
import pytest
import timm
import torch
from timm.models import _registry, get_pretrained_cfg

import timm_kd
from timm_kd.hub import export
from timm_kd.pretrained import VKD_CHECKPOINTS

PAPER = {'resnet50': (83.08, 96.35, 4800), 'vit_tiny_patch16_224': (78.11, 94.26, 4800),
         'vit_small_patch16_224': (84.33, 97.09, 4800), 'convnextv2_tiny': (85.03, 97.44, 1200)}  # Table 8 + README


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache; `publish(folder, repo_id)` lays a folder out as a cached snapshot."""
    cache = tmp_path / 'hub'
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))

    def publish(folder, repo_id, commit='0123456789abcdef0123456789abcdef01234567'):
        repo = cache / f'models--{repo_id.replace("/", "--")}'
        shutil.copytree(folder, repo / 'snapshots' / commit)
        (repo / 'refs').mkdir()
        (repo / 'refs' / 'main').write_text(commit)
    return publish


def test_vkd_tags_are_listed_with_the_paper_figures():
    assert timm.list_pretrained('*vkd*') == sorted(f'{a}.vkd' for a in PAPER)
    for arch, (top1, top5, epochs) in PAPER.items():
        cfg = get_pretrained_cfg(f'{arch}.vkd')
        assert cfg.hf_hub_id == f'timm-kd/{arch}.vkd' and cfg.input_size == (3, 224, 224)
        assert (cfg.kd['top1'], cfg.kd['top5'], cfg.kd['epochs']) == (top1, top5, epochs)
        assert cfg.kd['teacher'] == 'beitv2_base_patch16_224.in1k_ft_in22k_in1k'
        assert cfg.classifier == get_pretrained_cfg(arch).classifier  # the architecture's own head name


def test_registry_touch_points_still_exist():
    """Fails loudly if timm renames the registry tables add_pretrained_tag writes to."""
    for table in ('_model_pretrained_cfgs', '_model_has_pretrained', '_model_with_tags', '_model_default_cfgs'):
        assert hasattr(_registry, table), table
    assert 'resnet50.vkd' in _registry._model_with_tags['resnet50']
    assert 'vkd' in _registry._model_default_cfgs['resnet50'].tags
    assert timm.is_model_pretrained('resnet50.vkd')


def test_add_pretrained_tag_rejects_unknown_architectures():
    with pytest.raises(timm_kd.KDError, match="'nope' is not a timm architecture"):
        timm_kd.add_pretrained_tag('nope', 'vkd')


def test_a_vkd_name_loads_from_the_hub_cache_offline(tmp_path, hf_cache):
    """vit_tiny_patch16_224.vkd resolves to its hf_hub_id; plain timm also loads it as hf-hub:ORG/NAME."""
    torch.manual_seed(0)
    source = timm.create_model('vit_tiny_patch16_224').eval()
    torch.save(source.state_dict(), tmp_path / 'release.pth')
    export(str(tmp_path / 'release.pth'), 'vit_tiny_patch16_224.vkd', str(tmp_path / 'folder'))
    hf_cache(tmp_path / 'folder', 'timm-kd/vit_tiny_patch16_224.vkd')
    x = torch.randn(1, 3, 224, 224)
    by_tag = timm.create_model('vit_tiny_patch16_224.vkd', pretrained=True).eval()
    by_hub = timm.create_model('hf-hub:timm-kd/vit_tiny_patch16_224.vkd', pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(by_tag(x), source(x), atol=1e-5) and torch.allclose(by_hub(x), source(x), atol=1e-5)
    assert by_hub.pretrained_cfg['crop_pct'] == VKD_CHECKPOINTS['vit_tiny_patch16_224']['crop_pct']
    features = timm.create_model('vit_tiny_patch16_224.vkd', pretrained=True, features_only=True, out_indices=(-1,))
    assert features(x)[0].shape == (1, 192, 14, 14)


def test_missing_weights_offline_is_an_error_not_a_random_model(hf_cache):
    with pytest.raises(Exception) as info:
        timm.create_model('resnet50.vkd', pretrained=True)
    assert 'timm-kd/resnet50.vkd' in str(info.value) or 'offline' in str(info.value).lower() \
        or type(info.value).__name__.endswith('NotFoundError')
