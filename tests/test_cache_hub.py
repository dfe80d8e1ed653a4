"""A cache that travels: pushed to a (local) Hub, pulled shard by shard, trained from elsewhere."""

import csv
import shutil

import pytest
import test_cache
from huggingface_hub import constants

from timm_kd.cli.cache import main as cache_main
from timm_kd.cli.train import cli
from timm_kd.cli.train import main as train_main

FAST, VIEWS = test_cache.FAST, test_cache.VIEWS


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_pushed_cache_trains_another_copy_of_the_data_as_the_live_run(
    image_folder,
    vit_teacher,
    hub_endpoint,
    tmp_path,
):
    built = tmp_path / 'built'
    cache_main(['build', image_folder, *FAST, *VIEWS, *vit_teacher, '--top-k', '3',
                '--out', str(built)])  # fmt: skip
    cache_main(['push', str(built), 'me/tiny-cache'])
    files = hub_endpoint.repos[('dataset', 'me/tiny-cache')]
    card = files['README.md'].decode()
    assert 'test_vit' in card and 'relative error' in card
    assert '| stored | top-3 of 3 classes |' in card
    assert {'manifest.json', 'epoch-0001-rank-0.values.npy', 'epoch-0001-rank-0.json'} <= set(files)

    elsewhere = tmp_path / 'elsewhere' / 'data'  # the same files under another root
    shutil.copytree(image_folder, elsewhere)
    out = ['--output', str(tmp_path)]
    train_main([image_folder, *FAST, *VIEWS, *vit_teacher, *out, '--experiment', 'live'])
    common = [str(elsewhere), *FAST, *VIEWS, *out, '--teacher-cache', 'hf-hub:me/tiny-cache']
    train_main([*common, '--experiment', 'from-hub', '--stop-epoch', '1'])
    assert 'epoch-0001-rank-0.values.npy' not in hub_endpoint.downloads  # only what it trains
    train_main([*common, '--experiment', 'from-hub', '--resume', 'auto'])
    live, hub = (
        _rows(tmp_path / 'live' / 'summary.csv'),
        _rows(tmp_path / 'from-hub' / 'summary.csv'),
    )
    assert len(live) == len(hub) == 2
    for a, b in zip(live, hub):
        assert all(float(a[k]) == pytest.approx(float(b[k]), abs=1e-5) for k in a)


@pytest.mark.parametrize('layout', [['--top-k', '2', '--layout', 'compact'], ['--layout', 'dense']])
def test_pull_then_offline_training_and_a_missing_repo_is_one_line(
    layout,
    image_folder,
    vit_teacher,
    hub_endpoint,
    tmp_path,
    run_cli,
    monkeypatch,
    capsys,
):
    built = tmp_path / 'built'
    one = [*FAST, '--epochs', '1']
    cache_main(['build', image_folder, *one, *vit_teacher, *layout, '--out', str(built)])
    cache_main(['push', str(built), 'me/c'])
    card = hub_endpoint.repos[('dataset', 'me/c')]['README.md'].decode()
    stored = 'top-2 of 3 classes' if 'compact' in layout else 'every one of 3 classes, 12 bits each'
    assert f'| stored | {stored} |' in card
    capsys.readouterr()
    cache_main(['pull', 'me/c'])
    local = capsys.readouterr().out.strip().splitlines()[-1]
    assert sorted(p.name for p in (tmp_path / 'hub_cache').rglob('epoch-*')) == sorted(
        p.name for p in built.glob('epoch-*')
    ) and local.endswith(tuple('0123456789abcdef'))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)  # what was pulled serves offline
    run = ['--output', str(tmp_path), '--experiment', 'offline', '--teacher-cache', 'hf-hub:me/c']
    train_main([image_folder, *one, *run])
    assert len(_rows(tmp_path / 'offline' / 'summary.csv')) == 1
    missing = run_cli(cli, image_folder, *one, '--output', tmp_path, '--experiment', 'x',
                      '--teacher-cache', 'hf-hub:me/absent')  # fmt: skip
    assert missing.returncode == 2
    assert 'error: cannot download the teacher cache hf-hub:me/absent (' in missing.stderr


def test_pushing_a_folder_that_is_no_cache_is_one_line(tmp_path, run_cli):
    from timm_kd.cli.cache import main

    result = run_cli(main, 'push', tmp_path / 'nothing', 'me/x')
    assert result.returncode == 2
    assert (
        result.stderr.startswith("error: '")
        and 'holds no manifest.json: push the --out' in result.stderr
    )
