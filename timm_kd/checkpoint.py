"""Safe loading of model weights: safetensors, or `torch.load(weights_only=True)`.

Arbitrary pickles can run code when loaded. They are refused unless the caller opts in with
`allow_pickle=True` (`--allow-unsafe-pickle` on the command line), and the refusal itself executes
nothing: PyTorch's weights-only unpickler rejects the unknown global before calling it.
"""

import argparse
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from timm.models import get_pretrained_cfg
from timm.models import load_state_dict as timm_load_state_dict

from .errors import KDError, flat

# Types that timm's and our training checkpoints carry
# besides tensors ('args' is an argparse.Namespace).
SAFE_GLOBALS = [argparse.Namespace]


def safe_globals():
    """Context manager that lets `torch.load(weights_only=True)`
    read timm-style training checkpoints."""
    return torch.serialization.safe_globals(SAFE_GLOBALS)


def load_state_dict(path: str, use_ema: bool = True, allow_pickle: bool = False) -> Dict[str, Any]:
    """Load model weights from a timm/timm-kd training
    checkpoint, a bare state_dict or `.safetensors`.

    Training checkpoints give their EMA weights when `use_ema` and present (`state_dict_ema` /
    `model_ema`), else `state_dict` / `model`. DDP `module.` prefixes are removed. Any failure is a
    one-line `KDError`.
    """
    if not path or not os.path.isfile(path):
        raise KDError(
            f'checkpoint not found: {path!r}; pass the path of an existing '
            '.pth/.pth.tar/.safetensors file'
        )
    try:
        with safe_globals():
            state_dict = timm_load_state_dict(path, use_ema=use_ema, weights_only=not allow_pickle)
    # torch, zipfile and safetensors raise many types for the same two causes
    except Exception as e:
        message = flat(e)
        # name the global that would run, not an allowed one torch met first
        if 'Unsupported global' in message:
            allowed = {f'{g.__module__}.{g.__qualname__}' for g in SAFE_GLOBALS}
            found = [
                g
                for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                if g not in allowed
            ]
            raise KDError(
                f'refusing to load {path!r}: it contains pickled code '
                f'({", ".join(found) or "unknown"}) that could '
                'run on load; convert it to .safetensors, or pass --allow-unsafe-pickle if you '
                'trust its source'
            ) from None
        raise KDError(
            f'checkpoint {path!r} is corrupt or unreadable ({type(e).__name__}: {message[:120]}); '
            f're-download or re-export it'
        ) from None
    if not isinstance(state_dict, dict) or not any(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise KDError(
            f'checkpoint {path!r} holds no model weights (no tensors found); '
            f'pass a training checkpoint, a state_dict or a .safetensors file'
        )
    return state_dict


def load_training_metadata(path: str) -> Dict[str, Any]:
    """What a timm/timm-kd checkpoint records besides
    weights: its `args` (as a dict), `epoch` and `metric`.

    Empty for safetensors files and bare state_dicts. Loaded as safely as the weights
    (weights_only=True), and memory-mapped where the file allows it: the tensors, which callers
    have read already or do not need, are then not read again.
    """
    if path.endswith('.safetensors'):
        return {}
    checkpoint = None
    for mmap in (True, False):  # torch's legacy (non-zip) format cannot be memory-mapped
        try:
            with safe_globals():
                checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
            break
        except Exception:  # unreadable or pickled code: load_state_dict reports it with the fix
            continue
    if not isinstance(checkpoint, dict):
        return {}
    args = checkpoint.get('args')
    return {
        'args': vars(args)
        if isinstance(args, argparse.Namespace)
        else (args if isinstance(args, dict) else {}),
        'epoch': checkpoint.get('epoch'),
        'metric': checkpoint.get('metric'),
        'saver': checkpoint.get('saver'),
    }


# the timm.create_model keyword each of timm's train.py flags (a recorded args key) sets
MODEL_FLAGS = {'drop_rate': 'drop', 'drop_path_rate': 'drop_path', 'drop_block_rate': 'drop_block',
               'global_pool': 'gp', 'bn_momentum': 'bn_momentum', 'bn_eps': 'bn_eps'}  # fmt: skip


def input_channels(in_chans: Optional[int], input_size: Optional[Sequence[int]]) -> int:
    """The input channels as timm's train.py counts them: --in-chans, else the first of
    --input-size, else 3."""
    return in_chans or (input_size[0] if input_size else 3)


def model_keywords(flags: Mapping[str, Any]) -> Dict[str, Any]:
    """The `timm.create_model` keywords of a student's flags (parsed, or as a checkpoint records
    them in `args`), as timm's train.py passes them: the input channels, the model flags (drop
    rates, --gp, BatchNorm overrides) and --model-kwargs. Unset ones are None, which timm drops."""
    return {
        'in_chans': input_channels(flags.get('in_chans'), flags.get('input_size')),
        **{keyword: flags.get(flag) for keyword, flag in MODEL_FLAGS.items()},
        **(flags.get('model_kwargs') or {}),
    }


def checkpoint_num_classes(arch: str, state_dict: Dict[str, Any]) -> Optional[int]:
    """Class count of a state_dict, read off the classifier weight named in the architecture's
    pretrained cfg: 0 when the state_dict has none (a headless model's, `num_classes=0`), None
    when the cfg names no classifier."""
    cfg = get_pretrained_cfg(arch, allow_unregistered=True)
    classifier = cfg.classifier if cfg is not None else None
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    names = [n for n in names if n]
    for name in names:
        weight = state_dict.get(f'{name}.weight')
        if weight is not None:
            return weight.shape[0]
    if names and not any(k.startswith(f'{n}.') for n in names for k in state_dict):
        return 0
    return None
