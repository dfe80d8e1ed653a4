import importlib
import sys

from ..errors import one_line_errors
from . import __doc__ as usage

COMMANDS = ('pitfall', 'unlabeled', 'topk')


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(usage, file=sys.stderr)
        raise SystemExit(2)
    with one_line_errors():
        importlib.import_module(f'{__package__}.{argv[0]}').main(argv[1:])


if __name__ == '__main__':
    main()
