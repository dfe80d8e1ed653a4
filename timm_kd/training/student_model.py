"""The student's model as timm's train.py creates it, from its typed `ModelSpec`: pretrained
weights, BatchNorm overrides, head init, dtype and layout, SyncBatchNorm, TorchScript; each bad
input one line."""

import logging
import re
from typing import Optional

import torch
from timm.layers import convert_splitbn_model
from timm.models import create_model

from ..checkpoint import MODEL_FLAGS, load_state_dict
from ..errors import KDError, flat
from ..run import ProcessSpec, RunSpec, StudentSpec
from ..runtime import Process
from ..teacher_model import check_hub_reachable, hub_miss, is_hub_miss

_logger = logging.getLogger(__name__)
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}


def model_dtype(process: ProcessSpec) -> Optional[torch.dtype]:
    if process.model_dtype and process.amp and process.model_dtype != 'float32':
        raise KDError(
            f'--model-dtype {process.model_dtype} with --amp: AMP needs float32 weights; drop one '
            'of them'
        )
    return DTYPES[process.model_dtype] if process.model_dtype else None


# the flag of each keyword timm's create_model gets, for the line of a model that takes none
MODEL_KEYWORD_FLAGS = {kw: '--' + flag.replace('_', '-') for kw, flag in MODEL_FLAGS.items()}
_NO_WEIGHTS = 'pass --pretrained-path PATH, or drop --pretrained'


def create_student(
    spec: StudentSpec, run: RunSpec, process: Process, num_classes: Optional[int]
) -> torch.nn.Module:
    """The student as timm's train.py creates it (pretrained
    path, BatchNorm overrides, head init, dtype, layout)."""
    model, how, allow_pickle = spec.model, spec.create, run.process.allow_pickle
    overlay = (
        dict(pretrained_cfg_overlay=dict(file=how.pretrained_path, num_classes=-1))
        if how.pretrained_path
        else {}
    )
    _check_sync_bn(how.sync_bn, process)
    if how.pretrained and not how.pretrained_path:
        check_hub_reachable(model, '--model', _NO_WEIGHTS)
    try:
        student = create_model(
            model,
            pretrained=how.pretrained,
            num_classes=num_classes,
            checkpoint_path=how.initial_checkpoint or None,
            **overlay,
            **spec.keywords,  # the channels, model flags and --model-kwargs
        )
    except Exception as e:
        if isinstance(e, RuntimeError) and 'Unknown model' in str(e):
            raise KDError(
                f'unknown --model {model!r}; list names with python -c "import timm; '
                f'print(timm.list_models())"'
            ) from None
        if how.pretrained and is_hub_miss(e):
            raise KDError(hub_miss(e, '--model', model, _NO_WEIGHTS)) from None
        keyword = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if isinstance(e, TypeError) and keyword:
            name = keyword.group(1)
            flag = MODEL_KEYWORD_FLAGS.get(name, f'{name}=... in --model-kwargs')
            raise KDError(
                f'--model {model!r} takes no keyword {name!r} (from {flag}); drop {flag} '
                'for this model'
            ) from None
        # a missing, corrupt or unsafe file gets its own line;
        # checked only on failure, so a good file is read once
        check_checkpoint('--initial-checkpoint', how.initial_checkpoint, allow_pickle)
        check_checkpoint('--pretrained-path', how.pretrained_path, allow_pickle)
        # the weights do not fit the architecture
        if isinstance(e, RuntimeError) and 'state_dict' in str(e):
            raise KDError(
                f'--initial-checkpoint {how.initial_checkpoint!r} does not fit --model {model!r} '
                f'({flat(e, 150)}); pass the checkpoint of a {model} or the --model it was '
                f'trained with'
            ) from None
        raise
    if how.head_init_scale is not None:
        with torch.no_grad():
            student.get_classifier().weight.mul_(how.head_init_scale)
            student.get_classifier().bias.mul_(how.head_init_scale)
    if how.head_init_bias is not None:
        torch.nn.init.constant_(student.get_classifier().bias, how.head_init_bias)
    if how.grad_checkpointing:
        student.set_grad_checkpointing(True)
    student = _split_bn(student, how.split_bn, run.views.aug_splits, run.views.resplit)
    student.to(device=process.device, dtype=model_dtype(run.process))
    if run.process.channels_last:
        student.to(memory_format=torch.channels_last)
    if process.distributed and how.sync_bn:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    if how.torchscript:
        has_teacher = bool(run.teachers.members or run.teachers.cache)
        _check_torchscript(has_teacher, spec.compile, how.sync_bn)
        student = torch.jit.script(student)
    return student


def _check_sync_bn(sync_bn: bool, process: Process) -> None:
    """--sync-bn as timm's train.py takes it: BatchNorm synchronized across the processes of a
    distributed run, ignored in one process (with a note here); refused only where it cannot run,
    several processes off CUDA (SyncBatchNorm has no CPU implementation)."""
    if not sync_bn:
        return
    if not process.distributed:
        if process.is_primary:
            _logger.warning(
                '--sync-bn synchronizes BatchNorm across processes; in this one-process run it '
                'does nothing, as in timm'
            )
        return
    if process.device.type != 'cuda':
        raise KDError(
            '--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation); drop it, or '
            'run with --device cuda under torchrun'
        )


def _check_torchscript(teacher: bool, compile: Optional[str], sync_bn: bool) -> None:
    """--torchscript as timm's train.py takes it: a plain run only (timm's distillation tasks read
    the student's pretrained_cfg, which a scripted model lacks), without --torchcompile or
    --sync-bn (timm asserts both)."""
    if teacher:
        raise KDError(
            '--torchscript cannot distill: the distillation task reads the student as a timm model '
            "(timm's own train.py fails there too); use --torchcompile, or drop the teacher"
        )
    if compile or sync_bn:
        raise KDError(
            f'--torchscript with --{"torchcompile" if compile else "sync-bn"}: timm scripts the '
            'model only without them; give one'
        )


def _split_bn(student: torch.nn.Module, split_bn: bool, splits: int, resplit: bool):
    """timm's --split-bn: BatchNorm statistics per AugMix split (or per random-erasing split with
    --resplit), as timm's train.py converts the student."""
    if not split_bn:
        return student
    if splits < 2 and not resplit:
        raise KDError('--split-bn keeps BatchNorm statistics per AugMix split: add --aug-splits 2 '
                      '(or more), or --resplit, or drop --split-bn')  # fmt: skip
    return convert_splitbn_model(student, max(splits, 2))


def check_checkpoint(flag: str, path: Optional[str], allow_pickle: bool = False) -> None:
    """One line for a student checkpoint that is missing,
    corrupt or runs code (nothing when it loads safely)."""
    if not path:
        return
    try:
        load_state_dict(path, allow_pickle=allow_pickle)
    except KDError as e:
        raise KDError(f'{flag}: {e}') from None
