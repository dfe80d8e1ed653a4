"""What distillation did: how often the student agrees with its teacher,
how calibrated both are, and where in the network they look alike.

    python -m timm_kd.diagnose DATA --teacher NAME [--teacher-checkpoint P]
        --student NAME [--student-checkpoint P] --out DIR
        [--dataset torch/fashion_mnist --split test --batch-size 256 --cka-images 512 ...]

Writes DIR/diagnostics.json and three PNGs: top-1 of both, their top-1 agreement, the mean
KL(p_teacher || p_student) at T=1, the expected calibration error (ECE, 15 equal-width confidence
bins) of both with reliability diagrams (`calibration.png`), the agreement per true class
(`agreement_per_class.png`), and the linear CKA similarity (Kornblith et al., 2019) between every
student stage and every teacher stage (`cka.png`), from the globally pooled stage features of the
first `--cka-images` images, through timm's `forward_intermediates` (any architecture). The
VanillaKD paper (Hao et al., 2023) argues from such measurements; here they are one command. The
student is preprocessed as its checkpoint records; the teacher sees the same images through its own
normalization and size (`InputAdapter`), as in training.
"""

import argparse
import json
import os
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from timm.models import create_model
from timm.utils import ParseKwargs

from ..data import create_eval_loader, dataset_class_names
from ..errors import KDError, one_line_errors
from ..features import forward_features, num_stages
from ..hub import load_student
from ..run import TeacherSetup, TeacherSpec, freeze
from ..teacher import create_teacher
from .plots import pyplot


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n examples, (n, p) and (n, q): 1 for identical
    ones, and invariant to orthogonal transforms and isotropic scaling. ||Yc^T Xc||_F^2 / (||Xc^T
    Xc||_F ||Yc^T Yc||_F)."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    cross = (y.T @ x).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


def expected_calibration_error(
    probs: torch.Tensor, target: torch.Tensor, bins: int = 15
) -> Dict[str, Any]:
    """ECE with `bins` equal-width confidence bins: sum over bins of |accuracy - confidence| x
    the bin's share; also each bin's accuracy, confidence and count (the reliability diagram)."""
    confidence, prediction = probs.max(1)
    correct = (prediction == target).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    ece, table = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if lo == 0:
            inside |= confidence == 0
        count = int(inside.sum())
        if count:
            acc, conf = float(correct[inside].mean()), float(confidence[inside].double().mean())
            ece += abs(acc - conf) * count / len(target)
            table.append(
                dict(low=float(lo), high=float(hi), count=count, accuracy=acc, confidence=conf)
            )
    return {'ece': ece, 'bins': table}


