"""A teacher of another label set or of none: `--teacher-class-map` and headless teachers."""

import csv
import logging

import pytest
import timm
import torch
from conftest import TINY
from timm.models._hub import save_for_hf

from timm_kd.class_map import ClassMap, resolve_class_map
from timm_kd.cli.cache import main as cache_main
from timm_kd.cli.train import cli
from timm_kd.cli.train import main as train_main
from timm_kd.cli.validate import main as validate_main
from timm_kd.errors import KDError

FAST = ['--model', 'test_resnet', *TINY, '-b', '8', '--epochs', '2', '--mixup', '0.5']
# the wide teacher's labels: the image_folder's three classes at 3, 5 and 1, among others
WIDE_LABELS = ['dog', 'class2', 'cat', 'class0', 'bird', 'class1', 'fish']
WIDE_ROWS = [3, 5, 1]  # the teacher class of student class 0, 1, 2


def test_one_teacher_class_per_student_class_picks_its_logits_bit_for_bit():
    logits = torch.randn(5, 7)
    assert torch.equal(ClassMap([[3], [5], [1]])(logits), logits[:, [3, 5, 1]])


def test_several_teacher_classes_add_their_probabilities_restricted_to_the_mapped_ones():
    """softmax(z')_c = sum_{j in S_c} p_j / sum_{j in S} p_j, stable at large logits."""
    logits = torch.randn(6, 9, dtype=torch.float64) * 4
    logits[0, 2] = 900.0  # exp overflows unless shifted
    groups = [[0, 4], [2], [5, 7, 8]]
    mapped = ClassMap(groups)(logits)
    used = [j for g in groups for j in g]
    p = torch.zeros_like(logits).index_fill(1, torch.tensor(used), 1) * logits.softmax(1)
    p[0] = torch.zeros(9, dtype=torch.float64).index_fill(0, torch.tensor([2]), 1)
    expected = torch.stack([p[:, g].sum(1) for g in groups], 1)
    expected = expected / expected.sum(1, keepdim=True)
    assert torch.isfinite(mapped).all()
    torch.testing.assert_close(mapped.softmax(1).double(), expected, atol=1e-6, rtol=1e-5)


def _imagenet_teacher():
    return timm.create_model('test_vit', num_classes=1000, img_size=32)


def test_auto_matches_wordnet_ids_and_description_synonyms_of_imagenet():
    """timm's ImageNet info names a 1000-class teacher's labels; a synonym naming two classes
    ('crane': the bird and the machine) takes both."""
    names = ['n01440764', 'goldfish', 'Great_White-Shark', 'crane']
    m = resolve_class_map('auto', _imagenet_teacher(), names, 4)
    assert m.groups == [(0,), (1,), (2,), (134, 517)]


def test_a_map_file_names_classes_by_index_label_or_description(tmp_path):
    path = tmp_path / 'map.txt'
    path.write_text('# student classes of the data, in order\n7\nn01443537\ntench | 2\n')
    m = resolve_class_map(str(path), _imagenet_teacher(), ['a', 'b', 'c'], 3)
    assert m.groups == [(7,), (1,), (0, 2)]


@pytest.mark.parametrize(
    'text, names, message',
    [
        ('1\n2\n', ['a', 'b', 'c'], 'has 2 lines but the data has 3 classes'),
        ('1\nunicorn\n3\n', ['a', 'b', 'c'], "line 2: the teacher has no class 'unicorn'"),
        ('1\ncrane\n3\n', ['a', 'b', 'c'], "line 2: 'crane' names 2 teacher classes"),
        ('1\n\n3\n', ['a', 'b', 'c'], "student class 'b' has no teacher class"),
        ('1\n1000\n3\n', ['a', 'b', 'c'], "teacher class 1000 (for 'b') does not exist"),
        (None, ['tench', 'unicorn', 'pegasus'], '2 of 3 student classes match no teacher label'),
    ],
)
def test_each_bad_map_is_one_line(tmp_path, text, names, message):
    value = 'auto'
    if text is not None:
        value = str(tmp_path / 'map.txt')
        (tmp_path / 'map.txt').write_text(text)
    with pytest.raises(KDError, match='^[^\n]+$') as e:
        resolve_class_map(value, _imagenet_teacher(), names, 3)
    assert message in str(e.value)


