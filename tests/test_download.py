"""download() and cifar10's data.download=true against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from trainable import cifar10
from trainable.config import DataConfig
from trainable.data import load_data
from trainable.download import DataError, download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    """(folder, base_url) of an HTTP server on 127.0.0.1 serving that folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _fake_official_archive(path: Path, per_batch: int = 4) -> str:
    """A cifar-10-python.tar.gz with random images in the official pickled format; returns its MD5."""
    batches = path.parent / "build" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [1] * per_batch, b"data": data, b"filenames": []}
        (batches / name).write_bytes(pickle.dumps(batch, protocol=2))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    return hashlib.md5(path.read_bytes()).hexdigest()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def test_good_md5_leaves_the_file(served, tmp_path):
    folder, url = served
    md5 = _fake_official_archive(folder / "cifar-10-python.tar.gz")
    dest = tmp_path / "data" / "cifar-10-python.tar.gz"
    assert download(f"{url}/cifar-10-python.tar.gz", dest, md5, progress=False) == dest
    assert dest.read_bytes() == (folder / "cifar-10-python.tar.gz").read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_bad_md5_raises_and_leaves_nothing(served, tmp_path):
    folder, url = served
    _fake_official_archive(folder / "cifar-10-python.tar.gz")
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
    md5 = _fake_official_archive(folder / "cifar-10-python.tar.gz")
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
        download(_closed_port_url(), dest, cifar10.CIFAR10_MD5, progress=False)
    assert f"put it at {dest}" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="offline") as err:
        cifar10.load_cifar10(str(tmp_path / "data"), "train", download_missing=True, url=_closed_port_url())
    assert str(tmp_path / "data" / "cifar-10-python.tar.gz") in str(err.value)