@torch.no_grad()
def diagnose(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if args.student_checkpoint:
        student = load_student(
            args.student_checkpoint, args.student, allow_pickle=args.allow_unsafe_pickle
        )
    else:
        student = create_model(args.student, pretrained=True, num_classes=args.num_classes or 1000)
    student = student.to(device).eval()
    config = resolve_data_config(vars(args), model=student, use_test_size=True)
    loader = create_eval_loader(
        args.dataset, args.data, args.split, config, args.batch_size, args.workers
    )
    spec = TeacherSpec(args.teacher, args.teacher_checkpoint, kwargs=freeze(args.teacher_kwargs),
                       class_map=args.teacher_class_map)  # fmt: skip
    setup = TeacherSetup(allow_pickle=args.allow_unsafe_pickle)
    names = dataset_class_names(loader.dataset)
    teacher = create_teacher(spec, config, student.num_classes, setup, device, names)
    s_stages, t_stages = list(range(num_stages(student))), list(range(num_stages(teacher.model)))
    logits: Dict[str, List[torch.Tensor]] = {'student': [], 'teacher': [], 'target': []}
    pooled: Dict[str, List[List[torch.Tensor]]] = {
        'student': [[] for _ in s_stages],
        'teacher': [[] for _ in t_stages],
    }
    seen = 0
    for images, target in loader:
        if args.max_images and seen >= args.max_images:
            break
        images, target = images.to(device), target.to(device)
        if seen < args.cka_images:  # one pass gives the logits and the stage features
            s_logits, s_feat = forward_features(student, images, s_stages)
            t_out = teacher(images, stages=t_stages)
            for name, maps in (('student', s_feat.maps), ('teacher', t_out.features.maps)):
                for store, m in zip(pooled[name], maps):
                    store.append(
                        (m.float().mean((2, 3)) if m.ndim == 4 else m.float().flatten(1)).cpu()
                    )
            t_logits = t_out.logits
        else:
            s_logits, t_logits = student(images), teacher(images).logits
        logits['student'].append(s_logits.float().cpu())
        logits['teacher'].append(t_logits.float().cpu())
        logits['target'].append(target.cpu())
        seen += images.shape[0]
    s, t, y = (torch.cat(logits[k]) for k in ('student', 'teacher', 'target'))
    if not len(y):
        raise KDError(
            f'no images in {args.data!r} split {args.split!r}; pass --split / --dataset of your '
            'data'
        )
    p_s, p_t = s.softmax(1), t.softmax(1)
    agree = s.argmax(1) == t.argmax(1)
    per_class = {int(c): round(float(agree[y == c].float().mean()) * 100, 2) for c in y.unique()}
    n_cka = min(args.cka_images, len(y))
    feats = {k: [torch.cat(v)[:n_cka] for v in pooled[k]] for k in pooled}
    cka = [[round(linear_cka(fs, ft), 4) for ft in feats['teacher']] for fs in feats['student']]
    calibration = {
        name: expected_calibration_error(p, y) for name, p in (('student', p_s), ('teacher', p_t))
    }
    return {
        'student': args.student,
        'teacher': args.teacher,
        'images': len(y),
        'student_top1': round(float((s.argmax(1) == y).float().mean()) * 100, 3),
        'teacher_top1': round(float((t.argmax(1) == y).float().mean()) * 100, 3),
        'agreement_top1': round(float(agree.float().mean()) * 100, 3),
        'kl_teacher_student': round(float(F.kl_div(p_s.log(), p_t, reduction='batchmean')), 5),
        'student_ece': round(calibration['student']['ece'] * 100, 3),
        'teacher_ece': round(calibration['teacher']['ece'] * 100, 3),
        'agreement_per_class': per_class,
        'cka_images': n_cka,
        'cka': cka,
        'calibration_bins': {k: v['bins'] for k, v in calibration.items()},
    }


def plot(result: Dict[str, Any], out: str) -> List[str]:
    """cka.png, agreement_per_class.png and calibration.png from a `diagnose` result."""
    plt = pyplot()

    paths = []

    def save(fig, name):
        path = os.path.join(out, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(4 + 0.4 * len(result['cka'][0]), 3 + 0.4 * len(result['cka'])))
    image = ax.imshow(result['cka'], vmin=0, vmax=1, cmap='viridis', origin='lower')
    ax.set(
        xlabel=f'teacher stage ({result["teacher"]})',
        ylabel=f'student stage ({result["student"]})',
        title=f'linear CKA, {result["cka_images"]} images',
    )
    for i, row in enumerate(result['cka']):
        for j, v in enumerate(row):
            ax.text(
                j,
                i,
                f'{v:.2f}',
                ha='center',
                va='center',
                color='w' if v < 0.6 else 'k',
                fontsize=8,
            )
    fig.colorbar(image)
    save(fig, 'cka.png')

    classes = list(result['agreement_per_class'])
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(classes)), 3))
    ax.bar(range(len(classes)), list(result['agreement_per_class'].values()))
    ax.set(
        xticks=range(len(classes)),
        xticklabels=classes,
        xlabel='true class',
        ylabel='top-1 agreement (%)',
        ylim=(0, 100),
        title=f'student-teacher agreement, {result["agreement_top1"]:.1f}% overall',
    )
    save(fig, 'agreement_per_class.png')

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], 'k--', lw=1)
    for name, bins in result['calibration_bins'].items():
        ax.plot(
            [b['confidence'] for b in bins],
            [b['accuracy'] for b in bins],
            'o-',
            label=f'{name} (ECE {result[name + "_ece"]:.2f}%)',
        )
    ax.set(xlabel='confidence', ylabel='accuracy', title='reliability')
    ax.legend()
    save(fig, 'calibration.png')
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m timm_kd.diagnose',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument('data', help='dataset root')
    p.add_argument('--teacher', required=True)
    p.add_argument('--teacher-checkpoint', default=None, help='weights for --teacher')
    p.add_argument(
        '--teacher-class-map', default=None, metavar='FILE|auto',
        help="the teacher's classes that mean each of the data's (as in training)",
    )  # fmt: skip
    p.add_argument(
        '--teacher-kwargs',
        nargs='*',
        default={},
        action=ParseKwargs,
        metavar='KEY=VALUE',
        help="timm.create_model keyword arguments for the teacher (as training's --teacher-kwargs)",
    )
    p.add_argument(
        '--student',
        required=True,
        help='timm architecture (with --student-checkpoint) or pretrained name',
    )
    p.add_argument('--student-checkpoint', default=None, help='weights for --student')
    p.add_argument('--out', required=True, help='folder for diagnostics.json and the PNGs')
    p.add_argument('--dataset', default='', help='timm dataset (default: ImageFolder)')
    p.add_argument('--split', default='validation', help="the split's sub-folder")
    p.add_argument('--num-classes', type=int, default=None, help='default: from the data')
    p.add_argument(
        '--input-size',
        type=int,
        nargs=3,
        default=None,
        metavar='C H W',
        help="the student's input (default: its checkpoint's)",
    )
    p.add_argument(
        '--mean',
        type=float,
        nargs='+',
        default=None,
        help="the student's normalization (default: its checkpoint's)",
    )
    p.add_argument(
        '--std',
        type=float,
        nargs='+',
        default=None,
        help="the student's normalization (default: its checkpoint's)",
    )
    p.add_argument(
        '--crop-pct',
        type=float,
        default=None,
        help="the student's center crop (default: its checkpoint's)",
    )
    p.add_argument('-b', '--batch-size', type=int, default=256, help='images per batch')
    p.add_argument('-j', '--workers', type=int, default=2, help='data loader workers')
    p.add_argument('--max-images', type=int, default=0, help='stop after this many images (0: all)')
    p.add_argument(
        '--cka-images', type=int, default=512, help='images whose stage features CKA compares'
    )
    p.add_argument('--device', default=None, help='default: cuda when present, else cpu')
    p.add_argument(
        '--allow-unsafe-pickle', action='store_true', help='trusted files only: may run code'
    )
    return p


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    with one_line_errors():
        pyplot()  # before the pass over the data: the figures need matplotlib
        if args.cka_images < 2:
            raise KDError(
                f'--cka-images {args.cka_images}: CKA compares stages over at least 2 images (one '
                'gives 0/0); pass 2 or more'
            )
        result = diagnose(args)
    os.makedirs(args.out, exist_ok=True)
    result['figures'] = [os.path.basename(f) for f in plot(result, args.out)]
    with open(os.path.join(args.out, 'diagnostics.json'), 'w') as f:
        json.dump(result, f, indent=1)
    print(
        json.dumps(
            {
                k: v
                for k, v in result.items()
                if k not in ('cka', 'calibration_bins', 'agreement_per_class')
            }
        )
    )
    return result
