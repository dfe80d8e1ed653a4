"""How a flag of `timm-kd-train` is declared: beside argparse's own keywords, its role for a
teacher-output cache (`role=`) and whether all students share it (`shared=True`), in the one
`add_argument` call that adds it. `flag_roles` and `students` read both off the parser, so adding a
flag touches its declaration and its use.

- `TEACHER`: changes what the teacher sees or answers (the data, the views, the student's
  preprocessing the batch arrives in, the teacher itself), or is counted as such to be safe. It
  counts in a teacher-output cache's identity: a cached run that differs in it is refused in one
  line (`timm_kd.cache.TeacherCache.check`).
- `STUDENT`: the student's training alone (model, optimizer, schedule, losses, precision). A cached
  run that differs in it trains from the cache as the live run would.
- `NEITHER`: where things go and how the run is driven (paths, logging, workers, speed switches,
  settings of a refused loader, `--view-cycle`: which built epoch's views an epoch replays, each
  the same views with or without it), and validation's preprocessing (`--crop-pct`;
  `--interpolation`, which the training views use only under --no-aug or without
  --train-interpolation: then it counts, `timm_kd.cache.fingerprint`).
- `REFUSED`: a flag of timm's train.py that cannot apply to distillation (`timm_flags.UNSUPPORTED`).

`shared`: the students of one run share it (the data stream, the epochs, the teacher, the process
setup); `--student "FLAGS"` may not set it.
"""

import argparse
from typing import Any, Optional

TEACHER, STUDENT, NEITHER, REFUSED = 'teacher', 'student', 'neither', 'refused'


class _Declares:
    """`add_argument` that takes the flag's `role` and `shared` and keeps them on its action."""

    def add_argument(
        self, *args: Any, role: Optional[str] = None, shared: bool = False, **kwargs: Any
    ) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)  # type: ignore[misc]
        action.role, action.shared = role, shared  # type: ignore[attr-defined]
        return action


class FlagGroup(_Declares, argparse._ArgumentGroup):
    """A group of declared flags."""


class FlagParser(_Declares, argparse.ArgumentParser):
    """The parser of declared flags (its `--help` is run control: `NEITHER`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for action in self._actions:  # argparse's own -h/--help
            action.role, action.shared = NEITHER, False  # type: ignore[attr-defined]

    def add_argument_group(self, *args: Any, **kwargs: Any) -> FlagGroup:
        group = FlagGroup(self, *args, **kwargs)
        self._action_groups.append(group)
        return group


def role(action: argparse.Action) -> Optional[str]:
    """A flag's declared role; None for one declared without it."""
    return getattr(action, 'role', None)


def shared(action: argparse.Action) -> bool:
    return getattr(action, 'shared', False)