@pytest.fixture(scope='module')
def teachers(tmp_path_factory):
    """A 3-class test_vit teacher (local-dir), and a 7-class one whose head rows WIDE_ROWS are the
    3-class one's, with label names; and a headless one (num_classes=0)."""
    root = tmp_path_factory.mktemp('teachers')
    torch.manual_seed(1)
    narrow = timm.create_model('test_vit', num_classes=3, img_size=32)
    wide = timm.create_model('test_vit', num_classes=7, img_size=32)
    state = wide.state_dict()
    for key, value in narrow.state_dict().items():
        if key.startswith('head.'):
            state[key][WIDE_ROWS] = value
        else:
            state[key] = value
    wide.load_state_dict(state)
    headless = timm.create_model('test_vit', num_classes=0, img_size=32)
    args = {'img_size': 32}
    save_for_hf(narrow, root / 'narrow', model_args=args)
    save_for_hf(wide, root / 'wide', model_args=args, model_config={'label_names': WIDE_LABELS})
    save_for_hf(headless, root / 'headless', model_args=args)
    return {name: f'local-dir:{root / name}' for name in ('narrow', 'wide', 'headless')}


def _summary(path):
    with open(path / 'summary.csv') as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _weights(path):
    return torch.load(path / 'last.pth.tar', weights_only=False)['state_dict']


def _same_run(a, b, tolerance=1e-5):
    """Every epoch's figures and the final weights, to float rounding: the wide teacher's head
    rows equal the narrow one's, but a wider matmul rounds its sums otherwise (3e-8 here), and
    training carries that on."""
    for x, y in zip(_summary(a), _summary(b)):
        assert x == pytest.approx(y, abs=tolerance)
    for key, value in _weights(a).items():
        torch.testing.assert_close(_weights(b)[key], value, atol=tolerance, rtol=tolerance * 10)


def test_a_wider_teacher_through_its_map_distills_as_the_teacher_of_the_datas_classes(
    image_folder, teachers, tmp_path
):
    """The 7-class teacher mapped by a file, by `auto` (its label names against the folder names)
    and from a cache built with the map trains what the 3-class teacher trains: every epoch's
    figures and the final weights."""
    (tmp_path / 'map.txt').write_text('\n'.join(map(str, WIDE_ROWS)) + '\n')
    wide = ['--teacher', teachers['wide'], '--teacher-class-map']
    runs = {
        'narrow': ['--teacher', teachers['narrow']],
        'file': [*wide, str(tmp_path / 'map.txt')],
        'auto': [*wide, 'auto'],
    }
    for name, flags in runs.items():
        train_main([image_folder, *FAST, *flags, '--output', str(tmp_path), '--experiment', name])
    cache = tmp_path / 'cache'
    cache_main(['build', image_folder, *FAST, *runs['auto'], '--top-k', '3', '--out', str(cache)])
    for name, beside in (('cached', []), ('cached_auto', ['--teacher-class-map', 'auto'])):
        train_main([image_folder, *FAST, '--teacher-cache', str(cache), *beside,
                    '--output', str(tmp_path), '--experiment', name])  # fmt: skip
    assert len(_summary(tmp_path / 'narrow')) == 2
    for name in ('file', 'auto', 'cached', 'cached_auto'):
        _same_run(tmp_path / 'narrow', tmp_path / name)


def test_a_map_beside_a_cache_is_compared_with_the_caches(
    image_folder, teachers, tmp_path, run_cli
):
    """The map counts in the cache's identity by content: another map (or none) is one line."""
    cache = tmp_path / 'cache'
    cache_main(['build', image_folder, *FAST, '--epochs', '1', '--teacher', teachers['narrow'],
                '--top-k', '3', '--out', str(cache)])  # fmt: skip
    (tmp_path / 'map.txt').write_text('0\n1\n2\n')
    out = run_cli(cli, image_folder, *FAST, '--epochs', '1', '--teacher-cache', cache,
                  '--teacher-class-map', tmp_path / 'map.txt', '--output', tmp_path)  # fmt: skip
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and '--teacher-class-map' in last and 'its own default' in last


