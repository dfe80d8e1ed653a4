"""Several students on one data stream and one teacher pass: `--student "FLAGS"`, repeated.

Each student's flags are parsed over the shared ones. What the students share (the data stream, the
epochs, the teacher, the process setup: each such flag is declared `shared=True`) must not be set
inside `--student`; everything else (model, optimizer, schedule, losses, EMA, output) may differ.
"""

import argparse
import os
import shlex
from datetime import datetime
from typing import List, Tuple

import yaml

from ...errors import KDError
from .config import build_parser, finish_args
from .declare import shared as declared_shared


def student_args(args: argparse.Namespace, args_text: str) -> List[Tuple[argparse.Namespace, str]]:
    """(args, args.yaml text) of each student: `args` itself, or one per `--student "FLAGS"`.

    `args_text` is the shared flags as parsed (before derived values); each student's flags are
    parsed over it, so a student is exactly "the shared args.yaml plus its own flags". Its output
    folder is EXPERIMENT/<its --experiment, or its index and model>.
    """
    if not args.students:
        return [(args, args_text)]
    if args.resume:
        raise KDError(
            '--resume with --student: give each student its own --resume inside its --student "..."'
        )
    parser = build_parser()
    shared = {action.dest for action in parser._actions if declared_shared(action)}
    parser.set_defaults(**yaml.safe_load(args_text))
    parent = args.experiment or datetime.now().strftime('%Y%m%d-%H%M%S') + '-students'
    out = []
    for i, flags in enumerate(args.students):
        try:
            ns = parser.parse_args(shlex.split(flags))
        except SystemExit:
            raise KDError(
                f'--student {flags!r}: not valid timm-kd-train flags (see the error above)'
            ) from None
        raw = dict(vars(ns))  # as parsed, for its args.yaml
        finish_args(ns)
        changed = sorted(
            k for k in vars(args) if k in shared and getattr(ns, k) != getattr(args, k)
        )
        if changed:
            raise KDError(
                f'--student {flags!r} sets '
                f'{", ".join("--" + k.replace("_", "-") for k in changed)}, which '
                f'all students share (one data stream, one teacher); set it outside --student'
            )
        name = (
            ns.experiment
            if ns.experiment != args.experiment
            else f'{i}-{ns.model.replace("/", "_")}'
        )
        ns.experiment, ns.students = os.path.join(parent, name), []
        raw.update(experiment=ns.experiment, students=[])
        out.append((ns, yaml.safe_dump(raw, default_flow_style=False)))
    return out
