"""A teacher of another label set: its answer over the student's classes (`--teacher-class-map`).

Most teachers were trained on other labels than the data they teach on: ImageNet-1k or -22k
models, a subset such as Imagenette (folders named by WordNet id), a fine label set for a coarse
one. A class map names, for each student class, the teacher classes that mean it. The teacher's
answer is then its logits over the mapped classes, each student class the log-sum-exp of its
teacher classes' logits:

    z'_c = log sum_{j in S_c} exp(z_j)        softmax(z')_c = sum_{j in S_c} p_j / sum_{j in S} p_j

so the teacher's distribution is exactly its own restricted to the mapped classes S (renormalized),
and where several teacher classes map to one student class their probabilities add (at T = 1; a
KD temperature then applies to z' as to any logits). With one teacher class per student class, z'
is the teacher's logits at those classes, bit for bit.

The map comes from a file (one line per student class, in the dataset's class order, naming one or
more teacher classes by index, label name or description, separated by `|`; `#` starts a comment)
or `auto`: by names, the dataset's class names against the teacher's label names (its pretrained
cfg's `label_names`/`label_descriptions`, else timm's ImageNet info for the ImageNet label sets).
WordNet ids and each synonym of a description match, ignoring case, `_` and `-`.
"""

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .errors import KDError

_logger = logging.getLogger(__name__)

AUTO = 'auto'


class ClassMap(nn.Module):
    """Teacher logits (B x C_t) -> logits over the student's classes (B x len(groups)):
    `groups[c]` lists the teacher classes of student class c, their probabilities summed."""

    def __init__(self, groups: Sequence[Sequence[int]]):
        super().__init__()
        self.groups = [tuple(int(j) for j in g) for g in groups]
        source = [j for g in self.groups for j in g]
        target = [c for c, g in enumerate(self.groups) for _ in g]
        self.register_buffer('source', torch.tensor(source, dtype=torch.long), persistent=False)
        self.register_buffer('target', torch.tensor(target, dtype=torch.long), persistent=False)
        self.one_to_one = all(len(g) == 1 for g in self.groups)

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        picked = logits[:, self.source]
        if self.one_to_one:
            return picked
        # log-sum-exp per student class, shifted by each group's own max: exact and stable
        z = picked.float()
        index = self.target.expand_as(z)
        shape = (z.shape[0], self.num_classes)
        top = z.new_full(shape, -torch.inf).scatter_reduce(1, index, z, 'amax')
        summed = z.new_zeros(shape).scatter_add(1, index, (z - top.gather(1, index)).exp())
        return top + summed.log()

    def extra_repr(self) -> str:
        return f'{sum(map(len, self.groups))} teacher classes -> {self.num_classes}'


def _norm(name: str) -> str:
    return ' '.join(name.lower().replace('_', ' ').replace('-', ' ').split())


def teacher_label_names(model: nn.Module) -> Tuple[List[str], List[str]]:
    """(label names, descriptions) of the teacher's classes, by index: its pretrained cfg's, else
    timm's ImageNet info for a model of an ImageNet label set's class count; empty lists when
    neither knows them."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    cfg = getattr(model, 'pretrained_cfg', None) or {}
    names = list(cfg.get('label_names') or [])
    descriptions = list(cfg.get('label_descriptions') or [])
    if isinstance(cfg.get('label_descriptions'), dict):  # timm allows {name: description}
        descriptions = [cfg['label_descriptions'].get(n, '') for n in names]
    if len(names) == model.num_classes:
        return names, descriptions if len(descriptions) == len(names) else []
    subset = infer_imagenet_subset(model)
    if subset is None:
        return [], []
    info = ImageNetInfo(subset)
    return list(info.label_names()), list(info.label_descriptions())


class _Labels:
    """The teacher's classes by name: exact label names first, then description synonyms."""

    def __init__(self, model: nn.Module):
        self.count = model.num_classes
        names, descriptions = teacher_label_names(model)
        self.names, self.descriptions = names, descriptions
        self.by_name: Dict[str, List[int]] = {}
        self.by_synonym: Dict[str, List[int]] = {}
        for j, name in enumerate(names):
            self.by_name.setdefault(_norm(name), []).append(j)
        for j, text in enumerate(descriptions):
            for synonym in text.split(':', 1)[0].split(','):
                if _norm(synonym) and j not in self.by_synonym.get(_norm(synonym), []):
                    self.by_synonym.setdefault(_norm(synonym), []).append(j)

    def find(self, name: str) -> List[int]:
        key = _norm(name)
        return self.by_name.get(key) or self.by_synonym.get(key, [])

    def describe(self, j: int) -> str:
        parts = [known[j] for known in (self.names, self.descriptions) if known and known[j]]
        return f'{j} ({", ".join(parts)})' if parts else str(j)


def match_by_names(
    labels: _Labels, student_names: Sequence[str]
) -> Tuple[List[List[int]], List[str]]:
    """Each student class's teacher classes by name, and the student classes that match none."""
    groups = [labels.find(name) for name in student_names]
    return groups, [n for n, g in zip(student_names, groups) if not g]