def test_several_students_learn_from_the_mapped_teacher_as_from_the_datas_teacher(
    image_folder, teachers, tmp_path
):
    students = ['--student', '--model test_resnet', '--student', '--model test_resnet --lr 0.02']
    for name, flags in (
        ('narrow', ['--teacher', teachers['narrow']]),
        ('wide', ['--teacher', teachers['wide'], '--teacher-class-map', 'auto']),
    ):
        train_main([image_folder, *FAST, '--epochs', '1', *flags, *students,
                    '--output', str(tmp_path), '--experiment', name])  # fmt: skip
    for student in ('0-test_resnet', '1-test_resnet'):
        _same_run(tmp_path / 'narrow' / student, tmp_path / 'wide' / student, tolerance=1e-3)


def test_validate_reports_the_mapped_teacher_as_the_teacher_of_the_datas_classes(
    image_folder, teachers, tmp_path
):
    train_main([image_folder, *FAST, '--epochs', '1', '--output', str(tmp_path),
                '--experiment', 's'])  # fmt: skip
    common = [image_folder, '--model', 'test_resnet', '--checkpoint',
              str(tmp_path / 's' / 'last.pth.tar'), '-j', '0', '--device', 'cpu']  # fmt: skip
    narrow = validate_main([*common, '--teacher', teachers['narrow']])
    wide = validate_main([*common, '--teacher', teachers['wide'], '--teacher-class-map', 'auto'])
    assert (wide['teacher_top1'], wide['agreement']) == (
        narrow['teacher_top1'],
        narrow['agreement'],
    )


def test_an_ensemble_maps_each_teacher_with_its_own_map(image_folder, teachers, tmp_path):
    """Two teachers of other label sets, each with its own map: the ensemble of the narrow teacher
    with itself, as the mixture of equal teachers is that teacher."""
    # the narrow teacher names no labels: its file names its classes by index
    (tmp_path / 'map.txt').write_text('0\n1\n2\n')
    flags = {
        'one': ['--teacher', teachers['narrow']],
        'two': ['--teacher', teachers['wide'], '--teacher-class-map', 'auto',
                '--teacher', teachers['narrow'], '--teacher-class-map', str(tmp_path / 'map.txt')],
    }  # fmt: skip
    for name, given in flags.items():
        train_main([image_folder, *FAST, '--epochs', '1', *given, '--output', str(tmp_path),
                    '--experiment', name])  # fmt: skip
    _same_run(tmp_path / 'one', tmp_path / 'two')


@pytest.mark.parametrize(
    'flags',
    [
        ['--teacher', 'headless', '--kd-loss', 'fitnet'],
        ['--kd-model-name', 'headless', '--kd-distill-type', 'feature'],
        ['--teacher', 'wide', '--kd-loss', 'prelogits'],  # another label set, no map: features
    ],
)
def test_feature_losses_take_any_teacher_whatever_its_head(
    image_folder, teachers, tmp_path, caplog, flags
):
    flags = [teachers.get(f, f) for f in flags]
    with caplog.at_level(logging.INFO):
        train_main([image_folder, *FAST, '--epochs', '1', *flags, '--output', str(tmp_path),
                    '--experiment', 'f'])  # fmt: skip
    row = _summary(tmp_path / 'f')[0]
    assert row['train_loss'] == row['train_loss'] and 'train_teacher_agreement' not in row


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--teacher', 'headless'], 'has no classifier (num_classes=0), but its logits'),
        (['--teacher', 'headless', '--kd-loss', 'fitnet', '--kd-deep-supervision', '1'],
         'has no classifier'),
        (['--teacher', 'wide'], 'predicts 7 classes but the student has 3; map its classes onto '
         "the data's with --teacher-class-map FILE|auto (auto matches all 3 classes by name)"),
        (['--teacher', 'narrow', '--num-classes', '2'],
         'predicts 3 classes but the student has 2; map'),
        (['--teacher', 'wide', '--teacher-class-map', 'nowhere.txt'], "'nowhere.txt': no such "),
    ],
)  # fmt: skip
def test_a_teacher_whose_classes_the_run_cannot_read_is_one_line(
    image_folder, teachers, tmp_path, run_cli, flags, message
):
    flags = [teachers.get(f, f) for f in flags]
    out = run_cli(cli, image_folder, *FAST, *flags, '--output', tmp_path)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and last.startswith('error: ') and message in last


