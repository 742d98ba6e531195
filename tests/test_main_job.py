"""The README's main job as a new user meets it: `python -m sweep.launch search_spaces/saturation.yaml`
run from a fresh folder, with CIFAR-10 at the README's relative path `./dataset/cifar10/`, or with
no data and no network. And the driver's data preparation against a real HTTP server on 127.0.0.1:
downloaded once with a progress line, a wrong checksum one line with nothing left behind."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sweep.prepare import prepare_data
from trainable import cifar10
from trainable.config import DataConfig
from trainable.datasets import make_synthetic
from trainable.download import DataError
from tests.helpers import (ROOT, closed_port_url, fake_official_archive, launch_env, serve_folder,
                           trial_statuses)

README_JOB = ["-m", "sweep.launch", "search_spaces/saturation.yaml"]
TINY = ["--set", "model.width=0.0625", "--set", "num_samples=2", "--set", "max_concurrent=2",
        "--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "train.eval_batch_size=64"]
ANSI = re.compile(r"\x1b\[")


def fresh_clone(tmp_path: Path) -> Path:
    """A folder laid out as the repository's root is for the README's command: search_spaces/."""
    folder = tmp_path / "clone"
    (folder / "search_spaces").mkdir(parents=True)
    shutil.copy(ROOT / "search_spaces" / "saturation.yaml", folder / "search_spaces")
    return folder


def offline_env() -> dict[str, str]:
    """No network: every HTTP(S) request goes to a proxy port on 127.0.0.1 where nothing listens."""
    closed = closed_port_url("").rstrip("/")
    env = {**launch_env(), "http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed,
           "HTTPS_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_readme_job(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *README_JOB, *extra], cwd=folder, env=offline_env(),
                          capture_output=True, text=True, timeout=900)


def everything_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.integration
@pytest.mark.slow
def test_readme_main_job_finds_the_data_at_the_readme_path(tmp_path):
    folder = fresh_clone(tmp_path)
    data = folder / "dataset" / "cifar10"
    data.mkdir(parents=True)
    np.savez(data / "train.npz", images=make_synthetic(160, 32, 0))   # a layout cifar10 reads
    np.savez(data / "test.npz", images=make_synthetic(40, 32, 1))
    done = run_readme_job(folder, *TINY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sweep finished: 2 trials" in done.stdout and not ANSI.search(done.stdout)
    import torch
    if not torch.cuda.is_available():
        assert "no GPU: training this sweep takes " in done.stdout
    sweep = folder / "sweeps" / "saturation"
    assert set(trial_statuses(sweep).values()) == {"TERMINATED"} and len(trial_statuses(sweep)) == 2
    spec = (sweep / "colorsweep_spec.yaml").read_text()
    assert f"path: {data}" in spec                    # stored resolved, not as ./dataset/cifar10
    assert (folder / "mlflow.db").is_file() and "Traceback" not in done.stderr
    assert sorted(p.name for p in data.iterdir()) == ["test.npz", "train.npz"]   # nothing fetched


@pytest.mark.integration
def test_readme_main_job_without_data_or_network_is_one_line_and_leaves_nothing(tmp_path):
    folder = fresh_clone(tmp_path)
    before = everything_in(folder)
    done = run_readme_job(folder)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert str(folder / "dataset" / "cifar10") in lines[0] and "offline" in lines[0]
    assert "cifar10-jpeg.tar.gz" in lines[0]                       # the other archive it can read
    assert done.stdout == "" and everything_in(folder) == before    # no dataset/, sweeps/, mlflow.db


def test_the_driver_downloads_once_with_progress_and_trials_then_only_read(tmp_path, monkeypatch, capfd):
    served = tmp_path / "served"
    served.mkdir()
    md5 = fake_official_archive(served / "cifar-10-python.tar.gz")
    requests: list[str] = []
    cfg = DataConfig(dataset="cifar10", path=str(tmp_path / "dataset" / "cifar10"), download=True)
    with serve_folder(served, requests) as url:
        monkeypatch.setattr(cifar10, "CIFAR10_URL", f"{url}/cifar-10-python.tar.gz")
        monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5)
        first = prepare_data(cfg)
        again = prepare_data(cfg)                  # what a trial does: the data is there now
    assert first.shape == again.shape == (20, 32, 32, 3)
    assert requests == ["/cifar-10-python.tar.gz"]
    assert "downloading cifar-10-python.tar.gz" in capfd.readouterr().err


def test_a_wrong_checksum_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    fake_official_archive(served / "cifar-10-python.tar.gz")
    cfg = DataConfig(dataset="cifar10", path=str(tmp_path / "dataset" / "cifar10"), download=True)
    with serve_folder(served) as url:
        monkeypatch.setattr(cifar10, "CIFAR10_URL", f"{url}/cifar-10-python.tar.gz")
        monkeypatch.setattr(cifar10, "CIFAR10_MD5", "0" * 32)
        with pytest.raises(DataError, match="MD5 mismatch") as err:
            prepare_data(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "dataset").exists()


def test_unreadable_data_is_one_line(tmp_path):
    folder = tmp_path / "dataset" / "cifar10"
    folder.mkdir(parents=True)
    (folder / "train.npz").write_bytes(b"not an npz")
    with pytest.raises(DataError) as err:
        prepare_data(DataConfig(dataset="cifar10", path=str(folder)))
    assert str(err.value).startswith(str(folder / "train.npz")) and "\n" not in str(err.value)
    assert folder.is_dir()                          # a folder the user made stays


@pytest.mark.slow
def test_without_a_gpu_the_estimate_is_measured_and_names_a_cpu_sized_sweep():
    from sweep.prepare import cpu_estimate
    from sweep.spec import load_spec
    spec = load_spec(ROOT / "search_spaces" / "smoke.yaml", ["num_samples=1000", "train.epochs=300"])
    images = prepare_data(spec.config.data)
    line, _ = cpu_estimate(spec, images, 2.0)
    assert line.startswith("training this sweep takes ") and "\n" not in line
    assert "1000 trials x 300 epochs" in line and "measured now" in line
    suggested = int(re.search(r"--set num_samples=(\d+) --set data.train_limit=\d+$", line).group(1))
    assert 2 <= suggested < 1000
    small, _ = cpu_estimate(load_spec(ROOT / "search_spaces" / "smoke.yaml"), images, 2.0)
    assert small.endswith("it is CPU-sized already")
