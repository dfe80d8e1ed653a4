"""Process-level setup for train_kd.py: device and DDP, learning rate from batch size, AMP, output folder."""
import argparse
import logging
import os
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from typing import Callable, Optional, Tuple

import torch
from timm.models import safe_model_name
from timm.utils import NativeScaler, get_outdir, init_distributed_device

_logger = logging.getLogger(__name__)


def init_device(args: argparse.Namespace) -> torch.device:
    """CUDA when present (else CPU), and DDP under torchrun: nccl on GPU, gloo on CPU. Sets args.rank etc."""
    if not args.device:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = init_distributed_device(args)
    if args.distributed and device.type == 'cuda':
        torch.cuda.set_device(device)
    args.prefetcher = not args.no_prefetcher and device.type == 'cuda'
    return device


def resolve_lr(args: argparse.Namespace) -> float:
    """--lr, or --lr-base scaled by global batch / --lr-base-size (sqrt for adaptive optimizers, else linear).

    This is how a recipe written for a global batch of 2048 (VanillaKD's 5e-3 LAMB) transfers to other sizes.
    """
    if args.lr:
        return args.lr
    global_batch = args.batch_size * args.world_size * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)
    _logger.info(f'Learning rate {args.lr:.3e} = lr_base {args.lr_base} x ({global_batch}/{args.lr_base_size})'
                 f'{"^0.5" if scale == "sqrt" else ""} ({scale} scaling)')
    return args.lr


def amp_setup(args: argparse.Namespace, device: torch.device) -> Tuple[Callable, Optional[NativeScaler]]:
    """Autocast context factory and loss scaler (float16 on CUDA only) for --amp / --amp-dtype."""
    if not args.amp:
        return nullcontext, None
    dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    scaler = NativeScaler(device=device.type) if device.type == 'cuda' and dtype == torch.float16 else None
    return partial(torch.autocast, device_type=device.type, dtype=dtype), scaler


def output_dir(args: argparse.Namespace, input_size) -> str:
    """Folder for checkpoints, args.yaml and summary.csv: OUTPUT/EXPERIMENT (a dated name if unset)."""
    name = args.experiment or '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model),
                                        str(input_size[-1])])
    return get_outdir(args.output or os.path.join('.', 'output', 'train'), name)
