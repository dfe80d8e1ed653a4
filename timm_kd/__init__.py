"""timm-kd: knowledge distillation for timm image
classifiers, with VanillaKD's recipes (Hao et al., 2023)."""

from .cli.train.parse import parse_run
from .compat import patch_timm_augmentations
from .errors import KDError
from .features import Features, FeatureSpec
from .hub import load_student
from .losses import create_kd_loss, list_kd_losses, register_kd_loss
from .pretrained import add_pretrained_tag, register_vkd_checkpoints
from .run import LossSpec, RunSpec, StudentSpec, TeacherSetup, TeacherSpec, freeze
from .student import KDStudent, create_kd_student
from .task import DistillationTask
from .teacher import InputAdapter, Teacher, TeacherOutput, create_teacher
from .training import fit

__version__ = '0.1.0'

register_vkd_checkpoints()  # timm.create_model('resnet50.vkd', pretrained=True) and friends
patch_timm_augmentations()  # timm's RandAugment at magnitude 10 on Pillow 13

__all__ = [
    'KDError',
    'create_kd_loss',
    'list_kd_losses',
    'register_kd_loss',
    'DistillationTask',
    'Features',
    'FeatureSpec',
    'KDStudent',
    'create_kd_student',
    'add_pretrained_tag',
    'register_vkd_checkpoints',
    'InputAdapter',
    'Teacher',
    'TeacherOutput',
    'create_teacher',
    'load_student',
    'parse_run',
    'fit',
    'RunSpec',
    'StudentSpec',
    'TeacherSpec',
    'TeacherSetup',
    'LossSpec',
    'freeze',
    '__version__',
]
