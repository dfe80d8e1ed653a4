"""Guards on the timm API timm-kd builds on: these fail loudly when a timm release changes it."""

import inspect

import timm
from packaging.version import Version
from timm.task import TrainingTask, resume_task_checkpoint
from timm.utils import CheckpointSaver


def test_timm_version_is_in_the_tested_range():
    assert Version('1.0.31') <= Version(timm.__version__) < Version('1.1'), timm.__version__


def test_training_task_hooks_we_rely_on_exist():
    for name in (
        'prepare_distributed',
        'compile',
        'setup_ema',
        'update_ema',
        'has_ema',
        'get_eval_model',
        'get_checkpoint_state',
        'load_checkpoint_state',
        'no_sync',
        'create_evaluator',
        'get_clip_parameters',
    ):
        assert callable(getattr(TrainingTask, name)), name


def test_checkpoint_saver_and_resume_take_a_task():
    assert 'task' in inspect.signature(CheckpointSaver.__init__).parameters
    assert 'weights_only' in inspect.signature(resume_task_checkpoint).parameters


def test_classification_loss_factory_arguments():
    from timm.loss import create_classification_loss

    params = inspect.signature(create_classification_loss).parameters
    assert {
        'loss_type',
        'smoothing',
        'soft_targets',
        'bce_target_thresh',
        'bce_sum',
        'pos_weight',
    } <= set(params)


def test_randaugment_at_its_top_magnitude_posterizes_on_every_pillow():
    """timm's increasing RandAugment keeps 0 bits at magnitude 10 (`rand-m9-mstd0.5-inc1` draws it
    about once in 44 ops); Pillow 13 refuses 0 bits. Importing timm_kd keeps Pillow 12's result, a
    black image, and leaves every other bit count to timm."""
    import numpy as np
    from PIL import Image, ImageOps
    from timm.data.auto_augment import AugmentOp, rand_augment_transform

    import timm_kd  # noqa: F401  (the import routes timm's Posterize ops)

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    black = AugmentOp('PosterizeIncreasing', prob=1.0, magnitude=10)(img)
    assert black.mode == 'RGB' and black.size == img.size and not np.asarray(black).any()
    two_bits = AugmentOp('PosterizeIncreasing', prob=1.0, magnitude=5)(img)  # 4 - int(2.0) = 2
    assert np.array_equal(np.asarray(two_bits), np.asarray(ImageOps.posterize(img, 2)))
    augment = rand_augment_transform('rand-m10-n3-inc1', {})
    for _ in range(100):  # three ops at magnitude 10 per image: Posterize comes up often
        augment(img)
