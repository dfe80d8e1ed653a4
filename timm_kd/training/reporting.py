"""What training reports besides summary.csv and its checkpoints: wandb (timm's --log-wandb) and
the batches --save-images writes."""

import dataclasses
import json
import logging
import os
from typing import Any, Dict, List

import torch
import torchvision

from ..run import RunSpec, as_json
from .student_job import StudentJob

_logger = logging.getLogger('timm_kd.train')


def save_images(out_dir: str, batch_idx: int, input: torch.Tensor) -> None:
    path = os.path.join(out_dir, f'train-batch-{batch_idx}.jpg')
    torchvision.utils.save_image(input.float(), path, padding=0, normalize=True)


def init_wandb(run: RunSpec, first: StudentJob):
    """A wandb run for this training (timm's --log-wandb), configured with the first student's
    flags (the typed run when it was built in code); a warning, as in timm, when wandb is not
    installed."""
    try:
        import wandb
    except ImportError:
        _logger.warning(
            '--log-wandb: wandb is not installed, metrics are not logged to wandb; '
            'pip install "timm-kd[wandb]"'
        )
        return None
    loop, spec = run.loop, first.spec
    return wandb.init(
        project=loop.wandb_project,
        name=os.path.basename(first.out_dir),
        config=json.loads(spec.flags) if spec.flags else as_json(dataclasses.asdict(run)),
        tags=list(loop.wandb_tags),
        resume='must' if loop.wandb_resume_id else None,
        id=loop.wandb_resume_id or None,
    )


def wandb_row(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    """An epoch's summary rows as one wandb row; with several students each key gets the
    student's name as prefix."""
    out: Dict[str, float] = {}
    for row in rows:
        name = row.get('student', '')
        out.update({f'{name}/{k}' if name else k: v for k, v in row.items() if k != 'student'})
    return out