def _read_file(path: str, labels: _Labels, student_names: Sequence[str]) -> List[List[int]]:
    try:
        with open(path, encoding='utf-8') as f:
            lines = [line.rstrip('\n') for line in f if not line.lstrip().startswith('#')]
    except (OSError, UnicodeDecodeError) as e:
        raise KDError(
            f'--teacher-class-map {path!r} cannot be read ({e.strerror or e}); pass a text file '
            'of one line per student class, or auto'
        ) from None
    if len(lines) != len(student_names):
        raise KDError(
            f'--teacher-class-map {path!r} has {len(lines)} lines but the data has '
            f"{len(student_names)} classes; give one line per class, in the data's class order "
            f'({", ".join(student_names[:3])}, ...)'
        )
    groups = []
    for number, (line, student) in enumerate(zip(lines, student_names), 1):
        group: List[int] = []
        for item in (i.strip() for i in line.split('|')):
            if not item:
                continue
            if item.isdigit():
                found = [int(item)]
            else:
                found = labels.find(item)
                if len(found) > 1:
                    raise KDError(
                        f'--teacher-class-map {path!r} line {number}: {item!r} names '
                        f'{len(found)} teacher classes ({"; ".join(map(labels.describe, found))}); '
                        'give the index of the one you mean'
                    )
            if not found:
                raise KDError(
                    f'--teacher-class-map {path!r} line {number}: the teacher has no class '
                    f'{item!r}; name it by index (0-{labels.count - 1}), label name or description'
                )
            group += [j for j in found if j not in group]
        groups.append(group)
    return groups


def resolve_class_map(
    value: str, model: nn.Module, student_names: Optional[Sequence[str]], num_classes: int
) -> ClassMap:
    """The `ClassMap` of `--teacher-class-map VALUE` (a file or `auto`) for a teacher `model`
    teaching a student of `num_classes` classes named `student_names` (the dataset's)."""
    labels = _Labels(model)
    named = bool(student_names) and len(student_names) == num_classes
    names = list(student_names) if named else [str(c) for c in range(num_classes)]
    if value == AUTO:
        if not named:
            raise KDError(
                '--teacher-class-map auto matches class names, but this dataset names no '
                'classes; pass a file of one line per class naming its teacher classes'
            )
        if not labels.names and not labels.descriptions:
            raise KDError(
                f'--teacher-class-map auto: the teacher ({model.num_classes} classes) names no '
                'labels (no label_names in its pretrained cfg, not an ImageNet label set); pass '
                'a file of one line per student class naming teacher class indices'
            )
        groups, unmatched = match_by_names(labels, names)
        if unmatched:
            raise KDError(
                f'--teacher-class-map auto: {len(unmatched)} of {num_classes} student classes '
                f'match no teacher label ({", ".join(map(repr, unmatched[:5]))}); pass a file of '
                'one line per class naming their teacher classes'
            )
    elif os.path.isfile(value):
        groups = _read_file(value, labels, names)
    else:
        raise KDError(
            f'--teacher-class-map {value!r}: no such file; pass a file of one line per student '
            'class, or auto'
        )
    for student, group in zip(names, groups):
        if not group:
            raise KDError(
                f'--teacher-class-map: student class {student!r} has no teacher class; name '
                'at least one on its line (a teacher that never saw it cannot teach it)'
            )
        out_of_range = [j for j in group if j >= labels.count]
        if out_of_range:
            raise KDError(
                f'--teacher-class-map: teacher class {out_of_range[0]} (for {student!r}) does '
                f'not exist: the teacher has {labels.count} classes (0-{labels.count - 1})'
            )
    for student, group in zip(names, groups):
        if len(group) > 1 and value == AUTO:
            _logger.info(
                f'--teacher-class-map auto: student class {student!r} takes teacher classes '
                f'{"; ".join(map(labels.describe, group))} (their probabilities add)'
            )
    return ClassMap(groups)


def _say_other_names(model: nn.Module, student_names: Optional[Sequence[str]], name: str):
    """One line when a teacher of the data's class count names its classes (its config's
    `label_names`) otherwise than the data does: class i of one is then not class i of the other."""
    names = list((getattr(model, 'pretrained_cfg', None) or {}).get('label_names') or [])
    if not student_names or len(names) != len(student_names):
        return
    if [_norm(n) for n in names] != [_norm(n) for n in student_names]:
        same_set = sorted(map(_norm, names)) == sorted(map(_norm, student_names))
        _logger.warning(
            f'teacher {name!r} names its classes '
            + ('in another order than' if same_set else 'otherwise than')
            + f' the data ({names[0]!r}, ... against {student_names[0]!r}, ...): its class i is '
            "not the data's class i; pass --teacher-class-map auto to match them by name"
        )


def teacher_class_map(
    value: Optional[str],
    model: nn.Module,
    student_names: Optional[Sequence[str]],
    num_classes: int,
    reads_logits: bool,
    name: str,
) -> Optional[ClassMap]:
    """The map a teacher `name` answers through (None: its own classes), or one line for a
    teacher whose classes the run cannot read: headless (num_classes=0) under a logit loss, or of
    another class count without `--teacher-class-map`. Feature losses take any teacher."""
    if model.num_classes == 0:
        if reads_logits:
            raise KDError(
                f'teacher {name!r} has no classifier (num_classes=0), but its logits are asked '
                'for (a logit loss, deep supervision, a teacher-output cache); distill its '
                'features (--kd-loss fitnet, prelogits, ..., or --kd-distill-type feature), or '
                'use a teacher with a head'
            )
        return None
    if value:
        return resolve_class_map(value, model, student_names, num_classes)
    if not reads_logits:
        return None
    if model.num_classes == num_classes:
        _say_other_names(model, student_names, name)
        return None
    hint = ''
    if student_names and len(student_names) == num_classes:
        groups, unmatched = match_by_names(_Labels(model), student_names)
        if not unmatched:
            hint = f' (auto matches all {num_classes} classes by name)'
    raise KDError(
        f'teacher {name!r} predicts {model.num_classes} classes but the student has '
        f"{num_classes}; map its classes onto the data's with --teacher-class-map FILE|auto"
        f'{hint}, or use a teacher trained on this label set'
    )
