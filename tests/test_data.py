"""timm_kd.data: stratified training subsets
(--train-fraction), per-sample indices for CRD, mixup off."""

import pytest
import torch

from timm_kd import KDError
from timm_kd.cli.train import parse_args
from timm_kd.cli.train.parse import dataset_options, loader_options
from timm_kd.data import create_datasets, create_loaders, dataset_num_classes
from timm_kd.dataset_views import IndexedTargets, StratifiedSubset, dataset_targets
from timm_kd.runtime import Process
from timm_kd.stream import set_mixup_epoch


class _Labels(torch.utils.data.Dataset):
    def __init__(self, counts):
        self.targets = [c for c, n in enumerate(counts) for _ in range(n)]
        self.transform = None

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.tensor([float(i)]), self.targets[i]


def test_subset_keeps_each_class_share_and_is_seeded():
    data = _Labels([100, 40, 10])
    subset = StratifiedSubset(data, 0.3, seed=0)
    assert torch.bincount(subset.targets).tolist() == [30, 12, 3]
    assert all(data[int(i)][1] == subset[k][1] for k, i in enumerate(subset.indices))
    assert torch.equal(StratifiedSubset(data, 0.3, seed=0).indices, subset.indices)
    assert not torch.equal(StratifiedSubset(data, 0.3, seed=1).indices, subset.indices)
    assert len(StratifiedSubset(data, 0.01, seed=0)) == 3  # at least one image per class
    subset.transform = 'T'
    assert data.transform == 'T'  # timm's loader sets the transform on the subset


def test_fraction_flag_builds_a_subset_and_can_keep_the_step_count(image_folder):
    args, _ = parse_args(
        [image_folder, '--train-fraction', '0.5', '--epochs', '1200', '--train-fraction-keep-steps']
    )
    train, _ = create_datasets(dataset_options(args))
    # 16 per class x 3 classes x 0.5
    assert isinstance(train, StratifiedSubset) and len(train) == 24
    assert dataset_num_classes(train) == 3 and dataset_num_classes(IndexedTargets(train)) == 3
    assert torch.bincount(dataset_targets(train)).tolist() == [8, 8, 8]
    assert args.epochs == 2400
    assert (
        parse_args(
            ['/d', '--train-fraction', '0.3', '--epochs', '1200', '--train-fraction-keep-steps']
        )[0].epochs
        == 4000
    )
    with pytest.raises(KDError, match='--train-fraction must be in'):
        parse_args(['/d', '--train-fraction', '1.5'])


def test_indexed_targets_yield_indices_and_know_every_label(image_folder):
    args, _ = parse_args([image_folder, '--train-fraction', '0.5'])
    train, _ = create_datasets(dataset_options(args))
    indexed = IndexedTargets(train)
    assert indexed[5][1] == 5 and torch.equal(indexed.targets, train.targets)


@pytest.mark.parametrize('prefetcher, indexed', [(False, False), (True, False), (True, True)])
def test_mixup_runs_in_the_training_process_and_turns_off(image_folder, prefetcher, indexed):
    """Mixup/cutmix is the per-batch function in every case (never the prefetcher's
    collate, whose draws would depend on the worker); timm's --mixup-off-epoch stops it."""
    args, _ = parse_args([image_folder, '--mixup', '0.5', '--cutmix', '1.0', '-b', '8', '-j', '0'])
    train, evaluation = create_datasets(dataset_options(args))
    train = IndexedTargets(train) if indexed else train
    cfg = dict(
        input_size=(3, 32, 32),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        interpolation='bilinear',
        crop_pct=1.0,
    )
    loader, _, mixup_fn = create_loaders(
        loader_options(args), train, evaluation, cfg, 3, Process(torch.device('cpu')), prefetcher
    )
    assert mixup_fn.mixup_enabled and not getattr(loader, 'mixup_enabled', False)
    set_mixup_epoch(mixup_fn, 2, off_epoch=2)
    assert not mixup_fn.mixup_enabled
    _, targets = mixup_fn(torch.randn(8, 3, 32, 32), torch.arange(8) % 3)
    # smoothed, not mixed
    assert torch.allclose(targets.max(dim=1).values, torch.tensor(0.9 + 0.1 / 3))
    set_mixup_epoch(mixup_fn, 1, off_epoch=2)  # a stream that starts over mixes again
    assert mixup_fn.mixup_enabled


@pytest.mark.parametrize('flag, split', [('--train-split', 'trian'), ('--val-split', 'valdation')])
def test_a_mistyped_split_is_one_line_listing_the_splits(image_folder, flag, split):
    args, _ = parse_args([image_folder, flag, split])
    with pytest.raises(KDError, match=f"{flag} '{split}' is not a folder .*train, validation"):
        create_datasets(dataset_options(args))


def test_a_split_named_by_a_timm_synonym_is_found(image_folder):
    args, _ = parse_args([image_folder, '--val-split', 'val'])  # the folder is validation/
    train, evaluation = create_datasets(dataset_options(args))
    assert len(evaluation) == 24 and len(train) == 48


def test_validate_refuses_a_missing_split(image_folder):
    from timm_kd.data import create_eval_loader

    config = dict(input_size=(3, 32, 32), interpolation='bilinear', mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(KDError, match="--split 'nosuch' is not a folder"):
        create_eval_loader('', image_folder, 'nosuch', dict(config, crop_pct=1.0))


def test_splits_that_name_other_classes_are_one_line_unless_a_class_map_fixes_them(
    image_folder, tmp_path
):
    import shutil

    root = tmp_path / 'data'
    shutil.copytree(image_folder, root)
    shutil.rmtree(root / 'train' / 'class1')  # every image of one training class moved away
    args, _ = parse_args([str(root)])
    with pytest.raises(KDError, match="missing from 'train': class1.*--class-map"):
        create_datasets(dataset_options(args))
    class_map = tmp_path / 'classes.txt'
    class_map.write_text('class0\nclass1\nclass2\n')
    args, _ = parse_args([str(root), '--class-map', str(class_map)])
    train, evaluation = create_datasets(dataset_options(args))
    assert dataset_num_classes(train) == dataset_num_classes(evaluation) == 3
    (root / 'validation' / 'class3').mkdir()  # an empty class folder stays ignored, as in timm
    (root / 'train' / 'class3').mkdir()
    shutil.copytree(image_folder + '/train/class1', root / 'train' / 'class1')
    create_datasets(dataset_options(parse_args([str(root)])[0]))
