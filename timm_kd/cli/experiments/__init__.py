"""Experiments on data and hardware you have, each a resumable grid of `timm_kd.train` runs.

    python -m timm_kd.experiments pitfall     the small-data pitfall (VanillaKD Fig. 1 / Table 13)
    python -m timm_kd.experiments unlabeled   distillation from unlabeled images
    python -m timm_kd.experiments topk        a student's top-1 against the teacher cache's K

Each command's --help says what it runs and writes.
"""

import importlib
import sys

from ...errors import one_line_errors
from ..plots import pyplot

COMMANDS = ('pitfall', 'unlabeled', 'topk')


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    with one_line_errors():
        if not {'-h', '--help'} & set(argv):  # each ends with a figure: check before hours of runs
            pyplot()
        importlib.import_module(f'{__package__}.{argv[0]}').main(argv[1:])
