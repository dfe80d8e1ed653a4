"""Name -> loss class registry, the single place `--kd-loss NAME` is resolved.

A loss class declares what it needs beyond logits: `needs_labels` (each image's class: DKD),
`needs_index` (each sample's index: CRD's memory bank); a feature loss needs features. The programs
derive their refusals from these (unlabeled images, the teacher cache).

Two kinds of loss are registered:
- 'logit': `loss(student_logits, teacher_logits, target)`; target is class indices or dense
  mixup rows.
- 'feature': `loss(student_features, teacher_features)` on `timm_kd.features.Features`; created
  with the `FeatureSpec`s of both sides (`student=`, `teacher=`) so their learnable parts can be
  sized.
"""

import inspect
from typing import Callable, Dict, List, Type

import torch
import torch.nn as nn

from ..errors import KDError

_KD_LOSSES: Dict[str, Type[nn.Module]] = {}
KINDS = ('logit', 'feature')


def register_kd_loss(
    name: str, kind: str = 'logit'
) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: make a loss available as `create_kd_loss(name)` and `--kd-loss name`."""
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')

    def _register(cls: Type[nn.Module]) -> Type[nn.Module]:
        if name in _KD_LOSSES:
            raise ValueError(
                f'KD loss {name!r} is already registered by {_KD_LOSSES[name].__name__}'
            )
        cls.kind = kind
        # what the loss needs beyond logits (a class may declare needs_labels / needs_index)
        cls.needs_labels = getattr(cls, 'needs_labels', False)
        cls.needs_index = getattr(cls, 'needs_index', False)
        cls.needs_features = kind == 'feature'
        _KD_LOSSES[name] = cls
        return cls

    return _register


def list_kd_losses(kind: str = None) -> List[str]:
    """Names accepted by `create_kd_loss`, sorted; only
    those of one kind ('logit', 'feature') if given."""
    return sorted(n for n, c in _KD_LOSSES.items() if kind is None or c.kind == kind)


def get_kd_loss_class(name: str) -> Type[nn.Module]:
    if name not in _KD_LOSSES:
        raise KDError(f'unknown KD loss {name!r}; choose one of: {", ".join(list_kd_losses())}')
    return _KD_LOSSES[name]


def loss_accepts(name: str, arg: str) -> bool:
    """Whether the loss registered as `name` takes the
    constructor argument `arg` (e.g. 'temperature')."""
    return arg in inspect.signature(get_kd_loss_class(name)).parameters


def create_kd_loss(name: str, **kwargs) -> nn.Module:
    """Create the KD loss registered as `name` with its hyperparameters as keyword arguments."""
    cls = get_kd_loss_class(name)
    check_hyperparameters(name, kwargs)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise KDError(f'bad arguments for KD loss {name!r}: {e}') from None


# Hyperparameters every loss shares by name: temperatures
# and eps must be positive, term weights not negative.
_POSITIVE = ('temperature', 'nce_temperature', 'eps')
_NON_NEGATIVE = ('alpha', 'beta', 'gamma', 'weight')


def check_hyperparameters(name: str, kwargs: dict) -> None:
    """One line naming the flag for a value no loss can train
    with (T <= 0 divides by zero or flips the softmax)."""
    for key, value in kwargs.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        bad = (
            (key in _POSITIVE and not value > 0)
            or (key in _NON_NEGATIVE and not value >= 0)
            or value != value
        )
        if bad:
            need = 'positive' if key in _POSITIVE else 'a number >= 0'
            flag = f'--{name}-{key.replace("_", "-")}'
            if key == 'temperature' and name != 'kd':
                flag += ' (or --kd-temperature)'
            raise KDError(f'{flag} {value} is not valid for the {name!r} loss: it must be {need}')


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32 for a stable softmax; float32/float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices from integer labels or from dense
    (mixup/cutmix/smoothed) target rows, via argmax."""
    return target.argmax(dim=-1) if target.ndim == 2 else target
