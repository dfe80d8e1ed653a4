"""Name -> loss class registry, the single place `--kd-loss NAME` is resolved."""
from typing import Callable, Dict, List, Type

import torch
import torch.nn as nn

from ..errors import KDError

_KD_LOSSES: Dict[str, Type[nn.Module]] = {}


def register_kd_loss(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: make a loss available as `create_kd_loss(name)` and `--kd-loss name`."""
    def _register(cls: Type[nn.Module]) -> Type[nn.Module]:
        if name in _KD_LOSSES:
            raise ValueError(f'KD loss {name!r} is already registered by {_KD_LOSSES[name].__name__}')
        _KD_LOSSES[name] = cls
        return cls
    return _register


def list_kd_losses() -> List[str]:
    """Names accepted by `create_kd_loss`, sorted."""
    return sorted(_KD_LOSSES)


def create_kd_loss(name: str, **kwargs) -> nn.Module:
    """Create the KD loss registered as `name` with its hyperparameters as keyword arguments."""
    if name not in _KD_LOSSES:
        raise KDError(f'unknown KD loss {name!r}; choose one of: {", ".join(list_kd_losses())}')
    try:
        return _KD_LOSSES[name](**kwargs)
    except TypeError as e:
        raise KDError(f'bad arguments for KD loss {name!r}: {e}') from None


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 for a stable softmax; float32/float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