def test_a_cache_of_a_headless_teacher_is_one_line(image_folder, teachers, tmp_path, run_cli):
    out = run_cli(cache_main, 'build', image_folder, *FAST, '--teacher', teachers['headless'],
                  '--top-k', '3', '--out', tmp_path / 'c')  # fmt: skip
    assert out.returncode == 2 and 'a teacher-output cache' in out.stderr


def test_a_teacher_that_names_the_datas_classes_in_another_order_says_so(caplog):
    """Class i of the teacher is not class i of the data: one line pointing at auto, which fixes
    it."""
    from timm_kd.class_map import teacher_class_map

    model = timm.create_model('test_vit', num_classes=3, img_size=32)
    model.pretrained_cfg = {**model.pretrained_cfg, 'label_names': ['class2', 'class0', 'class1']}
    data = ['class0', 'class1', 'class2']
    with caplog.at_level(logging.WARNING):
        assert teacher_class_map(None, model, data, 3, True, 't') is None
    assert 'names its classes in another order than the data' in caplog.text
    assert teacher_class_map('auto', model, data, 3, True, 't').groups == [(1,), (2,), (0,)]
    caplog.clear()
    model.pretrained_cfg['label_names'] = data
    with caplog.at_level(logging.WARNING):
        teacher_class_map(None, model, data, 3, True, 't')
    assert caplog.text == ''


def test_an_ensembles_args_yaml_with_maps_trains_the_same_run_again(
    image_folder, teachers, tmp_path
):
    """args.yaml records each teacher's map; --config of it trains the run again, figure for
    figure; an args.yaml written before maps existed (no class_map key) still loads."""
    import yaml

    (tmp_path / 'map.txt').write_text('0\n1\n2\n')
    flags = ['--teacher', teachers['wide'], '--teacher-class-map', 'auto', '--teacher',
             teachers['narrow'], '--teacher-class-map', str(tmp_path / 'map.txt')]  # fmt: skip
    common = [image_folder, *FAST, '--epochs', '1', '--output', str(tmp_path)]
    train_main([*common, *flags, '--experiment', 'first'])
    saved = tmp_path / 'first' / 'args.yaml'
    train_main([image_folder, '--config', str(saved), '--experiment', 'again'])
    _same_run(tmp_path / 'first', tmp_path / 'again')
    old = yaml.safe_load(saved.read_text())
    for member in old['teachers']:
        del member['class_map']
    old['teachers'] = old['teachers'][1:] * 2  # the narrow teacher twice, as before maps
    (tmp_path / 'old.yaml').write_text(yaml.safe_dump(old))
    train_main([image_folder, '--config', str(tmp_path / 'old.yaml'), '--experiment', 'old'])
    assert len(_summary(tmp_path / 'old')) == 1


def test_diagnose_reads_the_mapped_teacher_as_the_teacher_of_the_datas_classes(
    image_folder, teachers, tmp_path
):
    from timm_kd.cli.diagnose import main as diagnose_main

    torch.save(
        timm.create_model('test_resnet', num_classes=3).state_dict(), tmp_path / 'student.pth'
    )
    common = [image_folder, '--student', 'test_resnet', '--student-checkpoint',
              str(tmp_path / 'student.pth'), '--input-size', '3', '32', '32', '-j', '0',
              '--cka-images', '16', '-b', '8']  # fmt: skip
    narrow = diagnose_main([*common, '--teacher', teachers['narrow'], '--out', str(tmp_path / 'n')])
    wide = diagnose_main([*common, '--teacher', teachers['wide'], '--teacher-class-map', 'auto',
                          '--out', str(tmp_path / 'w')])  # fmt: skip
    assert wide['agreement_top1'] == narrow['agreement_top1']
    assert wide['kl_teacher_student'] == pytest.approx(narrow['kl_teacher_student'], rel=1e-5)
