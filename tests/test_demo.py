"""`python -m timm_kd.demo`: an interrupted or failed
run, and a missing dataset, end in one line."""

import pytest

from timm_kd.cli import demo
from timm_kd.errors import Interrupted, KDError


@pytest.fixture
def prepared(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, 'prepare_fashion_mnist', lambda root: None)
    return ['--output', str(tmp_path)]


def test_ctrl_c_is_one_line_saying_how_to_continue(prepared, monkeypatch, capsys):
    def interrupted(run):  # as fit ends on SIGINT, after its recovery checkpoint
        raise Interrupted('stopped by SIGINT in epoch 0 after update 3; continue with ...', 2)

    monkeypatch.setattr(demo, 'fit', interrupted)
    with pytest.raises(SystemExit) as info:
        demo.main(prepared)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 130 and len(err) == 1, err
    assert err[0] == (
        'interrupted: the demo stopped during its teacher run; run the same command again to '
        'continue where it stopped'
    )


def test_a_failed_run_is_its_one_line(prepared, monkeypatch, capsys):
    def failed(run):
        raise KDError('--resume auto: no checkpoint in ... loads; restore one')

    monkeypatch.setattr(demo, 'fit', failed)
    with pytest.raises(SystemExit) as info:
        demo.main(prepared)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err == [
        'error: --resume auto: no checkpoint in ... loads; restore one'
    ]


def test_no_data_and_no_network_prints_the_whole_reason(tmp_path, monkeypatch, capsys):
    import torchvision

    reason = (
        'Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror.example/, got:\n'
        '<urlopen error [Errno -3] Temporary failure in name resolution>'
    )

    def offline(*args, **kwargs):
        raise RuntimeError(reason)

    monkeypatch.setattr(demo, 'DEBIAN_DIR', str(tmp_path / 'none'))
    monkeypatch.setattr(torchvision.datasets, 'FashionMNIST', offline)
    with pytest.raises(SystemExit):
        demo.main(['--output', str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'Temporary failure in name resolution>);' in err[0], err
