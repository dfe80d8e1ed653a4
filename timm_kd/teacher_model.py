"""The teacher's timm model from what a user names: a timm name with its pretrained tag,
hf-hub:/local-dir:, or an architecture with a checkpoint; a name that is none of these, weights the
Hub cannot give (offline, unreachable) and a checkpoint that does not fit are one line each."""

import os
import socket
import urllib.parse
from typing import Optional, Tuple

import torch.nn as nn
from timm.models import (
    create_model,
    get_pretrained_cfg,
    is_model,
    parse_model_name,
    split_model_name_tag,
)

from .checkpoint import checkpoint_num_classes, load_state_dict, load_training_metadata
from .errors import KDError, flat


def parse_teacher_name(name: str) -> Tuple[Optional[str], str, str]:
    """(source, architecture, tag): source is
    'hf-hub'/'local-dir' or None for a timm registry name."""
    try:
        source, model_name = parse_model_name(name)
    except ValueError:  # timm's answer to a path or a repo id without a prefix
        if os.path.isdir(name):
            fix = f'pass --teacher local-dir:{name} (a folder with config.json and its weights)'
        elif os.path.exists(name):
            fix = f'pass the architecture as --teacher ARCH and --teacher-checkpoint {name}'
        elif name.count('/') == 1 and not name.startswith(('.', '/', '~')):  # ORG/NAME
            fix = f'pass hf-hub:{name} for a Hugging Face Hub repository, or check the path'
        else:
            fix = 'check the path, or pass a timm name, hf-hub:ORG/NAME or local-dir:PATH'
        missing = '' if os.path.exists(name) else ': no such file or folder'
        raise KDError(f'teacher {name!r} is not a timm model name{missing}; {fix}') from None
    if source:
        return source, name, ''
    arch, tag = split_model_name_tag(model_name)
    return None, arch, tag


def _has_pretrained_source(name: str) -> bool:
    source, _, _ = parse_teacher_name(name)
    if source:
        return True
    cfg = get_pretrained_cfg(name, allow_unregistered=True)
    return cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict)


# what timm's pretrained loading asks the Hub for, in this order
HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'open_clip_model.safetensors',
                    'open_clip_pytorch_model.bin')  # fmt: skip


def check_hub_reachable(
    name: str, what: str = 'teacher', fix: str = 'pass --teacher-checkpoint PATH'
) -> None:
    """Weights from the Hugging Face Hub that are neither cached nor reachable are one line at
    once: huggingface_hub would retry each file for about half a minute, logging every try.
    `what` names the model in the line ('teacher', '--model'), `fix` the other way to weights."""
    from huggingface_hub import constants, try_to_load_from_cache

    source, _, _ = parse_teacher_name(name)
    cfg = None if source else get_pretrained_cfg(name, allow_unregistered=True)
    repo = name.split(':', 1)[1] if source == 'hf-hub' else cfg.hf_hub_id if cfg else None
    if not repo or constants.HF_HUB_OFFLINE:  # offline: huggingface_hub answers at once
        return
    repo_id, _, revision = repo.partition('@')
    for file in HUB_WEIGHT_FILES:
        if isinstance(try_to_load_from_cache(repo_id, file, revision=revision or None), str):
            return
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == 'https' else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=10).close()
    except OSError as e:
        raise KDError(
            f'no pretrained weights for {what} {name!r}: not in the local Hugging Face cache, '
            f'and the Hub ({constants.ENDPOINT}) cannot be reached ({e.strerror or e}); download '
            f'them once with network access (cached under HF_HOME), or {fix}'
        ) from None


def create_teacher_model(
    name: str,
    checkpoint: Optional[str],
    in_chans: int,
    use_ema: bool,
    allow_pickle: bool,
    student_num_classes: int,
    model_kwargs: dict,
) -> nn.Module:
    source, arch, _ = parse_teacher_name(name)
    if not source and not is_model(arch):
        raise KDError(
            f'unknown teacher model {name!r}; see timm.list_models() / timm.list_pretrained() '
            f'for valid names'
        )
    try:
        if checkpoint:
            state_dict = load_state_dict(checkpoint, use_ema=use_ema, allow_pickle=allow_pickle)
            num_classes = checkpoint_num_classes(arch, state_dict)
            num_classes = student_num_classes if num_classes is None else num_classes
            model = create_model(
                name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **model_kwargs
            )
            try:
                missing, unexpected = model.load_state_dict(state_dict, strict=False)
                problem = (
                    f'{len(missing)} missing keys e.g. {missing[:2]}, {len(unexpected)} unexpected '
                    f'e.g. {unexpected[:2]}'
                    if missing or unexpected
                    else ''
                )
            except RuntimeError as e:  # shape mismatches
                problem = next(
                    (line.strip() for line in str(e).splitlines() if 'size mismatch' in line),
                    str(e),
                )
            if problem:
                raise KDError(
                    f'teacher checkpoint {checkpoint!r} does not fit architecture {name!r} '
                    f'({problem[:200]}); pass the '
                    f'--teacher architecture (and --teacher-kwargs) the checkpoint was trained with'
                )
            # the class names of the data a timm-kd run trained it on (`--teacher-class-map auto`)
            names = (load_training_metadata(checkpoint).get('saver') or {}).get('label_names')
            if names and len(names) == model.num_classes:
                model.pretrained_cfg = {**model.pretrained_cfg, 'label_names': list(names)}
            return model
        if not _has_pretrained_source(name):
            raise KDError(
                f'teacher {name!r} has no pretrained weights in timm; pass --teacher-checkpoint '
                f'PATH or a name with a pretrained tag (timm.list_pretrained({arch + "*"!r}))'
            )
        check_hub_reachable(name)
        return create_model(name, pretrained=True, in_chans=in_chans, **model_kwargs)
    except KDError:
        raise
    except RuntimeError as e:
        raise KDError(f'could not create teacher {name!r}: {flat(e, 200)}') from None
    # hub/network errors come in many types (LocalEntryNotFoundError, OSError, HTTPError)
    except Exception as e:
        raise KDError(hub_miss(e, 'teacher', name, 'pass --teacher-checkpoint PATH')) from None


def is_hub_miss(e: Exception) -> bool:
    """Whether `e` says weights were neither in the Hugging Face cache nor downloadable."""
    return type(e).__name__ == 'LocalEntryNotFoundError' or 'offline' in str(e).lower()


def hub_miss(e: Exception, what: str, name: str, fix: str) -> str:
    """The one line for a failed download of pretrained weights (errors of many types:
    LocalEntryNotFoundError, OSError, HTTPError)."""
    reason = (
        'not in the local Hugging Face cache, and the Hub is unreachable or HF_HUB_OFFLINE=1'
        if is_hub_miss(e)
        else f'{type(e).__name__}: {flat(e, 120)}'
    )
    return (
        f'no pretrained weights for {what} {name!r} ({reason}); download them once with '
        f'network access (cached under HF_HOME), or {fix}'
    )
