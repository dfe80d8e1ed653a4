"""The teacher: input conversion, freezing, weights
from checkpoints, and the errors for bad teachers."""

import pytest
import timm
import torch

from timm_kd import InputAdapter, KDError, Teacher, TeacherSetup, TeacherSpec, create_teacher
from timm_kd.teacher import DTYPES

STUDENT = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, 32, 32))


def test_adapter_renormalizes_from_student_to_teacher_statistics():
    raw = torch.rand(2, 3, 8, 8)
    s_mean, s_std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    t_mean, t_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])

    def view(v):
        return v.view(1, 3, 1, 1)

    adapter = InputAdapter(s_mean.tolist(), s_std.tolist(), t_mean.tolist(), t_std.tolist())
    out = adapter((raw - view(s_mean)) / view(s_std))
    assert adapter.renormalize
    assert torch.allclose(out, (raw - view(t_mean)) / view(t_std), atol=1e-5)


def test_adapter_is_identity_when_preprocessing_matches():
    adapter = InputAdapter((0.5,) * 3, (0.5,) * 3, (0.5,) * 3, (0.5,) * 3, size=(8, 8))
    x = torch.randn(2, 3, 8, 8)
    assert not adapter.renormalize
    assert adapter(x) is x


@pytest.mark.parametrize('size', [(16, 16), (4, 6)])
def test_adapter_resizes_to_teacher_resolution(size):
    adapter = InputAdapter(
        (0.5,) * 3, (0.5,) * 3, (0.5,) * 3, (0.5,) * 3, size=size, interpolation='bilinear'
    )
    x = torch.full((2, 3, 8, 8), 0.25)
    out = adapter(x)
    assert out.shape == (2, 3, *size)
    # a constant image stays constant
    assert torch.allclose(out, torch.full_like(out, 0.25), atol=1e-6)


def test_teacher_stays_frozen_in_eval_mode_without_autograd():
    teacher = Teacher(timm.create_model('test_resnet', num_classes=5, drop_rate=0.5))
    teacher.train()
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = teacher(x)
    assert out.logits.shape == (2, 5) and not out.logits.requires_grad
    assert torch.equal(out.logits, teacher(x).logits)  # eval mode: dropout off, deterministic


def test_teacher_returns_intermediate_features_on_request():
    teacher = Teacher(timm.create_model('test_resnet', num_classes=5))
    x = torch.randn(2, 3, 32, 32)
    out = teacher(x, stages=[3, 1])
    assert torch.allclose(out.logits, teacher(x).logits, atol=1e-5)
    # in the order asked
    assert [tuple(f.shape[1:]) for f in out.features.maps] == [
        (192, 2, 2),
        (32, 8, 8),
    ]
    assert out.features.pre_logits.shape == (2, 96)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_teacher_dtype_and_channels_last(dtype, tmp_path):
    model = timm.create_model('test_resnet', num_classes=4)
    path = tmp_path / 't.pth'
    torch.save(model.state_dict(), path)
    spec = TeacherSpec('test_resnet', str(path), dtype=dtype)
    teacher = create_teacher(spec, STUDENT, 4, TeacherSetup(channels_last=True))
    assert next(teacher.model.parameters()).dtype == getattr(torch, dtype)
    reference = model.eval()(torch.ones(2, 3, 32, 32))
    assert torch.allclose(teacher(torch.ones(2, 3, 32, 32)).logits.float(), reference, atol=0.1)


def test_inference_mode_outputs_can_enter_the_student_loss_and_equal_no_grad():
    teacher = Teacher(timm.create_model('test_resnet', num_classes=5))
    x = torch.randn(2, 3, 32, 32)
    fast = teacher(x, stages=[1])
    assert not fast.logits.is_inference() and not fast.features.maps[0].is_inference()
    student_logits = torch.randn(2, 5, requires_grad=True)
    kl = torch.nn.functional.kl_div(
        student_logits.log_softmax(-1), fast.logits.softmax(-1), reduction='batchmean'
    )
    kl.backward()
    # an inference tensor saved for backward would raise here
    assert student_logits.grad is not None
    teacher.inference_mode = False
    slow = teacher(x, stages=[1])
    assert torch.equal(fast.logits, slow.logits) and torch.equal(
        fast.features.maps[0], slow.features.maps[0]
    )


