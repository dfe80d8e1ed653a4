"""What a `--config` key means beyond the flag of its name: run-time state a finished run recorded,
older names, keys of earlier timm versions, keys of forks of timm's train.py."""

import difflib
import logging
from typing import List

from ...errors import KDError

_logger = logging.getLogger('timm_kd.train')

# Keys of an args.yaml that describe a finished run rather than a setting (written
# by timm's train.py, by earlier timm versions, or by earlier timm-kd versions).
RUNTIME_KEYS = {
    'distributed',
    'prefetcher',
    'rank',
    'world_size',
    'dist_backend',
    'dist_url',
    'has_compile',
    'use_amp',
}
# Older names of our keys, and of timm's (timm 0.4's `jsd` is today's `jsd_loss`).
CONFIG_ALIASES = {
    'opt_args': 'opt_kwargs',
    'teacher_pretrained': 'teacher_checkpoint',
    'jsd': 'jsd_loss',
}
# Keys earlier timm versions wrote that mean nothing today: read and ignored, with one note.
OLD_TIMM_KEYS = {
    'amp_impl': "timm 0.9-1.0's choice of native or apex AMP; AMP is torch's own",
    'aot_autograd': "timm 0.6's functorch AOT autograd; --torchcompile replaced it",
    'bn_tf': "timm 0.4's TensorFlow BatchNorm defaults for a few models",
}
# Keys that forks of timm's train.py (and DeiT's main.py, whose configs people adapt) write, named
# in the refusal as not timm's: (whose, what to do instead). Only keys that mark their fork.
FORK_KEYS = {
    **dict.fromkeys(
        ('token_label', 'token_label_data', 'token_label_size', 'dense_weight', 'cls_weight',
         'ground_truth', 'return_dense', 'mix_token'),
        ("VOLO's train.py (token labelling)", 'timm-kd has no token labelling'),
    ),
    **dict.fromkeys(
        ('teacher_model', 'teacher_path', 'distillation_type', 'distillation_alpha',
         'distillation_tau'),
        ("DeiT's main.py", 'use teacher, teacher_checkpoint, kd_loss and kd_temperature'),
    ),
    **dict.fromkeys(
        ('no_prox', 'bias_decay', 'max_grad_norm'),
        ("Adan's train.py", "timm's adan has neither switch; max_grad_norm is clip_grad"),
    ),
    **dict.fromkeys(
        ('mesa', 'mesa_start_ratio', 'ThreeAugment', 'ampere_sparsity', 'activation_tracker',
         'lr_ep', 'loadcheckpoint', 'no_saver', 'validate_only', 'data_len'),
        ("FasterViT's and MambaVision's train.py", 'timm-kd has no MESA nor 3-Augment'),
    ),
}  # fmt: skip
IGNORE_UNKNOWN = '--config-ignore-unknown'


def old_timm_keys(path: str, cfg: dict) -> None:
    """Keys of earlier timm versions, in place: timm 0.4's validation batch multiplier becomes the
    validation batch size it meant, timm 0.4-0.6's native_amp becomes amp, and so does apex_amp
    (timm 0.4 wrote it where `--amp` found NVIDIA apex, which timm no longer has) with one note;
    keys that mean nothing today are dropped with one note."""
    if cfg.pop('apex_amp', False):
        _logger.warning(
            f"--config {path!r}: apex_amp: true (timm 0.4's --amp through NVIDIA apex, which timm "
            "no longer has) trains with torch's own AMP, as amp: true"
        )
        cfg['amp'] = True
    if cfg.pop('native_amp', False):  # timm 0.4-0.6's --native-amp: today's --amp
        cfg['amp'] = True
    multiplier = cfg.pop('validation_batch_size_multiplier', 1)
    if multiplier != 1 and cfg.get('validation_batch_size') is None:
        cfg['validation_batch_size'] = int(multiplier * cfg.get('batch_size', 128))
    ignored = [f'{k} ({OLD_TIMM_KEYS[k]})' for k in sorted(OLD_TIMM_KEYS) if k in cfg]
    for key in OLD_TIMM_KEYS:
        cfg.pop(key, None)
    if ignored:
        _logger.warning(
            f'--config {path!r}: ignored keys of earlier timm versions: {"; ".join(ignored)}'
        )


def foreign_keys(path: str, unknown: List[str], flags: List[str], ignore: bool) -> None:
    """Keys no flag of ours or timm's has: one line naming them (a fork's by the fork's name, a
    near miss with the flag it resembles), or, with --config-ignore-unknown, one note, as timm's
    train.py ignores them."""
    forks: dict = {}
    for key in unknown:
        forks.setdefault(FORK_KEYS.get(key), []).append(key)
    clauses = [
        f"keys of {whose}, not of timm's train.py: {', '.join(keys)} ({fix})"
        for (whose, fix), keys in sorted((k, v) for k, v in forks.items() if k is not None)
    ]
    if None in forks:
        named = []
        for key in forks[None]:
            close = difflib.get_close_matches(key, flags, n=1, cutoff=0.85)
            named.append(f'{key} (did you mean {close[0]}?)' if close else key)
        clauses.append(f"keys that neither timm's train.py nor timm-kd has: {', '.join(named)}")
    if ignore:
        _logger.warning(f'--config {path!r}: {IGNORE_UNKNOWN} drops {"; ".join(clauses)}')
        return
    raise KDError(
        f'--config {path!r} has {"; ".join(clauses)}; drop them, or pass {IGNORE_UNKNOWN} to train '
        "without them as timm's train.py would"
    )
