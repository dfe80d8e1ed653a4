"""Pieces the experiments share: a training cell that runs
once and resumes, and the demo teacher as --teacher."""

import json
import os
from typing import Dict, List

from ..demo import TEACHER, run


def replace_flag(args: List[str], flag: str, value: str) -> List[str]:
    """Copy of a flag list with `flag`'s value set (appended when absent)."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
        return args
    return args + [flag, value]


def cell(
    name: str, train_args: List[str], data: str, output: str, workers: int
) -> Dict[str, float]:
    """Run one training cell unless its result.json exists; resumable through demo.run."""
    done = os.path.join(output, name, 'result.json')
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    result = run(name, train_args, data, output, workers)
    with open(done, 'w') as f:
        json.dump(result, f)
    return result


def kd_args(teacher_checkpoint: str, temperature: float) -> List[str]:
    """The demo teacher as a --teacher of a student run."""
    flags = [
        '--teacher',
        TEACHER[TEACHER.index('--model') + 1],
        '--teacher-checkpoint',
        teacher_checkpoint,
        '--kd-temperature',
        str(temperature),
    ]
    if '--model-kwargs' in TEACHER:
        flags += [
            '--teacher-kwargs',
            *TEACHER[TEACHER.index('--model-kwargs') + 1 : TEACHER.index('--epochs')],
        ]
    return flags