def test_forward_many_serves_each_student_its_stages_from_one_pass():
    teacher = Teacher(timm.create_model('test_resnet', num_classes=5))
    calls = []
    teacher.model.register_forward_pre_hook(lambda *_: calls.append(1))
    teacher.model.forward_intermediates = _counted(teacher.model.forward_intermediates, calls)
    x = torch.randn(2, 3, 32, 32)
    logits_only, deep, other = teacher.forward_many(x, [None, [3, 1], [2]])
    assert len(calls) == 1
    assert logits_only.features is None
    for out, stages in ((deep, [3, 1]), (other, [2])):
        alone = teacher(x, stages=stages)
        assert torch.allclose(out.logits, alone.logits, atol=1e-6)
        assert all(torch.equal(a, b) for a, b in zip(out.features.maps, alone.features.maps))
        assert len(out.features.maps) == len(stages)


def _counted(fn, calls):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize('size', [(16, 16), (64, 48)])
def test_adapter_resize_commutes_with_renormalization(size):
    """The adapter renormalizes on the smaller side of the resize; both orders must agree."""
    adapter = InputAdapter(
        (0.5, 0.4, 0.3),
        (0.2, 0.25, 0.3),
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        size=size,
        interpolation='bicubic',
    )
    x = torch.randn(2, 3, 32, 32)
    renormalized_first = torch.nn.functional.interpolate(
        adapter._affine(x), size=size, mode='bicubic', align_corners=False, antialias=size[0] < 32
    )
    assert torch.allclose(adapter(x), renormalized_first, atol=1e-5)


