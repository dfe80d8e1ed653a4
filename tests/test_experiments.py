"""`python -m timm_kd.experiments pitfall`: the grid
runs through timm_kd.fit, resumes, and summarizes."""

import csv
import os

import pytest

from timm_kd.cli.experiments.pitfall import main as pitfall
from timm_kd.cli.experiments.pitfall import summarize


def test_summary_table_and_plot_from_rows(tmp_path):
    rows = [
        dict(fraction=f, n_train=n, method=m, seed=s, top1=acc + s, seconds=1.0)
        for f, n, base in ((0.1, 6000, 80.0), (1.0, 60000, 90.0))
        for m, acc in (
            ('scratch', base - 1),
            ('kd', base),
            ('dkd', base + (1.0 if f < 1 else 0.2)),
            ('dist', base + 0.5),
        )
        for s in (0, 1)
    ]
    table = summarize(rows, ['kd', 'dkd', 'dist'], str(tmp_path))
    assert '| 0.1 | 6000 | 79.50 | 80.50 | 81.50 | 81.00 | +1.00 | +0.50 |' in table
    assert '| 1 | 60000 | 89.50 | 90.50 | 90.70 | 91.00 | +0.20 | +0.50 |' in table
    assert (tmp_path / 'pitfall.png').stat().st_size > 1000 and (
        tmp_path / 'results.md'
    ).read_text() == table + '\n'


@pytest.fixture
def in_process_training(monkeypatch):
    """The runs the grid trains (`timm_kd.fit`), counted."""
    from timm_kd.cli import demo

    started = []
    fit = demo.fit
    monkeypatch.setattr(demo, 'fit', lambda run: started.append(run) or fit(run))
    return started


def test_grid_on_an_image_folder_runs_and_resumes(image_folder, tmp_path, in_process_training):
    argv = [
        '--output',
        str(tmp_path),
        '--data',
        image_folder,
        '--dataset',
        '',
        '--val-split',
        'validation',
        '--fractions',
        '0.5',
        '1.0',
        '--methods',
        'kd',
        'dkd',
        '--epochs',
        '1',
        '-b',
        '8',
    ]
    pitfall(argv)
    with open(tmp_path / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['fraction'], r['method'], r['n_train']) for r in rows] == [
        ('0.5', 'scratch', '24'),
        ('0.5', 'kd', '24'),
        ('0.5', 'dkd', '24'),
        ('1.0', 'scratch', '48'),
        ('1.0', 'kd', '48'),
        ('1.0', 'dkd', '48'),
    ]
    # half the data, twice the epochs: the same number of steps
    with open(tmp_path / 'f0.5_kd_s0' / 'summary.csv') as f:
        assert len(list(csv.DictReader(f))) == 2
    assert os.path.isfile(tmp_path / 'pitfall.png')
    stamps = {p: os.path.getmtime(tmp_path / p / 'last.pth.tar') for p in ('teacher', 'f1_kd_s0')}
    assert len(in_process_training) == 7  # the teacher and six cells
    pitfall(argv)  # a rerun finds every cell done and trains nothing
    assert stamps == {p: os.path.getmtime(tmp_path / p / 'last.pth.tar') for p in stamps}
