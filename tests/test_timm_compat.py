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
