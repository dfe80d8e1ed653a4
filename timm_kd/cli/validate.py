"""Top-1/top-5 of a distilled model, with its own
preprocessing; ImageNet-ReaL and teacher agreement optional.

    python -m timm_kd.validate DATA --model resnet50.vkd  # a registered name (its release weights)
    python -m timm_kd.validate DATA --model hf-hub:ORG/NAME
    python -m timm_kd.validate DATA --model resnet50 --checkpoint last.pth.tar
    python -m timm_kd.validate DATA --model resnet50.vkd --real-labels real.json \
        --teacher beitv2_base_patch16_224.in1k_ft_in22k_in1k

DATA is an ImageFolder root (with --split) or a timm dataset (--dataset torch/cifar100 ...).
Preprocessing is the model's pretrained cfg at its test size, as timm's validate.py resolves it
(input size, crop_pct, interpolation, mean/std); the `.vkd` tags evaluate at 224 px with the paper's
crop. Prints one JSON line (and writes it with --results-file): top1, top5, optionally
real_top1/real_top5 (timm's ImageNet-ReaL, needs the ImageNet val file names) and, with --teacher,
the teacher's top-1 and the top-1 agreement of student and teacher. The JSON can fill the model
card: `python -m timm_kd.hub export ... --results results.json`.
"""

import argparse
import json
from typing import Any, Dict, Optional

import torch
from timm.data import RealLabelsImagenet, resolve_data_config
from timm.models import create_model
from timm.utils import accuracy

from ..data import create_eval_loader, dataset_class_names
from ..errors import KDError, one_line_errors
from ..hub import load_student
from ..run import TeacherSetup, TeacherSpec
from ..teacher import create_teacher


def _create(model_name: str, checkpoint: Optional[str], allow_pickle: bool) -> torch.nn.Module:
    if checkpoint:
        return load_student(checkpoint, model_name, allow_pickle=allow_pickle)
    try:
        return create_model(model_name, pretrained=True).eval()
    # a release-file tag that cannot be fetched: the message names the URL and the fix
    except KDError:
        raise
    except Exception as e:  # huggingface_hub raises several types for a missing file / offline miss
        raise KDError(
            f'no weights for {model_name!r} ({type(e).__name__}); go online (unset HF_HUB_OFFLINE) '
            f'to download them, or pass --checkpoint PATH'
        ) from None


@torch.no_grad()
def validate(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model = _create(args.model, args.checkpoint, args.allow_unsafe_pickle).to(device)
    data_config = resolve_data_config({}, model=model, use_test_size=True)  # as timm's validate.py
    loader = create_eval_loader(
        args.dataset, args.data, args.split, data_config, args.batch_size, args.workers
    )
    k5 = min(5, model.num_classes)
    real = (
        RealLabelsImagenet(
            loader.dataset.filenames(basename=True), real_json=args.real_labels, topk=(1, k5)
        )
        if args.real_labels
        else None
    )
    teacher = None
    if args.teacher:
        spec = TeacherSpec(args.teacher, args.teacher_checkpoint, class_map=args.teacher_class_map)
        setup = TeacherSetup(allow_pickle=args.allow_unsafe_pickle)
        names = dataset_class_names(loader.dataset)
        teacher = create_teacher(spec, data_config, model.num_classes, setup, device, names)
    # top1, top5, teacher top1, agreement: summed on the device, read once
    sums = torch.zeros(4, device=device)
    count = 0
    for images, target in loader:
        images, target = images.to(device), target.to(device)
        output = model(images)
        n = images.shape[0]
        sums[:2] += torch.stack(accuracy(output, target, topk=(1, k5))) * n
        if real is not None:
            real.add_result(output)
        if teacher is not None:
            t = teacher(images).logits.argmax(1)
            sums[2:] += torch.stack([(t == target).sum(), (t == output.argmax(1)).sum()]) * 100
        count += n
    top1, top5, teacher_top1, agreement = (sums / count).tolist()
    result = {
        'model': args.model,
        'checkpoint': args.checkpoint,
        'num_images': count,
        'top1': round(top1, 3),
        'top5': round(top5, 3),
        'data_config': {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()
        },
    }
    if real is not None:
        result.update(
            real_top1=round(real.get_accuracy(1), 3), real_top5=round(real.get_accuracy(k5), 3)
        )
    if teacher is not None:
        result.update(
            teacher=args.teacher, teacher_top1=round(teacher_top1, 3), agreement=round(agreement, 3)
        )
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m timm_kd.validate',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument('data', help='dataset root')
    p.add_argument(
        '--model', required=True, help='timm name with tag, hf-hub:ORG/NAME, or an architecture'
    )
    p.add_argument(
        '--checkpoint',
        default=None,
        help='weights for --model (timm-kd checkpoint, state_dict, ...)',
    )
    p.add_argument('--dataset', default='', help='timm dataset (default: ImageFolder)')
    p.add_argument('--split', default='validation', help="the split's sub-folder")
    p.add_argument(
        '--real-labels', default=None, metavar='JSON', help='ImageNet-ReaL labels file (real.json)'
    )
    p.add_argument(
        '--teacher',
        default=None,
        help='also report the teacher top-1 and student-teacher agreement',
    )
    p.add_argument(
        '--teacher-checkpoint',
        default=None,
        help='weights for --teacher (its own preprocessing is read from them)',
    )
    p.add_argument(
        '--teacher-class-map',
        default=None,
        metavar='FILE|auto',
        help="the teacher's classes that mean each of the data's (as in training)",
    )
    p.add_argument('-b', '--batch-size', type=int, default=128, help='images per batch')
    p.add_argument('-j', '--workers', type=int, default=2, help='data loader workers')
    p.add_argument('--device', default=None, help='default: cuda when present, else cpu')
    p.add_argument('--results-file', default=None, help='write the JSON here too')
    p.add_argument(
        '--allow-unsafe-pickle', action='store_true', help='trusted files only: may run code'
    )
    return p


def main(argv=None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    with one_line_errors():
        result = validate(args)
    line = json.dumps(result)
    print(line)
    if args.results_file:
        with open(args.results_file, 'w') as f:
            f.write(line + '\n')
    return result
