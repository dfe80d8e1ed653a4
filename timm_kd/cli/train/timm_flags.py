"""Every flag of timm's train.py, with timm's name, default and meaning.

A command line or `args.yaml` written for timm's train.py therefore trains what timm's would. The
list follows timm's train.py at the version matching our timm pin (timm 1.0.31 ships no train.py;
its loader API is that of the newest train.py we read, 1.0.29.dev0, 2026-08-08);
`tests/data/timm_train_flags.json` holds that flag list and a test parses every entry.

A few flags cannot apply to distillation. They are accepted, so configs load, and refused with one
line saying why as soon as they are used (`refuse_unsupported`).
"""

import argparse
from typing import Any, Callable, Dict, Tuple

from timm.utils import ParseKwargs

from ...errors import KDError
from .declare import NEITHER, REFUSED, STUDENT, TEACHER


def _add_dataset(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Dataset')
    p.add_argument(
        'data',
        nargs='?',
        metavar='DIR',
        help='dataset root (positional form of --data-dir)',
        role=NEITHER,
        shared=True,
    )
    g.add_argument('--data-dir', metavar='DIR', help='dataset root', role=NEITHER, shared=True)
    g.add_argument(
        '--dataset',
        metavar='NAME',
        default='',
        help='dataset as "<type>/<name>" (torch/cifar100, hfds/..., wds/...); ImageFolder/ImageTar '
        'if empty',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--train-split',
        metavar='NAME',
        default='train',
        help='training split (sub-folder)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--val-split',
        metavar='NAME',
        default='validation',
        help='validation split; empty: no validation, the best checkpoint follows the training '
        'loss',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--train-num-samples',
        default=None,
        type=int,
        metavar='N',
        help='number of training samples, for iterable datasets',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--val-num-samples',
        default=None,
        type=int,
        metavar='N',
        help='number of validation samples, for iterable datasets',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--dataset-download',
        action='store_true',
        default=False,
        help='download torch/ and tfds/ datasets that can be downloaded',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--class-map',
        default='',
        type=str,
        metavar='FILENAME',
        help='class name to index mapping file',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--input-img-mode',
        default=None,
        type=str,
        help='PIL mode images are converted to (RGB for 3 input channels, L for 1 if unset)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--input-key',
        default=None,
        type=str,
        help='dataset key of the image (hfds, wds)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--target-key',
        default=None,
        type=str,
        help='dataset key of the label (hfds, wds)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--dataset-trust-remote-code',
        action='store_true',
        default=False,
        help='let a Hugging Face dataset run code from its repository',
        role=NEITHER,
        shared=True,
    )


def _add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Model (the student)')
    g.add_argument(
        '--model',
        default='resnet50',
        type=str,
        metavar='MODEL',
        help='student architecture',
        role=TEACHER,
    )
    g.add_argument(
        '--pretrained',
        action='store_true',
        default=False,
        help='start the student from pretrained weights',
        role=STUDENT,
    )
    g.add_argument(
        '--pretrained-path',
        default=None,
        type=str,
        metavar='PATH',
        help='load this file as the pretrained weights (the classifier is adapted to '
        '--num-classes)',
        role=STUDENT,
    )
    g.add_argument(
        '--initial-checkpoint',
        default='',
        type=str,
        metavar='PATH',
        help='student weights to load after creation',
        role=STUDENT,
    )
    g.add_argument(
        '--resume',
        default='',
        type=str,
        metavar='PATH',
        help='resume the full training state from a checkpoint; "auto": '
        'OUTPUT/EXPERIMENT/last.pth.tar '
        'when it exists',
        role=NEITHER,
    )
    g.add_argument(
        '--no-resume-opt',
        action='store_true',
        default=False,
        help='on --resume, restore the weights but not the optimizer and loss scaler',
        role=STUDENT,
    )
    g.add_argument(
        '--num-classes',
        type=int,
        default=None,
        metavar='N',
        help='number of classes (read from the dataset if unset)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--gp',
        default=None,
        type=str,
        metavar='POOL',
        help='global pool type (fast, avg, max, avgmax, ...)',
        role=STUDENT,
    )
    g.add_argument(
        '--img-size',
        type=int,
        default=None,
        metavar='N',
        help='square input size',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--in-chans',
        type=int,
        default=None,
        metavar='N',
        help='input channels (3 if unset)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--input-size',
        default=None,
        nargs=3,
        type=int,
        metavar='N',
        help='input size as C H W',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--crop-pct',
        default=None,
        type=float,
        metavar='N',
        help='center crop fraction for validation',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--mean',
        type=float,
        nargs='+',
        default=None,
        metavar='MEAN',
        help='normalization mean',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--std',
        type=float,
        nargs='+',
        default=None,
        metavar='STD',
        help='normalization std',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--interpolation',
        default='',
        type=str,
        metavar='NAME',
        help='resize interpolation',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '-b',
        '--batch-size',
        type=int,
        default=128,
        metavar='N',
        help='batch size per process',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '-vb',
        '--validation-batch-size',
        type=int,
        default=None,
        metavar='N',
        help='validation batch size (--batch-size if unset)',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--channels-last',
        action='store_true',
        default=False,
        help='channels_last memory layout (student and teacher)',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--fuser',
        default='',
        type=str,
        help="TorchScript fuser: '', te, old or nvfuser",
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--grad-accum-steps',
        type=int,
        default=1,
        metavar='N',
        help='batches whose gradients are summed before each optimizer step',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--grad-checkpointing',
        action='store_true',
        default=False,
        help='gradient checkpointing through the student blocks',
        role=STUDENT,
    )
    g.add_argument(
        '--fast-norm',
        action='store_true',
        default=False,
        help="timm's experimental fast norm layers",
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--model-kwargs',
        nargs='*',
        default={},
        action=ParseKwargs,
        metavar='KEY=VALUE',
        help='extra timm.create_model arguments of the student',
        role=STUDENT,
    )
    g.add_argument(
        '--head-init-scale',
        default=None,
        type=float,
        help='multiply the classifier weights by this',
        role=STUDENT,
    )
    g.add_argument(
        '--head-init-bias',
        default=None,
        type=float,
        help='set the classifier bias to this',
        role=STUDENT,
    )
    g.add_argument(
        '--torchcompile-mode',
        type=str,
        default=None,
        metavar='MODE',
        help='torch.compile mode of --torchcompile and --teacher-compile (e.g. reduce-overhead)',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--torchscript',
        action='store_true',
        default=False,
        help='torch.jit.script the student',
        role=STUDENT,
    )
    g.add_argument(
        '--torchcompile',
        nargs='?',
        type=str,
        default=None,
        const='inductor',
        metavar='BACKEND',
        help='torch.compile student, KD parts and teacher with this backend',
        role=STUDENT,
        shared=True,
    )


def _add_device(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Device')
    g.add_argument(
        '--device',
        default=None,
        type=str,
        help='cuda, cpu, ...; CUDA when available, else the CPU, if unset',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='mixed precision (autocast)',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--amp-dtype',
        default='float16',
        type=str,
        choices=['float16', 'bfloat16'],
        help='autocast dtype of --amp',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--model-dtype',
        default=None,
        type=str,
        choices=['float32', 'float16', 'bfloat16'],
        help='train the student in this dtype (no AMP)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--no-ddp-bb',
        action='store_true',
        default=False,
        help='DDP without broadcast buffers',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--synchronize-step',
        action='store_true',
        default=False,
        help='synchronize the device after every optimizer step',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--local_rank',
        '--local-rank',
        default=0,
        type=int,
        help='set by the launcher',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--device-modules',
        default=None,
        type=str,
        nargs='+',
        metavar='MODULE',
        help='modules to import for an out-of-tree device backend',
        role=NEITHER,
        shared=True,
    )


def _add_optimizer(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Optimizer')
    g.add_argument(
        '--opt',
        default='sgd',
        type=str,
        metavar='OPTIMIZER',
        help='optimizer name (timm.optim)',
        role=STUDENT,
    )
    g.add_argument(
        '--opt-eps',
        default=None,
        type=float,
        metavar='EPSILON',
        help='optimizer epsilon',
        role=STUDENT,
    )
    g.add_argument(
        '--opt-betas',
        default=None,
        type=float,
        nargs='+',
        metavar='BETA',
        help='optimizer betas',
        role=STUDENT,
    )
    g.add_argument(
        '--momentum', type=float, default=0.9, metavar='M', help='optimizer momentum', role=STUDENT
    )
    g.add_argument('--weight-decay', type=float, default=2e-5, help='weight decay', role=STUDENT)
    g.add_argument(
        '--clip-grad',
        type=float,
        default=None,
        metavar='NORM',
        help='clip gradients at this value',
        role=STUDENT,
    )
    g.add_argument(
        '--clip-mode',
        type=str,
        default='norm',
        choices=['norm', 'value', 'agc'],
        help='gradient clipping: by norm, by value, or adaptive (agc, the classifier excluded)',
        role=STUDENT,
    )
    g.add_argument(
        '--layer-decay',
        type=float,
        default=None,
        help='layer-wise learning-rate decay',
        role=STUDENT,
    )
    g.add_argument(
        '--layer-decay-min-scale',
        type=float,
        default=0,
        help='lower bound of the layer-wise lr scale',
        role=STUDENT,
    )
    g.add_argument(
        '--layer-decay-no-opt-scale',
        type=float,
        default=None,
        help='layer-wise scale below which a layer is frozen',
        role=STUDENT,
    )
    g.add_argument(
        '--opt-kwargs',
        nargs='*',
        default={},
        action=ParseKwargs,
        metavar='KEY=VALUE',
        help='extra optimizer arguments',
        role=STUDENT,
    )


def _add_schedule(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Learning-rate schedule')
    g.add_argument(
        '--sched',
        type=str,
        default='cosine',
        metavar='SCHEDULER',
        help='lr scheduler (timm.scheduler)',
        role=STUDENT,
    )
    g.add_argument(
        '--sched-on-updates',
        action='store_true',
        default=False,
        help='step the scheduler after every update instead of every epoch',
        role=STUDENT,
    )
    g.add_argument(
        '--lr',
        type=float,
        default=None,
        metavar='LR',
        help='learning rate; if unset, --lr-base scaled to the global batch',
        role=STUDENT,
    )
    g.add_argument(
        '--lr-base',
        type=float,
        default=0.1,
        metavar='LR',
        help='learning rate at --lr-base-size',
        role=STUDENT,
    )
    g.add_argument(
        '--lr-base-size',
        type=int,
        default=256,
        metavar='DIV',
        help='global batch of --lr-base',
        role=STUDENT,
    )
    g.add_argument(
        '--lr-base-scale',
        type=str,
        default='',
        metavar='SCALE',
        help='linear or sqrt scaling of --lr-base; sqrt for Ada*/LAMB, linear otherwise, if empty',
        role=STUDENT,
    )
    g.add_argument(
        '--lr-noise',
        type=float,
        nargs='+',
        default=None,
        metavar='PCT',
        help='epoch fractions where lr noise is on (and off)',
        role=STUDENT,
    )
    g.add_argument(
        '--lr-noise-pct',
        type=float,
        default=0.67,
        metavar='PERCENT',
        help='lr noise limit',
        role=STUDENT,
    )
    g.add_argument(
        '--lr-noise-std',
        type=float,
        default=1.0,
        metavar='STDDEV',
        help='lr noise std',
        role=STUDENT,
    )
    g.add_argument(
        '--lr-cycle-mul',
        type=float,
        default=1.0,
        metavar='MULT',
        help='cycle length multiplier',
        role=STUDENT,
    )
    g.add_argument(
        '--lr-cycle-decay',
        type=float,
        default=0.5,
        metavar='MULT',
        help='lr decay per cycle',
        role=STUDENT,
    )
    g.add_argument(
        '--lr-cycle-limit', type=int, default=1, metavar='N', help='number of cycles', role=STUDENT
    )
    g.add_argument(
        '--lr-k-decay',
        type=float,
        default=1.0,
        help='k-decay of cosine/poly schedules',
        role=STUDENT,
    )
    g.add_argument(
        '--warmup-lr',
        type=float,
        default=1e-5,
        metavar='LR',
        help='lr at the start of warm-up',
        role=STUDENT,
    )
    g.add_argument(
        '--min-lr',
        type=float,
        default=0,
        metavar='LR',
        help='lr floor of cyclic schedules',
        role=STUDENT,
    )
    g.add_argument(
        '--epochs',
        type=int,
        default=300,
        metavar='N',
        help='epochs of the schedule',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--epoch-repeats',
        type=float,
        default=0.0,
        metavar='N',
        help='passes over the dataset per epoch',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--start-epoch',
        default=None,
        type=int,
        metavar='N',
        help='start at this epoch (overrides the resumed epoch)',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--decay-milestones',
        default=[90, 180, 270],
        type=int,
        nargs='+',
        metavar='MILESTONES',
        help='epochs where the multistep schedule decays',
        role=STUDENT,
    )
    g.add_argument(
        '--decay-epochs',
        type=float,
        default=90,
        metavar='N',
        help='interval of the step schedule',
        role=STUDENT,
    )
    g.add_argument(
        '--warmup-epochs', type=int, default=5, metavar='N', help='warm-up epochs', role=STUDENT
    )
    g.add_argument(
        '--warmup-prefix',
        action='store_true',
        default=False,
        help='warm-up comes before the schedule instead of within it',
        role=STUDENT,
    )
    g.add_argument(
        '--cooldown-epochs',
        type=int,
        default=0,
        metavar='N',
        help='epochs at --min-lr after the schedule',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--patience-epochs',
        type=int,
        default=10,
        metavar='N',
        help='patience of the plateau schedule',
        role=STUDENT,
    )
    g.add_argument(
        '--decay-rate',
        '--dr',
        type=float,
        default=0.1,
        metavar='RATE',
        help='lr decay factor',
        role=STUDENT,
    )


def _add_augmentation(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Augmentation and regularization')
    g.add_argument(
        '--no-aug',
        action='store_true',
        default=False,
        help='no training augmentation at all',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--train-crop-mode',
        type=str,
        default=None,
        help='training crop mode (rrc, rkrc, rkrr)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--scale',
        type=float,
        nargs='+',
        default=[0.08, 1.0],
        metavar='PCT',
        help='random-resized-crop area range',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--ratio',
        type=float,
        nargs='+',
        default=[3.0 / 4.0, 4.0 / 3.0],
        metavar='RATIO',
        help='random-resized-crop aspect range',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--hflip',
        type=float,
        default=0.5,
        help='horizontal flip probability',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--vflip',
        type=float,
        default=0.0,
        help='vertical flip probability',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--color-jitter',
        type=float,
        default=0.4,
        metavar='PCT',
        help='color jitter strength',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--color-jitter-prob',
        type=float,
        default=None,
        metavar='PCT',
        help='probability of color jitter',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--grayscale-prob',
        type=float,
        default=None,
        metavar='PCT',
        help='probability of grayscale',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--gaussian-blur-prob',
        type=float,
        default=None,
        metavar='PCT',
        help='probability of gaussian blur',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--aa',
        type=str,
        default=None,
        metavar='NAME',
        help='auto-augment policy, e.g. rand-m7-mstd0.5 (RandAugment)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--aug-repeats',
        type=float,
        default=0,
        help='repeated augmentation: copies of each image',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--aug-splits', type=int, default=0, help='AugMix splits', role=TEACHER, shared=True
    )
    g.add_argument(
        '--jsd-loss',
        action='store_true',
        default=False,
        help='Jensen-Shannon loss over AugMix splits',
        role=STUDENT,
    )
    g.add_argument(
        '--bce-loss',
        action='store_true',
        default=False,
        help='the hard-label loss is BCE',
        role=STUDENT,
    )
    g.add_argument(
        '--bce-sum',
        action='store_true',
        default=False,
        help='BCE summed over classes',
        role=STUDENT,
    )
    g.add_argument(
        '--bce-target-thresh',
        type=float,
        default=None,
        help='binarize BCE targets at this threshold',
        role=STUDENT,
    )
    g.add_argument(
        '--bce-pos-weight', type=float, default=None, help='BCE positive-class weight', role=STUDENT
    )
    g.add_argument(
        '--reprob',
        type=float,
        default=0.0,
        metavar='PCT',
        help='random erasing probability',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--remode',
        type=str,
        default='pixel',
        help='random erasing fill mode',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--recount', type=int, default=1, help='random erasing count', role=TEACHER, shared=True
    )
    g.add_argument(
        '--resplit',
        action='store_true',
        default=False,
        help='no random erasing on the first split',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--mixup',
        type=float,
        default=0.0,
        help='mixup alpha (on when > 0)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--cutmix',
        type=float,
        default=0.0,
        help='cutmix alpha (on when > 0)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--cutmix-minmax',
        type=float,
        nargs='+',
        default=None,
        help='cutmix box ratio range',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--mixup-prob',
        type=float,
        default=1.0,
        help='probability of mixing a batch',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--mixup-switch-prob',
        type=float,
        default=0.5,
        help='probability of cutmix instead of mixup when both are on',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--mixup-mode',
        type=str,
        default='batch',
        help='mix per batch, pair or elem',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--mixup-off-epoch',
        default=0,
        type=int,
        metavar='N',
        help='no mixing from this epoch (0: never)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--smoothing', type=float, default=0.1, help='label smoothing', role=STUDENT, shared=True
    )
    g.add_argument(
        '--train-interpolation',
        type=str,
        default='random',
        help='training resize interpolation',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--drop', type=float, default=0.0, metavar='PCT', help='dropout rate', role=STUDENT
    )
    g.add_argument(
        '--drop-connect',
        type=float,
        default=None,
        metavar='PCT',
        help='deprecated name of --drop-path (used when --drop-path is unset)',
        role=STUDENT,
    )
    g.add_argument(
        '--drop-path', type=float, default=None, metavar='PCT', help='drop path rate', role=STUDENT
    )
    g.add_argument(
        '--drop-block',
        type=float,
        default=None,
        metavar='PCT',
        help='drop block rate',
        role=STUDENT,
    )
    g = p.add_argument_group('BatchNorm')
    g.add_argument(
        '--bn-momentum', type=float, default=None, help='BatchNorm momentum override', role=STUDENT
    )
    g.add_argument(
        '--bn-eps', type=float, default=None, help='BatchNorm epsilon override', role=STUDENT
    )
    g.add_argument(
        '--sync-bn',
        action='store_true',
        default=False,
        help='synchronized BatchNorm (distributed)',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--dist-bn',
        type=str,
        default='reduce',
        help='share BatchNorm statistics across processes after each epoch: broadcast, reduce or '
        '""',
        role=STUDENT,
        shared=True,
    )
    g.add_argument(
        '--split-bn',
        action='store_true',
        default=False,
        help='one BatchNorm per augmentation split',
        role=STUDENT,
    )
    g = p.add_argument_group('Model EMA')
    g.add_argument(
        '--model-ema',
        action='store_true',
        default=False,
        help='keep an EMA of the student weights',
        role=STUDENT,
    )
    g.add_argument(
        '--model-ema-force-cpu',
        action='store_true',
        default=False,
        help='keep the EMA on the CPU (it is then not validated)',
        role=STUDENT,
    )
    g.add_argument('--model-ema-decay', type=float, default=0.9998, help='EMA decay', role=STUDENT)
    g.add_argument(
        '--model-ema-warmup',
        action='store_true',
        default=False,
        help='warm up the EMA decay',
        role=STUDENT,
    )


def _add_misc(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('Miscellaneous')
    g.add_argument(
        '--seed', type=int, default=42, metavar='S', help='random seed', role=TEACHER, shared=True
    )
    g.add_argument(
        '--worker-seeding',
        type=str,
        default='all',
        help='loader worker seeding mode',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--log-interval',
        type=int,
        default=50,
        metavar='N',
        help='batches between log lines',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--val-interval',
        type=int,
        default=1,
        metavar='N',
        help='epochs between validation/checkpoints',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--recovery-interval',
        type=int,
        default=0,
        metavar='N',
        help='updates between recovery checkpoints (0: none)',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--checkpoint-hist',
        type=int,
        default=10,
        metavar='N',
        help='best checkpoints kept',
        role=NEITHER,
    )
    g.add_argument(
        '-j',
        '--workers',
        type=int,
        default=4,
        metavar='N',
        help='loader worker processes',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--save-images',
        action='store_true',
        default=False,
        help='save the training batch as an image at every log interval',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--pin-mem',
        action='store_true',
        default=False,
        help='pinned host memory in the loader',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--no-prefetcher',
        action='store_true',
        default=False,
        help='no timm prefetcher: normalization and random erasing then run in the loader workers',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--output',
        default='',
        type=str,
        metavar='PATH',
        help='output root (./output/train if empty)',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--experiment',
        default='',
        type=str,
        metavar='NAME',
        help='output sub-folder (date-model-size if empty)',
        role=NEITHER,
    )
    g.add_argument(
        '--eval-metric',
        default='top1',
        type=str,
        metavar='EVAL_METRIC',
        help='metric that picks the best checkpoint',
        role=STUDENT,
    )
    g.add_argument(
        '--tta',
        type=int,
        default=0,
        metavar='N',
        help='validation averages each run of N consecutive outputs, as timm does (its loader '
        'does not repeat images)',
        role=NEITHER,
    )
    g.add_argument(
        '--use-multi-epochs-loader',
        action='store_true',
        default=False,
        help='keep loader workers across epochs',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--log-wandb',
        action='store_true',
        default=False,
        help='log metrics to Weights & Biases (pip install "timm-kd[wandb]"; WANDB_MODE=offline '
        'works '
        'without an account)',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--wandb-project', default=None, type=str, help='wandb project', role=NEITHER, shared=True
    )
    g.add_argument(
        '--wandb-tags',
        default=[],
        type=str,
        nargs='+',
        help='wandb tags',
        role=NEITHER,
        shared=True,
    )
    g.add_argument(
        '--wandb-resume-id',
        default='',
        type=str,
        metavar='ID',
        help='wandb run id to resume',
        role=NEITHER,
        shared=True,
    )
    g = p.add_argument_group('Scheduled resolution')
    g.add_argument(
        '--train-img-sizes',
        type=int,
        nargs='+',
        default=None,
        help='per-batch square training sizes',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--train-batch-sizes',
        type=int,
        nargs='+',
        default=None,
        help='batch size of each --train-img-sizes entry',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--train-size-probs',
        type=float,
        nargs='+',
        default=None,
        help='sampling weights of --train-img-sizes',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--train-size-schedule',
        type=str,
        default='constant',
        choices=('constant', 'progressive'),
        help='how the size choice changes over training',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--train-size-schedule-spread',
        type=float,
        default=0.65,
        help='spread of the progressive schedule',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--train-size-random-mix',
        type=float,
        default=0.1,
        help='uniform share mixed into the progressive schedule',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--train-batches-per-epoch',
        '--train-steps-per-epoch',
        type=int,
        default=None,
        help='loader batches per epoch (inferred if unset)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--variable-batch-loss-scale',
        default='none',
        type=str,
        choices=('none', 'sqrt', 'linear'),
        help='scale each batch loss by its size relative to the mean scheduled batch',
        role=STUDENT,
        shared=True,
    )
    g = p.add_argument_group('NaFlex loader')
    g.add_argument(
        '--naflex-loader',
        action='store_true',
        default=False,
        help="timm's NaFlex loader",
        role=REFUSED,
    )
    g.add_argument(
        '--naflex-train-seq-lens',
        type=int,
        nargs='+',
        default=[128, 256, 576, 784, 1024],
        help='NaFlex training sequence lengths',
        role=NEITHER,
    )
    g.add_argument(
        '--naflex-max-seq-len',
        type=int,
        default=576,
        help='NaFlex validation sequence length',
        role=NEITHER,
    )
    g.add_argument(
        '--naflex-patch-sizes',
        type=int,
        nargs='+',
        default=None,
        help='NaFlex patch size choices',
        role=NEITHER,
    )
    g.add_argument(
        '--naflex-patch-size-probs',
        type=float,
        nargs='+',
        default=None,
        help='probabilities of --naflex-patch-sizes',
        role=NEITHER,
    )
    g.add_argument(
        '--naflex-loss-scale',
        default='linear',
        type=str,
        choices=('none', 'sqrt', 'linear'),
        help='NaFlex loss scaling by batch size',
        role=NEITHER,
    )
    g.add_argument(
        '--naflex-patchify-channels-first',
        action='store_true',
        default=False,
        help='NaFlex patches in C-P-P layout',
        role=NEITHER,
    )


def _add_timm_kd(p: argparse.ArgumentParser) -> None:
    """timm's own KD flags; `kd_flags.resolve_timm_kd` maps them onto ours with timm's meaning."""
    g = p.add_argument_group(
        "timm's distillation flags (timm's meaning: T=4, task/distill weights as timm's task)"
    )
    g.add_argument(
        '--kd-model-name',
        default=None,
        type=str,
        metavar='NAME',
        help='teacher, as timm names it; the loss then defaults to T=4 as in timm (--teacher: T=1)',
        role=TEACHER,
        shared=True,
    )
    g.add_argument(
        '--kd-distill-type',
        default='logit',
        type=str,
        choices=['logit', 'feature', 'token'],
        help="timm's task: logit (the logit losses), feature (the pooled pre-logits regressed, "
        'MSE: --kd-loss prelogits), token (the logit losses train the distillation token of a '
        'distilled model; --kd-token-distill-type hard: --kd-loss hard)',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-loss-type',
        default='kl',
        type=str,
        help='timm logit loss; kl = our kd loss',
        role=REFUSED,
    )
    g.add_argument(
        '--distill-loss-weight',
        default=None,
        type=float,
        help="weight of the KD term; with only --task-loss-weight it is 1 - task weight (timm's "
        'rule)',
        role=STUDENT,
    )
    g.add_argument(
        '--task-loss-weight',
        default=None,
        type=float,
        help='weight of the hard-label loss (timm): alone, the KD term gets 1 - this',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-temperature',
        default=None,
        type=float,
        help='temperature of every loss that has one; if unset: 4 with --kd-model-name (timm), '
        'otherwise each loss its own (kd: 1, the paper)',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-student-feature-dim',
        default=None,
        type=int,
        help="the student's pre-logits width (--kd-distill-type feature; checked against the "
        'model)',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-teacher-feature-dim',
        default=None,
        type=int,
        help="the teacher's pre-logits width (--kd-distill-type feature; checked against the "
        'model)',
        role=STUDENT,
    )
    g.add_argument(
        '--kd-token-distill-type',
        default='soft',
        type=str,
        choices=['soft', 'hard'],
        help='--kd-distill-type token: soft (KL at --kd-temperature: --kd-loss kd) or hard (CE '
        "against the teacher's top-1: --kd-loss hard)",
        role=STUDENT,
    )


def add_timm_flags(p: argparse.ArgumentParser) -> None:
    """Add every flag of timm's train.py (`--config` is added by the caller)."""
    for add in (
        _add_dataset,
        _add_model,
        _add_device,
        _add_optimizer,
        _add_schedule,
        _add_augmentation,
        _add_misc,
        _add_timm_kd,
    ):
        add(p)


# Flags that cannot apply to distillation: (when it
# counts as used, why). Each is refused with one line.
UNSUPPORTED: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    'naflex_loader': (bool, 'NaFlex batches are patch dictionaries and the teacher needs images'),
    'kd_loss_type': (
        lambda v: v != 'kl',
        "timm's only logit loss is kl; choose ours with --kd-loss (kd, dkd, dist, ...)",
    ),
}


def refuse_unsupported(args: argparse.Namespace) -> None:
    """One-line error for the first timm flag that is used but cannot apply to distillation."""
    for dest, (used, why) in UNSUPPORTED.items():
        if used(getattr(args, dest)):
            raise KDError(f'--{dest.replace("_", "-")} is not supported by timm-kd: {why}')