def test_compiled_teacher_matches_eager_and_compiles_once():
    teacher = Teacher(
        timm.create_model('test_resnet', num_classes=5),
        InputAdapter((0.5,) * 3, (0.5,) * 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    )
    x = torch.randn(2, 3, 32, 32)
    eager = teacher(x).logits
    compiled = teacher.compile().compile()._compiled
    assert teacher._compiled is compiled
    assert torch.allclose(teacher(x).logits, eager, atol=1e-4)


def test_compile_mode_becomes_inductor_options_next_to_freezing(monkeypatch):
    """torch.compile takes a mode or options, not both:
    --torchcompile-mode reduce-overhead must still freeze."""
    calls = []
    monkeypatch.setattr(torch, 'compile', lambda fn, **kwargs: calls.append(kwargs) or fn)
    Teacher(timm.create_model('test_resnet', num_classes=5)).compile(mode='reduce-overhead')
    assert calls[0]['mode'] is None and calls[0]['options'] == {
        'triton.cudagraphs': True,
        'freezing': True,
    }
    Teacher(timm.create_model('test_resnet', num_classes=5)).compile(
        backend='eager', mode='reduce-overhead'
    )
    assert calls[1]['mode'] == 'reduce-overhead' and 'options' not in calls[1]


def test_checkpoint_teacher_loads_ema_weights_and_uses_student_preprocessing(tmp_path):
    raw, ema = (
        timm.create_model('test_resnet', num_classes=4),
        timm.create_model('test_resnet', num_classes=4),
    )
    path = tmp_path / 'last.pth.tar'
    torch.save({'state_dict': raw.state_dict(), 'state_dict_ema': ema.state_dict()}, path)
    teacher = create_teacher(TeacherSpec('test_resnet', str(path)), STUDENT, 4)
    assert torch.equal(teacher.model.fc.weight, ema.fc.weight)
    assert not teacher.adapter.renormalize and teacher.adapter.size == (32, 32)
    teacher = create_teacher(TeacherSpec('test_resnet', str(path), no_ema=True), STUDENT, 4)
    assert torch.equal(teacher.model.fc.weight, raw.fc.weight)


def test_a_checkpoint_that_records_its_training_decides_the_teachers_preprocessing(
    image_folder, tmp_path, caplog
):
    """A timm-kd-train checkpoint trained at mean 0.4 / std 0.2 teaches a student at 0.5 / 0.5
    through a renormalization to 0.4 / 0.2; a timm checkpoint recording `resnet18` with unset
    mean/std/size gets resnet18's own config; flags still override the record."""
    import logging
    from argparse import Namespace

    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from timm_kd.cli.train import main as train_main

    stats = ['--mean', '0.4', '0.4', '0.4', '--std', '0.2', '0.2', '0.2']
    train_main([image_folder, '--model', 'test_resnet', '--img-size', '32', *stats, '-b', '8',
                '--epochs', '1', '-j', '0', '--device', 'cpu', '--output', str(tmp_path),
                '--experiment', 'teacher'])  # fmt: skip
    ours = str(tmp_path / 'teacher' / 'last.pth.tar')
    with caplog.at_level(logging.INFO, logger='timm_kd.teacher'):
        teacher = create_teacher(TeacherSpec('test_resnet', ours), STUDENT, 3)
    assert 'as its checkpoint records its training' in caplog.text
    assert teacher.adapter.renormalize and teacher.adapter.size == (32, 32)
    x = torch.rand(2, 3, 32, 32)  # normalized at 0.5 / 0.5 -> the same pixels at 0.4 / 0.2
    assert torch.allclose(teacher.adapter(x), (x * 0.5 + 0.5 - 0.4) / 0.2, atol=1e-6)
    spec = TeacherSpec('test_resnet', ours, mean=(0.5,) * 3, std=(0.5,) * 3)
    overridden = create_teacher(spec, STUDENT, 3)
    assert not overridden.adapter.renormalize

    timms = tmp_path / 'timm.pth.tar'
    record = Namespace(model='resnet18', mean=None, std=None, input_size=None, img_size=None)
    weights = timm.create_model('resnet18', num_classes=3).state_dict()
    torch.save({'state_dict': weights, 'args': record, 'epoch': 3}, timms)
    teacher = create_teacher(TeacherSpec('resnet18', str(timms)), STUDENT, 3)
    own = timm.data.resolve_data_config({}, model=teacher.model)  # resnet18's own config
    assert teacher.adapter.size == (224, 224) == own['input_size'][1:]
    assert teacher.adapter.interpolation == own['interpolation']
    scale = torch.tensor(STUDENT['std']) / torch.tensor(IMAGENET_DEFAULT_STD)
    assert torch.allclose(teacher.adapter.scale.flatten(), scale)
    assert IMAGENET_DEFAULT_MEAN != STUDENT['mean']


def test_a_checkpoint_without_a_record_gets_the_students_preprocessing_and_says_so(
    tmp_path, caplog
):
    import logging

    path = tmp_path / 'bare.pth'
    torch.save(timm.create_model('test_resnet', num_classes=3).state_dict(), path)
    with caplog.at_level(logging.INFO, logger='timm_kd.teacher'):
        teacher = create_teacher(TeacherSpec('test_resnet', str(path)), STUDENT, 3)
    assert not teacher.adapter.renormalize and teacher.adapter.size == (32, 32)
    assert "the student's: its checkpoint" in caplog.text and 'records no training' in caplog.text


def test_tagged_teacher_uses_its_pretrained_cfg_and_flags_override(tmp_path):
    path = tmp_path / 't.pth'
    torch.save(timm.create_model('test_resnet', num_classes=3).state_dict(), path)
    student = dict(mean=(0.1, 0.2, 0.3), std=(0.2,) * 3, input_size=(3, 32, 32))
    teacher = create_teacher(TeacherSpec('test_resnet.r160_in1k', str(path)), student, 3)
    # cfg: 160px, mean/std 0.5
    assert teacher.adapter.size == (160, 160) and teacher.adapter.renormalize
    spec = TeacherSpec(
        'test_resnet.r160_in1k',
        str(path),
        input_size=(48, 48),
        mean=(0.1, 0.2, 0.3),
        std=(0.2,) * 3,
    )
    teacher = create_teacher(spec, student, 3)
    assert teacher.adapter.size == (48, 48) and not teacher.adapter.renormalize


def test_class_count_mismatch_names_both_counts(tmp_path):
    path = tmp_path / 't.pth'
    torch.save(timm.create_model('test_resnet', num_classes=7).state_dict(), path)
    with pytest.raises(KDError, match='predicts 7 classes but the student has 3'):
        create_teacher(TeacherSpec('test_resnet', str(path)), STUDENT, 3)


def test_checkpoint_of_another_architecture_is_an_error(tmp_path):
    path = tmp_path / 't.pth'
    torch.save(timm.create_model('test_vit', num_classes=3).state_dict(), path)
    with pytest.raises(KDError, match="does not fit architecture 'test_resnet'"):
        create_teacher(TeacherSpec('test_resnet', str(path)), STUDENT, 3)


def test_teacher_without_weights_offline_is_an_error_never_a_random_teacher():
    with pytest.raises(
        KDError, match="no pretrained weights for teacher 'test_resnet'.*--teacher-checkpoint"
    ):
        create_teacher('test_resnet', STUDENT, 1000)


def test_a_hub_that_cannot_be_reached_is_one_line_at_once(monkeypatch, caplog, tmp_path):
    """Without HF_HUB_OFFLINE, huggingface_hub would retry each weight file for about half a
    minute and log every try; weights that are not cached and cannot come are one line at once,
    and cached weights still load."""
    import huggingface_hub
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', 'http://127.0.0.1:9')  # refused
    with pytest.raises(KDError) as error:
        create_teacher('resnet18.a1_in1k', STUDENT, 1000)
    assert str(error.value) == (
        "no pretrained weights for teacher 'resnet18.a1_in1k': not in the local Hugging Face "
        'cache, and the Hub (http://127.0.0.1:9) cannot be reached (Connection refused); download '
        'them once with network access (cached under HF_HOME), or pass --teacher-checkpoint PATH'
    )
    assert 'Retrying' not in caplog.text
    # the same weights in the Hub cache: no network needed
    cache = tmp_path / 'hub'
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    snapshot = cache / 'models--timm--test_resnet.r160_in1k' / 'snapshots' / ('0' * 40)
    snapshot.mkdir(parents=True)
    save_file(timm.create_model('test_resnet').state_dict(), snapshot / 'model.safetensors')
    (snapshot.parent.parent / 'refs').mkdir()
    (snapshot.parent.parent / 'refs' / 'main').write_text('0' * 40)
    assert create_teacher('test_resnet.r160_in1k', STUDENT, 1000).model.num_classes == 1000


@pytest.mark.parametrize(
    'name, message',
    [
        ('./no/such/teacher', 'no such file or folder; check the path'),
        ('my-org/teacher', 'no such file or folder; pass hf-hub:my-org/teacher'),
    ],
)
def test_a_teacher_path_that_is_no_model_name_is_one_line(name, message):
    with pytest.raises(KDError, match=f'^teacher {name!r} is not a timm model name: {message}'):
        create_teacher(name, STUDENT, 10)


def test_unknown_teacher_and_dtype():
    with pytest.raises(KDError, match="unknown teacher model 'no_such_net'"):
        create_teacher('no_such_net', STUDENT, 10)
    with pytest.raises(KDError, match='unknown --teacher-dtype'):
        create_teacher(TeacherSpec('test_resnet', dtype='int8'), STUDENT, 10)


def test_timms_kd_model_name_feeds_the_teacher_at_the_students_resolution(caplog):
    """timm's distillation task renormalizes the student's batch for the teacher and never resizes
    it; --teacher feeds the teacher at its own resolution; --teacher-input-size overrides both."""
    import logging

    from timm_kd.cli.train import parse_args
    from timm_kd.cli.train.parse import teacher_setup
    from timm_kd.teacher_input import input_adapter

    timm_way = teacher_setup(parse_args(['/data', '--kd-model-name', 'resnet18.a1_in1k'])[0])
    ours = teacher_setup(parse_args(['/data', '--teacher', 'resnet18.a1_in1k'])[0])
    assert timm_way.members[0].at_student_size and not ours.members[0].at_student_size
    model = timm.create_model('resnet18.a1_in1k')  # its pretrained config: 224 px
    student = dict(STUDENT, input_size=(3, 64, 64))
    with caplog.at_level(logging.INFO, logger='timm_kd.teacher'):
        assert input_adapter(timm_way.members[0], model, student, False).size == (64, 64)
    assert "at the student's resolution (--kd-model-name" in caplog.text
    assert input_adapter(ours.members[0], model, student, False).size == (224, 224)
    given = TeacherSpec('resnet18.a1_in1k', input_size=(3, 96, 96), at_student_size=True)
    assert input_adapter(given, model, student, False).size == (96, 96)


def _beit():
    """A BEiT (the paper's teacher family) at test size: relative position bias, layer scale."""
    return timm.create_model('beit_base_patch16_224', img_size=32, patch_size=8, embed_dim=32,
                             depth=2, num_heads=2, num_classes=3)  # fmt: skip


@pytest.mark.parametrize('arch', ['test_resnet', 'test_vit', 'beit'])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16', 'float16'])
@pytest.mark.parametrize('amp', [None, 'bfloat16', 'float16'])
def test_the_teacher_runs_at_its_own_precision_under_any_autocast(arch, dtype, amp):
    """Cast weights (--teacher-dtype, --teacher-fast) inside the student's autocast of another
    dtype failed: BatchNorm run eagerly ('mixed dtype'), BEiT ('Unexpected floating ScalarType').
    The teacher's answer is now the same whatever autocast its caller is in."""
    torch.manual_seed(0)
    size = {} if arch == 'test_resnet' else dict(img_size=32)
    model = _beit() if arch == 'beit' else timm.create_model(arch, num_classes=3, **size)
    teacher = Teacher(model, dtype=DTYPES[dtype], autocast=DTYPES[amp] if amp else None)
    images = torch.randn(2, 3, 32, 32)
    alone = teacher(images).logits
    for outer in (torch.float16, torch.bfloat16):
        with torch.autocast('cpu', dtype=outer):
            inside = teacher(images).logits
        assert torch.isfinite(inside.float()).all() and torch.equal(inside, alone)
