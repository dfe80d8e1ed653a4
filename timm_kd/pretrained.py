"""VanillaKD's distilled checkpoints as timm pretrained tags: `timm.create_model('resnet50.vkd', pretrained=True)`.

timm has no plugin hook for pretrained weights, so `add_pretrained_tag` writes into timm's model registry, the
one place this project touches it (guarded by tests/test_pretrained.py). Importing `timm_kd` registers the
`vkd` tag on the four architectures whose checkpoints the paper published.
"""
from typing import Any, Dict, List

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.models import _registry, is_model
from timm.models._pretrained import DefaultCfg, PretrainedCfg

from .errors import KDError

HUB_ORG = 'timm-kd'  # the Hugging Face organization the maintainers publish to
TEACHER = 'beitv2_base_patch16_224.in1k_ft_in22k_in1k'  # BEiTv2-B, 86.47% (VanillaKD Sec. 3.6)
RELEASE_URL = 'https://github.com/Hao840/vanillaKD/releases/download/checkpoint/'

# VanillaKD Table 8 (teacher BEiTv2-B, strategy A1) and the reference README's model zoo (top-1/top-5, files).
# Evaluation preprocessing: the timm 0.6.5 defaults the reference code trained and validated with.
VKD_CHECKPOINTS: Dict[str, Dict[str, Any]] = {
    'resnet50': dict(top1=83.08, top5=96.35, epochs=4800, release_file='resnet50-83.078.pth',
                     crop_pct=0.95, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
    'vit_tiny_patch16_224': dict(top1=78.11, top5=94.26, epochs=4800, release_file='vit_tiny_patch16_224-78.106.pth',
                                 crop_pct=0.9, mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD),
    'vit_small_patch16_224': dict(top1=84.33, top5=97.09, epochs=4800,
                                  release_file='vit_small_patch16_224-84.328.pth',
                                  crop_pct=0.9, mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD),
    'convnextv2_tiny': dict(top1=85.03, top5=97.44, epochs=1200, release_file='convnextv2_tiny-85.030.pth',
                            crop_pct=0.875, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
}


def add_pretrained_tag(arch: str, tag: str, **cfg: Any) -> str:
    """Register `arch.tag` as a pretrained model of the existing timm architecture `arch`; returns the name.

    `cfg` holds `PretrainedCfg` fields (hf_hub_id, input_size, crop_pct, mean, std, ...); other keys (our KD
    metadata: teacher, top1, ...) are kept in the cfg's `notes`-style extra dict `kd`. Idempotent.
    """
    if not is_model(arch):
        raise KDError(f'cannot add tag {tag!r}: {arch!r} is not a timm architecture')
    name = f'{arch}.{tag}'
    fields = set(PretrainedCfg.__dataclass_fields__)
    kd = {k: cfg.pop(k) for k in list(cfg) if k not in fields}
    base = _registry._model_pretrained_cfgs.get(arch)  # the architecture's default cfg: classifier, first_conv, ...
    values = {k: v for k, v in (base.to_dict() if base else {}).items() if k in fields}
    values.update(url='', hf_hub_id=None, file=None, state_dict=None, source=None, tag=tag, architecture=arch)
    values.update(cfg)
    pretrained_cfg = PretrainedCfg(**values)
    pretrained_cfg.kd = kd  # dataclass instances take extra attributes; timm ignores it
    _registry._model_pretrained_cfgs[name] = pretrained_cfg
    _registry._model_has_pretrained.add(name)
    if name not in _registry._model_with_tags[arch]:
        _registry._model_with_tags[arch].append(name)
    default = _registry._model_default_cfgs.setdefault(arch, DefaultCfg())
    if tag not in default.tags:
        default.tags.append(tag)
    default.cfgs[tag] = pretrained_cfg
    return name


def register_vkd_checkpoints() -> List[str]:
    """Register `<arch>.vkd` for the paper's four distilled checkpoints (hub repo `timm-kd/<arch>.vkd`)."""
    names = []
    for arch, c in VKD_CHECKPOINTS.items():
        names.append(add_pretrained_tag(
            arch, 'vkd', hf_hub_id=f'{HUB_ORG}/{arch}.vkd', input_size=(3, 224, 224), crop_pct=c['crop_pct'],
            interpolation='bicubic', mean=c['mean'], std=c['std'], num_classes=1000, license='apache-2.0',
            paper_ids='arXiv:2305.15781', origin_url=RELEASE_URL + c['release_file'],
            notes=(f'VanillaKD: vanilla KD from {TEACHER}, strategy A1, {c["epochs"]} epochs, ImageNet-1k',),
            teacher=TEACHER, top1=c['top1'], top5=c['top5'], epochs=c['epochs'], recipe='A1', kd_loss='kd',
            dataset='ImageNet-1k'))
    return names
