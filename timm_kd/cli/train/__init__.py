"""Training with a teacher: timm's train.py, plus distillation.

    timm-kd-train DATA --model resnet50 --teacher NAME [--config resnet50_a2] ...
    python -m timm_kd.train ...            torchrun --nproc_per_node=8 -m timm_kd.train ...

`main(argv)` runs it in-process. Modules: `timm_flags` (every flag of timm's train.py), `kd_flags`
(ours, and timm's KD flags folded into them), `config` (the parser, YAML and bundled recipes),
`students` (`--student`), `build` (student, teacher, data, per-student task/optimizer/schedule),
`loop` (the epochs).
"""

from .config import build_parser, parse_args
from .loop import cli, main

__all__ = ['build_parser', 'cli', 'main', 'parse_args']
