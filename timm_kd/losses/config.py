"""The per-loss configuration (weights and keyword arguments) that a run's loss settings resolve to.

Every constructor argument with a default of a registered loss becomes `--<loss>-<arg>` (`--dkd-beta
8`, `--rkd-angle-weight 0`) and the YAML key `<loss>_<arg>`; the flag's type is the default's (int,
float, bool, str).
"""

import inspect
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import KDError
from .registry import check_hyperparameters, get_kd_loss_class, list_kd_losses, loss_accepts

_NOT_FLAGS = {'student', 'teacher', 'num_samples', 'base_kwargs'}


def loss_hyperparameters(name: str) -> Dict[str, Any]:
    """Constructor arguments of a registered loss that
    become `--NAME-ARG` flags, with their defaults."""
    params = inspect.signature(get_kd_loss_class(name)).parameters.values()
    return {
        q.name: q.default
        for q in params
        if q.name not in _NOT_FLAGS
        and q.default is not q.empty
        and q.kind is q.POSITIONAL_OR_KEYWORD
    }


def kd_loss_config(
    names: List[str],
    weights: List[float],
    *,
    temperature: Optional[float] = None,
    loss_kwargs: Optional[Mapping[str, Any]] = None,
    flags: Mapping[str, Any] = {},
) -> Tuple[Dict[str, float], Dict[str, Dict[str, Any]]]:
    """Per-loss weights and keyword arguments.

    `flags` maps generated flag destinations (`dkd_beta`) to values (None: unset). Precedence,
    lowest first: the loss's own defaults, `temperature`, `key=value` in `loss_kwargs` (to every
    chosen loss that takes `key`), the generated `--NAME-ARG` flags, `NAME.key=value` in
    `loss_kwargs`.
    """
    loss_kwargs = loss_kwargs or {}
    for name in names:
        if name not in list_kd_losses():
            raise KDError(
                f'unknown --kd-loss {name!r}; choose one of: {", ".join(list_kd_losses())}'
            )
    if len(set(names)) != len(names):
        raise KDError(f'--kd-loss lists a loss twice: {names}')
    for w in weights:
        # a negative weight would reward the student for moving away from the teacher
        if not w >= 0:
            raise KDError(f'--kd-loss-weight {w} is not valid: a loss weight must be >= 0')
    if len(weights) not in (1, len(names)):
        raise KDError(
            f'--kd-loss-weight has {len(weights)} values for {len(names)} losses; give one per '
            'loss or one'
        )
    kwargs: Dict[str, Dict[str, Any]] = {n: {} for n in names}
    if temperature is not None:
        for name in names:
            if loss_accepts(name, 'temperature'):
                kwargs[name]['temperature'] = temperature
    for key, value in loss_kwargs.items():
        if '.' in key:
            continue
        takers = [n for n in names if loss_accepts(n, key)]
        if not takers:
            raise KDError(f'--kd-loss-kwargs {key}={value}: none of {names} takes {key!r}')
        for n in takers:
            kwargs[n][key] = value
    for name in names:
        for arg in loss_hyperparameters(name):
            value = flags.get(f'{name}_{arg}')
            if value is not None and not (name == 'kd' and arg == 'temperature'):
                kwargs[name][arg] = value
    for key, value in loss_kwargs.items():
        if '.' in key:
            name, arg = key.split('.', 1)
            if name not in names:
                raise KDError(
                    f'--kd-loss-kwargs {key}={value}: {name!r} is not in --kd-loss {names}'
                )
            kwargs[name][arg] = value
    for name in names:
        check_hyperparameters(name, kwargs[name])
    return dict(zip(names, weights * len(names) if len(weights) == 1 else weights)), kwargs
