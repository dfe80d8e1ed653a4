"""Training with a teacher: timm's train.py, plus distillation.

    timm-kd-train DATA --model resnet50 --teacher NAME [--config resnet50_a2] ...
    python -m timm_kd.train ...            torchrun --nproc_per_node=8 -m timm_kd.train ...

`main(argv)` runs it in-process: `timm_kd.fit(timm_kd.parse_run(argv))`. Modules: `timm_flags`
(every flag of timm's train.py), `kd_flags` (ours, and timm's KD flags folded into them), `config`
(the parser, YAML and bundled recipes), `students` (`--student`), `parse` (the flags as one typed
run). The trainer itself is the library's `timm_kd.training`.
"""

from typing import Any, Dict, List, Optional

from timm.utils import setup_default_logging

from ...errors import one_line_errors
from ...training import fit
from .config import build_parser, parse_args
from .parse import parse_run


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Train as `timm-kd-train argv` does; returns the summary rows (`timm_kd.fit`)."""
    setup_default_logging()
    return fit(parse_run(argv))


def cli(argv: Optional[List[str]] = None) -> None:
    """Console entry point (`timm-kd-train`, `python -m timm_kd.train`): bad input is one line and
    exit 2."""
    with one_line_errors():
        main(argv)


__all__ = ['build_parser', 'cli', 'main', 'parse_args', 'parse_run']
