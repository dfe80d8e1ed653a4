"""VanillaKD's distilled checkpoints as timm pretrained
tags: `timm.create_model('resnet50.vkd', pretrained=True)`.

The weights are the files the paper's authors published as a GitHub release (VanillaKD, Hao et al.,
2023, https://github.com/Hao840/vanillaKD/releases/tag/checkpoint). Each `<arch>.vkd` tag downloads
its file through timm's own machinery (`download_cached_file`: timm's cache directory
`$TORCH_HOME/hub/checkpoints`, its progress setting), reads it without running pickled code, unwraps
the training-checkpoint layouts and hands the weights to timm's `load_pretrained`, which converts
foreign key layouts (ConvNeXt-V2 in FAIR's) with the architecture's own filter, adapts
`num_classes`/`in_chans` and loads strictly.

Where the weights come from is read at load time from the environment:
- `TIMM_KD_RELEASE_URL` replaces the release base URL (a mirror, an internal server); the file names
  stay.
- `TIMM_KD_HUB_ORG=ORG` loads `ORG/<arch>.vkd` from the Hugging Face Hub instead, once someone
  published them there (`python -m timm_kd.hub push`); unset by default, because no such
  repositories exist today.

timm has no plugin hook for pretrained weights, so this module touches timm in two guarded places
(see tests/test_pretrained.py): `add_pretrained_tag` writes into the model registry, and
`install_release_loader` wraps `timm.models._builder.load_pretrained` for the names registered with
a release file, and only for them.
"""

import os
from functools import partial
from typing import Any, Callable, Dict, List, Optional

from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)
from timm.models import _builder, _registry, is_model
from timm.models._hub import download_cached_file, get_cache_dir
from timm.models._pretrained import DefaultCfg, PretrainedCfg

from .checkpoint import load_state_dict
from .errors import KDError, flat

TEACHER = 'beitv2_base_patch16_224.in1k_ft_in22k_in1k'  # BEiTv2-B, 86.47% (VanillaKD Sec. 3.6)
RELEASE_URL = 'https://github.com/Hao840/vanillaKD/releases/download/checkpoint/'
RELEASE_URL_ENV = 'TIMM_KD_RELEASE_URL'
HUB_ORG_ENV = 'TIMM_KD_HUB_ORG'

# VanillaKD Table 8 (teacher BEiTv2-B, strategy A1) and the reference README's model zoo
# (top-1/top-5, files). Evaluation preprocessing: the timm 0.6.5 defaults the reference code trained
# and validated with, at 224 px for training and test alike (the architectures' own cfgs test at 288
# px, which would score other numbers).
VKD_CHECKPOINTS: Dict[str, Dict[str, Any]] = {
    'resnet50': dict(
        top1=83.08,
        top5=96.35,
        epochs=4800,
        release_file='resnet50-83.078.pth',
        crop_pct=0.95,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    ),
    'vit_tiny_patch16_224': dict(
        top1=78.11,
        top5=94.26,
        epochs=4800,
        release_file='vit_tiny_patch16_224-78.106.pth',
        crop_pct=0.9,
        mean=IMAGENET_INCEPTION_MEAN,
        std=IMAGENET_INCEPTION_STD,
    ),
    'vit_small_patch16_224': dict(
        top1=84.33,
        top5=97.09,
        epochs=4800,
        release_file='vit_small_patch16_224-84.328.pth',
        crop_pct=0.9,
        mean=IMAGENET_INCEPTION_MEAN,
        std=IMAGENET_INCEPTION_STD,
    ),
    'convnextv2_tiny': dict(
        top1=85.03,
        top5=97.44,
        epochs=1200,
        release_file='convnextv2_tiny-85.030.pth',
        crop_pct=0.875,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    ),
}

# 'resnet50.vkd' -> 'resnet50-83.078.pth': the names the release loader serves
_RELEASE_FILES: Dict[str, str] = {}


def release_url(file: str) -> str:
    """Where `file` is downloaded from: `$TIMM_KD_RELEASE_URL`
    (a mirror) or the paper's GitHub release."""
    return (os.environ.get(RELEASE_URL_ENV, '').strip() or RELEASE_URL).rstrip('/') + '/' + file


def hub_org() -> Optional[str]:
    """The Hugging Face organization the `.vkd` names resolve to, if `$TIMM_KD_HUB_ORG` is set."""
    return os.environ.get(HUB_ORG_ENV, '').strip() or None


def add_pretrained_tag(arch: str, tag: str, **cfg: Any) -> str:
    """Register `arch.tag` as a pretrained model of the
    existing timm architecture `arch`; returns the name.

    `cfg` holds `PretrainedCfg` fields (url, hf_hub_id, input_size, crop_pct, mean, std, ...) and
    optionally `release_file` (weights served by the release loader); other keys (our KD metadata:
    teacher, top1, ...) are kept in the extra attribute `kd` of the cfg. Idempotent.
    """
    if not is_model(arch):
        raise KDError(f'cannot add tag {tag!r}: {arch!r} is not a timm architecture')
    name = f'{arch}.{tag}'
    release_file = cfg.pop('release_file', None)
    fields = set(PretrainedCfg.__dataclass_fields__)
    kd = {k: cfg.pop(k) for k in list(cfg) if k not in fields}
    # the architecture's default cfg: classifier, first_conv, ...
    base = _registry._model_pretrained_cfgs.get(arch)
    values = {k: v for k, v in (base.to_dict() if base else {}).items() if k in fields}
    values.update(
        url='',
        hf_hub_id=None,
        file=None,
        state_dict=None,
        source=None,
        license=None,
        tag=tag,
        architecture=arch,
    )
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
    if release_file:
        _RELEASE_FILES[name] = release_file
        install_release_loader()
    return name


