"""The generated parts of the documentation, written from the programs' own parsers.

    make docs    # main(): rewrite docs/flags.md and the identity list; main(['--check']) only
                 # reports the files that differ (exit 1)

`docs/flags.md` lists every flag of every program with its group, default and help, so the
reference cannot drift from what `--help` says; `tests/test_docs.py` fails when it does.
"""

import argparse
import os
from typing import Callable, Dict, List, Optional, Tuple

from . import cache, demo, diagnose, hub, validate
from .experiments import pitfall, topk, unlabeled
from .train.config import build_parser as train_parser
from .train.flag_roles import MARKERS, identity_markdown

FLAGS_FILE = os.path.join('docs', 'flags.md')
IDENTITY_FILE = os.path.join('docs', 'teacher-cache.md')

# (section title, the command as typed, its parser): every program that takes flags
PROGRAMS: List[Tuple[str, str, Callable[[], argparse.ArgumentParser]]] = [
    ('Training', 'timm-kd-train', train_parser),
    ('Teacher-output cache: build', 'python -m timm_kd.cache build', cache.build_flags),
    ('Teacher-output cache: push', 'python -m timm_kd.cache push', cache.push_parser),
    ('Teacher-output cache: pull', 'python -m timm_kd.cache pull', cache.pull_parser),
    ('Validation', 'python -m timm_kd.validate', validate.build_parser),
    ('Diagnostics', 'python -m timm_kd.diagnose', diagnose.build_parser),
    ('Checkpoints: export and push', 'python -m timm_kd.hub', hub.build_parser),
    ('The demo', 'python -m timm_kd.demo', demo.build_parser),
    (
        'Experiment: the small-data pitfall',
        'python -m timm_kd.experiments pitfall',
        pitfall.build_parser,
    ),
    (
        'Experiment: unlabeled images',
        'python -m timm_kd.experiments unlabeled',
        unlabeled.build_parser,
    ),
    ('Experiment: top-1 against K', 'python -m timm_kd.experiments topk', topk.build_parser),
]

HEADER = """# Flag reference

Every flag of every program, with its group, default and help, as `--help` prints them. Written
from the parsers by `make docs`; a test fails when this file differs from what they say. Guides:
[the documentation map](../README.md#documentation).
"""


def _cell(text: str) -> str:
    return ' '.join(str(text).split()).replace('|', '\\|')


def _default(action: argparse.Action) -> str:
    """The default as the reference shows it: blank when the flag is required, off or empty."""
    value = action.default
    if action.required or value is False or value in (None, argparse.SUPPRESS, '', [], {}):
        return ''
    return f'`{_cell(value)}`'


def _flag(action: argparse.Action) -> str:
    names = ', '.join(f'`{o}`' for o in action.option_strings) or f'`{action.dest}`'
    if action.choices is not None and not isinstance(action.choices, dict):
        names += ' {' + ', '.join(str(c) for c in action.choices) + '}'
    return _cell(names)


def _help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = action.help or ''
    if '%(' in text:
        text = text % dict(vars(action), prog=parser.prog)
    if action.required and action.option_strings:
        text = 'required. ' + text
    return _cell(text)


def _tables(parser: argparse.ArgumentParser, title: str) -> List[str]:
    lines = []
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        ]
        if not actions:
            continue
        name = {'options': 'flags', 'optional arguments': 'flags'}.get(group.title, group.title)
        name = 'arguments' if name == 'positional arguments' else name
        lines += ['', f'### {title}{name}', '', '| flag | default | help |', '|---|---|---|']
        lines += [f'| {_flag(a)} | {_default(a)} | {_help(a, parser)} |' for a in actions]
    for action in parser._actions:  # subcommands, each with its own tables
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                lines += _tables(sub, f'{command}: ')
    return lines


def flags_markdown() -> str:
    """docs/flags.md: one section per program."""
    lines = [HEADER.rstrip('\n')]
    lines += ['', ''.join(f'- [{t}](#{anchor(t)})\n' for t, _, _ in PROGRAMS).rstrip('\n')]
    for title, command, make in PROGRAMS:
        lines += ['', f'## {title}', '', f'`{command}`']
        if command.endswith('cache build'):
            lines += ['', 'Every flag of `timm-kd-train` (above), and its own:']
        lines += _tables(make(), '')
    return '\n'.join(lines) + '\n'


def anchor(title: str) -> str:
    """The anchor a Markdown host makes of a heading (GitHub's rule)."""
    kept = ''.join(c for c in title.lower() if c.isalnum() or c in ' -_')
    return kept.replace(' ', '-')


def generated(root: str) -> Dict[str, str]:
    """Each generated file's path under `root` and the text it should hold."""
    path = os.path.join(root, IDENTITY_FILE)
    with open(path) as f:
        text = f.read()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    identity = text[:start] + '\n' + identity_markdown(train_parser()) + text[end:]
    return {os.path.join(root, FLAGS_FILE): flags_markdown(), path: identity}


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(prog='make docs', description=__doc__)
    p.add_argument('--root', default='.', help='the checkout (default: the current folder)')
    p.add_argument('--check', action='store_true', help='only report files that differ; exit 1')
    args = p.parse_args(argv)
    stale = []
    for path, text in generated(args.root).items():
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            stale.append(path)
            if not args.check:
                with open(path, 'w') as f:
                    f.write(text)
    for path in stale:
        print(f'{path}: {"differs from the parsers; run make docs" if args.check else "written"}')
    if args.check and stale:
        raise SystemExit(1)
