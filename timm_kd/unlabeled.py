"""Distillation from unlabeled images: they get the KD terms only, never the hard-label loss.

SSLD (Cui et al., 2021) and "Knowledge distillation: a good teacher is patient and consistent"
(Beyer et al., 2022) distill on images nobody labeled, with only the teacher's targets.
`--unlabeled-data PATH` adds such images to the training stream: PATH is a folder of images (any
layout, no classes) or a timm dataset spec (`torch/fashion_mnist`, read from the data root, its
labels ignored). `--unlabeled-ratio R` takes R unlabeled images per labeled one each epoch (drawn
without replacement while they last, seeded; all of them when unset). Unlabeled samples carry the
label -1; the training loop turns that into a mask, and `DistillationTask` computes the hard-label
loss on the labeled rows only (after mixup/cutmix, on the rows whose both sources are labeled), each
weighing what it would in a fully labeled batch (the loss is their sum over the batch size), while
every KD term sees the whole batch. With `--train-fraction 0` and `--ori-loss-weight 0` nothing
labeled is needed at all.
"""

import logging
import os
from typing import Any, Optional, Sequence

import torch
from PIL import Image

from .dataset_views import DatasetView, dataset_targets
from .errors import KDError, flat
from .losses import get_kd_loss_class, list_kd_losses

UNLABELED = -1
_logger = logging.getLogger(__name__)
_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')


class ImageFiles(torch.utils.data.Dataset):
    """Every image file under `root` (recursively, sorted), each with the label -1."""

    def __init__(self, root: str, img_mode: str = 'RGB'):
        self.files = sorted(
            os.path.join(d, f)
            for d, _, names in os.walk(root)
            for f in names
            if f.lower().endswith(_EXTENSIONS)
        )
        if not self.files:
            raise KDError(
                f'--unlabeled-data {root!r} holds no images ({", ".join(_EXTENSIONS)}); pass a '
                f'folder of images or a timm dataset spec'
            )
        self.img_mode, self.transform = img_mode, None
        self.targets = torch.full((len(self.files),), UNLABELED)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            image = Image.open(self.files[index]).convert(self.img_mode)
        except (OSError, SyntaxError, ValueError) as e:  # PIL: unreadable, truncated, not an image
            raise KDError(
                f'cannot read unlabeled image {self.files[index]} '
                f'({flat(e, 100)}); remove or replace it'
            ) from None
        return (self.transform(image) if self.transform is not None else image), UNLABELED


class WithUnlabeled(DatasetView):
    """The labeled set followed by `count` images of
    the unlabeled one (a seeded draw), labeled -1."""

    def __init__(
        self, labeled: Optional[Any], unlabeled: Any, ratio: Optional[float], seed: int = 0
    ):
        self.dataset, self.unlabeled = labeled, unlabeled
        n_labeled = len(labeled) if labeled is not None else 0
        count = len(unlabeled) if ratio is None else round(ratio * n_labeled)
        if count < 1:
            raise KDError(
                f'--unlabeled-ratio {ratio} keeps no unlabeled image; pass a ratio > 0 or leave it '
                'unset'
            )
        if count > len(unlabeled):
            _logger.info(
                f'--unlabeled-ratio {ratio}: {count} unlabeled images per epoch beside {n_labeled} '
                f'labeled ones, drawn from {len(unlabeled)} '
                f'(each about {count / len(unlabeled):.0f} times per epoch); '
                'the epoch is that much longer'
            )
        g = torch.Generator().manual_seed(seed)
        draws = [
            torch.randperm(len(unlabeled), generator=g) for _ in range(-(-count // len(unlabeled)))
        ]
        self.picks = torch.cat(draws)[:count]
        self.n_labeled = n_labeled
        labels = (
            dataset_targets(labeled) if labeled is not None else torch.empty(0, dtype=torch.long)
        )
        self.targets = torch.cat([labels, torch.full((count,), UNLABELED)])

    @property
    def transform(self):
        return self.unlabeled.transform

    @transform.setter
    def transform(self, value) -> None:
        self.unlabeled.transform = value
        if self.dataset is not None:
            self.dataset.transform = value

    def __len__(self) -> int:
        return self.n_labeled + len(self.picks)

    def __getitem__(self, index: int):
        if index < self.n_labeled:
            return self.dataset[index]
        return self.unlabeled[int(self.picks[index - self.n_labeled])][0], UNLABELED


def check_unlabeled_run(has_teacher: bool, losses: Sequence[Any]) -> None:
    """One line for runs that cannot use unlabeled images: no teacher, or a loss that needs every
    image's label or index (`needs_labels` / `needs_index` of `timm_kd.run.LossSpec`)."""
    if not has_teacher:
        raise KDError(
            '--unlabeled-data needs a teacher (--teacher or --teacher-cache): unlabeled images are '
            'trained on with the KD terms only'
        )
    for spec in losses:
        for name in spec.needs('needs_labels') + spec.needs('needs_index'):
            usable = [
                n for n in list_kd_losses()
                if not (get_kd_loss_class(n).needs_labels or get_kd_loss_class(n).needs_index)
            ]  # fmt: skip
            raise KDError(
                f"--kd-loss {name} uses each image's label, which unlabeled images lack; "
                f'use one of {", ".join(usable)} with --unlabeled-data'
            )


def labeled_mask(known: torch.Tensor, mixed: bool) -> torch.Tensor:
    """Rows whose hard label is known after mixup/cutmix: their own and, when mixing
    is on (timm pairs row i with row n-1-i in every mode), their partner's too."""
    return known & known.flip(0) if mixed else known