def register_vkd_checkpoints() -> List[str]:
    """Register `<arch>.vkd` for the paper's four
    distilled checkpoints (weights: the release files)."""
    org = hub_org()
    names = []
    for arch, c in VKD_CHECKPOINTS.items():
        names.append(
            add_pretrained_tag(
                arch,
                'vkd',
                release_file=c['release_file'],
                url=release_url(c['release_file']),
                hf_hub_id=f'{org}/{arch}.vkd' if org else None,
                input_size=(3, 224, 224),
                test_input_size=(3, 224, 224),
                crop_pct=c['crop_pct'],
                test_crop_pct=c['crop_pct'],
                crop_mode='center',
                interpolation='bicubic',
                mean=c['mean'],
                std=c['std'],
                num_classes=1000,
                paper_ids='arXiv:2305.15781',
                paper_name='VanillaKD: Revisit the Power of Vanilla Knowledge Distillation from '
                'Small Scale to Large Scale',
                origin_url=RELEASE_URL + c['release_file'],
                notes=(
                    f'VanillaKD: vanilla KD from {TEACHER}, strategy A1, {c["epochs"]} epochs, '
                    'ImageNet-1k',
                ),
                teacher=TEACHER,
                top1=c['top1'],
                top5=c['top5'],
                epochs=c['epochs'],
                recipe='A1',
                kd_loss='kd',
                dataset='ImageNet-1k',
            )
        )
    return names


def _release_state_dict(name: str, cache_dir: Optional[str]) -> Dict[str, Any]:
    """Download (or reuse from timm's cache) the release
    file of `name` and read its weights safely."""
    file = _RELEASE_FILES[name]
    url = release_url(file)
    try:
        # check_hash stays off: the release names carry
        # accuracies (resnet50-83.078.pth), not hash prefixes
        path = download_cached_file(
            url, check_hash=False, progress=_builder._DOWNLOAD_PROGRESS, cache_dir=cache_dir
        )
    except Exception as e:  # urllib: HTTPError (404, 403), URLError (offline, DNS), OSError (disk)
        cache = cache_dir or get_cache_dir()
        raise KDError(
            f'cannot download the weights of {name} from {url} ({type(e).__name__}: '
            f'{flat(e, 100)}); set {RELEASE_URL_ENV} to a mirror that holds '
            f'{file}, or put the file into {cache}'
        ) from None
    try:
        return load_state_dict(path)
    except KDError as e:
        os.remove(path)  # a bad file in the cache would be reused forever
        raise KDError(
            f'the weights of {name} downloaded from {url} are unusable ({e}); the file was removed '
            f'from the cache, so the next load downloads it again'
        ) from None


def _load_pretrained(
    model,
    pretrained_cfg: Optional[Dict[str, Any]] = None,
    num_classes: int = 1000,
    in_chans: int = 3,
    filter_fn: Optional[Callable] = None,
    strict: bool = True,
    cache_dir: Optional[str] = None,
) -> None:
    """timm's `load_pretrained`, with the names registered
    with a release file served from it (or the Hub org)."""
    load = partial(
        _TIMM_LOAD_PRETRAINED,
        model,
        num_classes=num_classes,
        in_chans=in_chans,
        filter_fn=filter_fn,
        strict=strict,
        cache_dir=cache_dir,
    )
    cfg = dict(pretrained_cfg or getattr(model, 'pretrained_cfg', None) or {})
    name = f'{cfg.get("architecture")}.{cfg.get("tag")}'
    if name not in _RELEASE_FILES or cfg.get('source') or cfg.get('file') or cfg.get('state_dict'):
        # not ours, or the caller chose other weights (pretrained_cfg_overlay)
        return load(pretrained_cfg)
    org = hub_org()
    if org:
        repo = f'{org}/{name}'
        try:
            return load({**cfg, 'hf_hub_id': repo, 'url': ''})
        # huggingface_hub: RepositoryNotFoundError, LocalEntryNotFoundError, HTTP errors
        except Exception as e:
            raise KDError(
                f'cannot load the weights of {name} from the Hugging Face Hub repo {repo} '
                f'({type(e).__name__}); check that {repo} exists and that you are online, or unset '
                f'{HUB_ORG_ENV} to use the release files'
            ) from None
    return load({**cfg, 'state_dict': _release_state_dict(name, cache_dir)})


# timm's own function, kept once even if this module is imported again
_TIMM_LOAD_PRETRAINED: Callable = getattr(
    _builder.load_pretrained, 'timm_original', _builder.load_pretrained
)
_load_pretrained.timm_original = _TIMM_LOAD_PRETRAINED


def install_release_loader() -> None:
    """Route timm's pretrained loading through `_load_pretrained`
    (idempotent; other names are untouched)."""
    _builder.load_pretrained = _load_pretrained
