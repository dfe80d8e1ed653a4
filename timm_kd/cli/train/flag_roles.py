"""What each flag of `timm-kd-train` is to the teacher, read off the parser: each flag declares its
role where it is added (`declare`: `TEACHER`, `STUDENT`, `NEITHER`, `REFUSED`, and what each
means).

`tests/test_flag_roles.py` flips every flag and checks the declared roles against the cache's
behaviour, so a flag added without a role (a new timm flag) fails the suite the day it arrives; the
list of what a cache's identity holds in docs/teacher-cache.md is written from the roles
(`make docs`).
"""

import argparse
from typing import Dict, List, Optional

from .declare import NEITHER, REFUSED, STUDENT, TEACHER, role

__all__ = ['NEITHER', 'REFUSED', 'STUDENT', 'TEACHER', 'flag_roles', 'identity_markdown']


def flag_roles(parser: argparse.ArgumentParser) -> Dict[str, Optional[str]]:
    """Every destination of `parser` with its declared role; a flag declared without one maps to
    None."""
    return {action.dest: role(action) for action in parser._actions}


def identity_markdown(parser: argparse.ArgumentParser) -> str:
    """The list of the flags a teacher-output cache's identity holds, by parser group."""
    lines: List[str] = []
    for group in parser._action_groups:
        flags = [
            max(action.option_strings, key=len) if action.option_strings else action.dest.upper()
            for action in group._group_actions
            if role(action) == TEACHER and action.help != argparse.SUPPRESS
        ]
        if flags:
            lines.append(f'- {group.title}: ' + ', '.join(f'`{f}`' for f in flags))
    return '\n'.join(lines) + '\n'


MARKERS = (
    '<!-- identity flags: written by `make docs` -->',
    '<!-- end of identity flags -->',
)
