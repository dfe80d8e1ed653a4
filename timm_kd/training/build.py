"""What a training run starts from, built from its typed run alone: the process-wide switches, the
datasets, the students' models, the derived facts (class count, data config) and the training
stream. `student_job` sets up each student's training state; `loop` trains them."""

import dataclasses
import importlib
from dataclasses import dataclass, replace
from typing import Any, List, Optional, Tuple

import torch
from timm.data import AugMixDataset, resolve_data_config
from timm.layers import set_fast_norm
from timm.utils import set_jit_fuser

from ..data import create_datasets, create_loaders, dataset_num_classes
from ..dataset_views import IndexedTargets
from ..errors import KDError
from ..replay import make_replayable, replayable_views
from ..run import ProcessSpec, RunSpec, freeze
from ..runtime import Process
from ..stream import TrainingStream
from .student_model import DTYPES, create_student


def setup_process(spec: ProcessSpec) -> None:
    """Process-wide switches of timm's train.py: device backend modules, jit fuser, fast norm."""
    for module in spec.device_modules:
        importlib.import_module(module)
    if spec.fuser:
        set_jit_fuser(spec.fuser)
    if spec.fast_norm:
        set_fast_norm()


def training_stream(
    setup: 'Setup', process: Process, needs_index: bool = False
) -> Tuple[TrainingStream, Optional[Any], bool]:
    """The training stream as training and `cache build` both read it, built from the typed run
    alone: timm's loaders over replayable views (`timm_kd.replay`) with timm's prefetcher unless
    --no-prefetcher, mixup/cutmix until --mixup-off-epoch, sample indices as targets when a loss
    keeps per-sample state.

    Returns the stream, the eval loader (None without an eval set) and whether the views replay
    (not with scheduled batch sizes, `--train-img-sizes`).
    """
    run = setup.run
    train_set = IndexedTargets(setup.train_set) if needs_index else setup.train_set
    if run.views.aug_splits > 1:  # AugMix: each image's views, augmented as timm does
        if needs_index or run.data.unlabeled_data:
            raise KDError(
                f'--aug-splits {run.views.aug_splits} puts several views of an image in a batch; '
                'losses that keep per-sample state (crd) and --unlabeled-data need one view each'
            )
        train_set = AugMixDataset(train_set, num_splits=run.views.aug_splits)
    dtype = DTYPES[run.process.model_dtype] if run.process.model_dtype else None
    loader, eval_loader, mixup_fn = create_loaders(
        run.views,
        replayable_views(train_set, run.process.seed, process.rank),
        setup.eval_set,
        run.student_data_config,
        run.num_classes,
        process,
        prefetcher=run.process.prefetcher,
        img_dtype=dtype or torch.float32,
    )
    replayable = make_replayable(loader, process.rank)
    stream = TrainingStream(
        loader, mixup_fn, device=process.device, rank=process.rank, process=run.process,
        labels=train_set.targets.to(process.device) if needs_index else None,
        unlabeled=bool(run.data.unlabeled_data), views=run.views,
    )  # fmt: skip
    return stream, eval_loader, replayable


@dataclass
class Setup:
    """What training and `cache build` both start from: the datasets, the students (only for the
    data config, in a cache build) and the typed run, resolved."""

    run: RunSpec
    train_set: Any
    eval_set: Optional[Any]
    models: List[torch.nn.Module]


def setup_run(run: RunSpec, process: Process, with_eval: bool = True) -> Setup:
    """Datasets, the students, and the run with its derived facts resolved: the class count
    (--num-classes, else the data's; a student's model may fix it) and the first student's data
    config (its pretrained cfg under the preprocessing flags, as timm resolves it)."""
    data = run.data if with_eval else replace(run.data, val_split='')
    train_set, eval_set = create_datasets(data, run.in_chans)
    num_classes = run.num_classes or dataset_num_classes(train_set)
    models = []
    for spec in run.students:
        models.append(create_student(spec, run, process, num_classes))
        num_classes = models[-1].num_classes
    flags = dataclasses.asdict(run.preprocess)
    data_config = resolve_data_config(flags, model=models[0], verbose=process.is_primary)
    run = replace(run, num_classes=num_classes, data_config=freeze(data_config))
    return Setup(run, train_set, eval_set, models)
