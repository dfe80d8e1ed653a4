"""Training as a library: `fit(run)` trains a typed `RunSpec` (from `timm_kd.parse_run(argv)`, or
built in code) and returns its summary rows.

Modules: `build` (process switches, datasets, students' models, the resolved run, the training
stream), `student_model` (a student's model as timm's train.py creates it), `student_job` (its
task, optimizer, schedule, EMA, saver, resume), `loop` (the epochs).
"""

from .build import Setup, setup_run, training_stream
from .loop import fit

__all__ = ['Setup', 'fit', 'setup_run', 'training_stream']
