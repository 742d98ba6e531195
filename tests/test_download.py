"""download() and cifar10's data.download=true against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import pytest

from trainable import cifar10
from trainable.config import DataConfig
from trainable.data import load_data
from trainable.download import DataError, download
from tests.helpers import ROOT, closed_port_url, fake_official_archive, serve_folder


@pytest.fixture
def served(tmp_path):
    """(folder, base_url) of an HTTP server on 127.0.0.1 serving that folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    with serve_folder(folder) as url:
        yield folder, url


def test_good_md5_leaves_the_file(served, tmp_path):
    folder, url = served
    md5 = fake_official_archive(folder / "cifar-10-python.tar.gz")
    dest = tmp_path / "data" / "cifar-10-python.tar.gz"
    assert download(f"{url}/cifar-10-python.tar.gz", dest, md5, progress=False) == dest
    assert dest.read_bytes() == (folder / "cifar-10-python.tar.gz").read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_bad_md5_raises_and_leaves_nothing(served, tmp_path):
    folder, url = served
    fake_official_archive(folder / "cifar-10-python.tar.gz")
    dest = tmp_path / "data" / "cifar-10-python.tar.gz"
    with pytest.raises(DataError, match="MD5 mismatch"):
        download(f"{url}/cifar-10-python.tar.gz", dest, "0" * 32, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_missing_file_on_server_raises(served, tmp_path):
    _, url = served
    with pytest.raises(DataError, match="404"):
        download(f"{url}/absent.tar.gz", tmp_path / "absent.tar.gz", "0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "served"]


def test_cifar10_download_true_ends_with_loadable_data(served, tmp_path, monkeypatch):
    folder, url = served
    md5 = fake_official_archive(folder / "cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar10, "CIFAR10_URL", f"{url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5)
    root = tmp_path / "dataset" / "cifar10"
    data = load_data(DataConfig(dataset="cifar10", path=str(root), download=True, val_fraction=0.25), "cpu")
    assert (len(data.train), len(data.val)) == (15, 5)
    assert (root / "cifar-10-python.tar.gz").is_file() and (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert cifar10.load_cifar10(str(root), "test").shape == (4, 32, 32, 3)


def test_offline_says_where_to_put_the_files(tmp_path):
    dest = tmp_path / "cifar-10-python.tar.gz"
    with pytest.raises(DataError, match="offline") as err:
        download(closed_port_url(), dest, cifar10.CIFAR10_MD5, progress=False)
    assert f"put it at {dest}" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="offline") as err:
        cifar10.load_cifar10(str(tmp_path / "data"), "train", download_missing=True, url=closed_port_url())
    assert str(tmp_path / "data" / "cifar-10-python.tar.gz") in str(err.value)


def test_a_failed_write_is_not_called_offline(served, tmp_path):
    """A disk that refuses the bytes (a file-size limit stands in for a full disk: writes fail with
    EFBIG) is a write error naming the folder, not 'this machine seems offline'."""
    import subprocess
    import sys
    folder, url = served
    (folder / "big.bin").write_bytes(bytes(200_000))
    dest = tmp_path / "data" / "big.bin"
    script = ("import resource, signal, sys\n"
              "from trainable.download import DataError, download\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))\n"
              "try:\n"
              f"    download({url + '/big.bin'!r}, sys.argv[1], '0' * 32, progress=False)\n"
              "except DataError as err:\n"
              "    print(err)\n")
    done = subprocess.run([sys.executable, "-c", script, str(dest)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert "cannot write the download there" in done.stdout and "offline" not in done.stdout, done
    assert list(dest.parent.iterdir()) == []
