"""Process-level setup for training: device and DDP,
learning rate from batch size, AMP, output folder."""

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Callable, Optional, Sequence, Tuple

import torch
from timm.models import safe_model_name
from timm.utils import NativeScaler, get_outdir
from timm.utils.distributed import is_distributed_env, world_info_from_env

from .errors import KDError

_logger = logging.getLogger(__name__)


@dataclass
class Process:
    """Where this process trains: its device and its place among the DDP processes."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """The start-up line timm's train.py prints: how many processes and devices train."""
        if not self.distributed:
            return f'Training with a single process on 1 device ({self.device}).'
        return (
            f'Training in distributed mode with {self.world_size} processes, 1 device per '
            f'process. Process {self.rank}, total {self.world_size}, device {self.device}.'
        )


def init_process(device: Optional[str] = None) -> Process:
    """CUDA when present (else CPU) if `device` is unset,
    and DDP under torchrun: nccl on GPU, gloo on CPU."""
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise KDError(
            f'--device {device}: CUDA is not available on this machine; pass --device cpu or leave '
            'it unset'
        )
    local_processes = int(os.environ.get('LOCAL_WORLD_SIZE', 1))  # set by torchrun
    if device == 'cuda' and local_processes > torch.cuda.device_count():
        raise KDError(
            f'torchrun started {local_processes} processes on this machine but it has '
            f'{torch.cuda.device_count()} GPU(s); pass --nproc_per_node '
            f'{torch.cuda.device_count()}, or --device cpu to train on the CPU'
        )
    fast_cuda_math(torch.device(device))
    if not is_distributed_env():
        return Process(torch.device(device))
    local_rank, rank, world_size = join_process_group(device)
    device_type = device.split(':')[0]
    if device_type != 'cpu':  # one accelerator per local process, as timm's train.py
        device = f'{device_type}:{local_rank}'
        if device_type in ('cuda', 'npu'):
            getattr(torch, device_type).set_device(device)
    return Process(torch.device(device), rank, local_rank, world_size, True)


BACKENDS = {'cuda': 'nccl', 'xpu': 'ccl', 'hpu': 'hccl', 'npu': 'hccl'}


def join_process_group(device: str) -> Tuple[int, int, int]:
    """Join the DDP group (timm's backend per device: nccl on CUDA, gloo on the CPU) that torchrun
    or SLURM describes in the environment; returns (local rank, rank, world size).

    The rendezvous store is read under a prefix of torchrun's restart count: after an elastic
    restart (`--max-restarts`) the agent may hand the new workers the previous round's store, where
    the dead processes' addresses still stand; without the prefix a new worker can read one of
    them and the restarted group never forms (gloo: connection refused).
    """
    local_rank, rank, world_size = world_info_from_env()
    if 'SLURM_PROCID' in os.environ and 'RANK' not in os.environ:  # srun without torchrun
        os.environ.update(LOCAL_RANK=str(local_rank), RANK=str(rank), WORLD_SIZE=str(world_size))
    store, rank, world_size = next(torch.distributed.rendezvous('env://'))
    attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
    torch.distributed.init_process_group(
        backend=BACKENDS.get(device.split(':')[0], 'gloo'),
        store=torch.distributed.PrefixStore(f'timm_kd/attempt_{attempt}', store),
        rank=rank,
        world_size=world_size,
    )
    return local_rank, rank, world_size


def over_ranks(value: float, process: Process, op: str = 'sum') -> float:
    """`value` summed (or its 'max') over the DDP processes; `value` itself in one process.

    The tensor is built on the process's device: NCCL, the backend on CUDA, takes CUDA tensors
    only (gloo takes CPU ones, so a CPU tensor passes every CPU test and fails on the GPU)."""
    if not process.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=process.device)
    reduce_op = torch.distributed.ReduceOp.MAX if op == 'max' else torch.distributed.ReduceOp.SUM
    torch.distributed.all_reduce(tensor, op=reduce_op)
    return tensor.item()


def resolve_lr(
    lr: Optional[float],
    lr_base: float,
    lr_base_size: int,
    global_batch: float,
    opt: str,
    lr_base_scale: str = '',
) -> float:
    """`lr`, or `lr_base` scaled by global batch /
    `lr_base_size` (sqrt for adaptive optimizers, else linear).

    This is how a recipe written for a global batch of 2048 (VanillaKD's 5e-3 LAMB) transfers to
    other sizes.
    """
    if lr:
        return lr
    ratio = global_batch / lr_base_size
    scale = lr_base_scale or (
        'sqrt' if any(o in opt.lower() for o in ('ada', 'lamb')) else 'linear'
    )
    lr = lr_base * (ratio**0.5 if scale == 'sqrt' else ratio)
    _logger.info(
        f'Learning rate {lr:.3e} = lr_base {lr_base} x ({global_batch:g}/{lr_base_size})'
        f'{"^0.5" if scale == "sqrt" else ""} ({scale} scaling)'
    )
    return lr


def amp_setup(
    amp: bool, amp_dtype: str, device: torch.device
) -> Tuple[Callable, Optional[NativeScaler]]:
    """Autocast context factory and loss scaler for --amp / --amp-dtype.

    float16 gradients underflow without loss scaling on any device, so float16 gets timm's
    `NativeScaler` on the CPU too (timm's train.py scales on CUDA only): the CPU then runs the
    path of every CUDA float16 run (scaled backward, a step skipped on overflow, the scaler's state
    in checkpoints), and the tests hold it on a machine without a GPU."""
    if not amp:
        return nullcontext, None
    dtype = torch.bfloat16 if amp_dtype == 'bfloat16' else torch.float16
    scaler = NativeScaler(device=device.type) if dtype == torch.float16 else None
    return partial(torch.autocast, device_type=device.type, dtype=dtype), scaler


def fast_cuda_math(device: torch.device) -> None:
    """timm's train.py's switches on CUDA: cuDNN benchmarks the convolution algorithms for each
    input shape, float32 matmuls use TF32 tensor cores. Nothing elsewhere."""
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True


def experiment_name(experiment: str, model: str, input_size: Sequence[int]) -> str:
    """EXPERIMENT, or timm's dated name: date-time, model, input size."""
    return experiment or '-'.join(
        [datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(model), str(input_size[-1])]
    )


def output_dir(output: str, name: str) -> str:
    """Folder for checkpoints, args.yaml and summary.csv:
    OUTPUT/NAME (OUTPUT defaults to ./output/train)."""
    try:
        return get_outdir(output or os.path.join('.', 'output', 'train'), name)
    # NotADirectoryError (a file on the path), PermissionError, read-only file system
    except OSError as e:
        raise KDError(
            f'cannot create the output folder {os.path.join(output or "./output/train", name)!r} '
            f'({type(e).__name__}: {e.strerror}); pass an --output folder you can write to'
        ) from None
