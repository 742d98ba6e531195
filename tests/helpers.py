"""Helpers shared by the tests (plain functions; the fixtures built on them are in conftest.py): a tiny
config that trains in seconds on the CPU, and `python -m sweep.launch` run in a real subprocess against
a sweep folder and an MLflow sqlite store in a temp dir, with readers for what Tune and MLflow recorded."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from trainable.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
TINY = ["model.width=0.125", "data.dataset=synthetic", "data.synthetic_size=160", "train.batch_size=16",
        "train.epochs=2", "train.eval_batch_size=64", "train.device=cpu", "train.threads=1"]
CHECKPOINT_MARK = b"checkpoint_0".hex()
POLL_S = 0.05   # how often a wait looks at the file system; it waits for the event, however long


def tiny_config(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


def wait_until(happened: Callable[[], bool], process: subprocess.Popen | None = None,
               poll_s: float = POLL_S) -> bool:
    """Poll until `happened()`; False as soon as `process` has exited without it happening."""
    while not happened():
        if process is not None and process.poll() is not None:
            return happened()
        time.sleep(poll_s)
    return True


def chromium() -> str | None:
    """The headless browser of the page tests (.ci/run installs it with apt); None when missing."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch_command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweep.launch", str(SMOKE), "--storage", str(tmp_path / "sweeps"),
            "--mlflow-uri", tracking_uri(tmp_path), *extra]


def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def launch_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)
    return env


def run_launch(tmp_path: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The same command a user types, from the temp dir (so ./mlruns lands there). `timeout` only
    stops a hung launcher from hanging the test run."""
    return subprocess.run(launch_command(tmp_path, *extra), cwd=tmp_path, env=launch_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_launch(tmp_path: Path, *extra: str, log_name: str = "first_run.log") -> subprocess.Popen:
    """Started in its own session so the test can SIGKILL the whole process group."""
    log = open(tmp_path / log_name, "w")
    return subprocess.Popen(launch_command(tmp_path, *extra), cwd=tmp_path, env=launch_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.glob("train_*trial_*") if p.is_dir())   # train_packed_trial_* too


def _newest_experiment_state(sweep_dir: Path) -> dict | None:
    """Tune's newest experiment state file (by the time in its name: a restore can touch the older
    files after the new one is written); None before the first one is complete."""
    files = sorted(sweep_dir.glob("experiment_state-*.json"), key=lambda p: p.name)
    try:
        return json.loads(files[-1].read_text()) if files else None
    except (OSError, json.JSONDecodeError):
        return None


def trial_statuses(sweep_dir: Path) -> dict[str, str]:
    """trial_id → status from Tune's newest experiment state file."""
    state = _newest_experiment_state(sweep_dir)
    trials = [json.loads(trial_json) for trial_json, _runtime in state["trial_data"]]
    return {trial["trial_id"]: trial["status"] for trial in trials}


def recorded_a_checkpoint(sweep_dir: Path) -> bool:
    """Whether Tune's experiment state names a trial checkpoint, so a restore resumes that trial from
    it. The checkpoint manager is stored pickled and hex-encoded: look for the folder's name in it."""
    state = _newest_experiment_state(sweep_dir)
    runtimes = [runtime for _trial, runtime in state["trial_data"]] if state else []
    return any(CHECKPOINT_MARK in runtime for runtime in runtimes)


def iterations(trial_dir: Path) -> list[int]:
    """training_iteration of every result the trial wrote, in order (result.json is appended)."""
    lines = (trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").exists() else []
    return [json.loads(line)["training_iteration"] for line in lines if line.strip()]


def trial_runs(tmp_path: Path, name: str = "smoke") -> list:
    from mlflow.tracking import MlflowClient   # here: MLflow takes seconds to import, most tests never need it
    client = MlflowClient(tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], "tags.`colorsweep.role` = 'trial'")


def epoch_steps(tmp_path: Path, run_id: str, metric: str = "val_control_error") -> list[int]:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri(tmp_path))
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def study_trials(url: str, name: str = "smoke") -> list:
    import optuna
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def assert_study_agrees(url: str, statuses: dict[str, str]) -> None:
    """The Optuna study holds one finished trial per Tune trial (same ids, none RUNNING, none twice)."""
    trials = study_trials(url)
    assert sorted(t.user_attrs["tune_trial_id"] for t in trials) == sorted(statuses), trials
    assert all(t.state.is_finished() and t.state.name != "FAIL" for t in trials), [t.state.name for t in trials]


def sweep_folder(tmp_path: Path, study_url: str | None = None) -> Path:
    """The smoke sweep's folder: its launcher's own with a database server's study (sweep.launch)."""
    from sweep.launch import launcher_name
    sweep_dir = tmp_path / "sweeps" / "smoke"
    return sweep_dir / launcher_name() if study_url and study_url.startswith("postgresql") else sweep_dir


def assert_complete(tmp_path: Path, epochs: int, study_url: str | None = None) -> None:
    """Every trial TERMINATED and finished in the study (the sweep folder's study.db unless
    `study_url`); exactly num_samples MLflow trial runs, one value per step."""
    sweep_dir = sweep_folder(tmp_path, study_url)
    statuses = trial_statuses(sweep_dir)
    assert len(statuses) == 4 and set(statuses.values()) == {"TERMINATED"}, statuses
    assert_study_agrees(study_url or f"sqlite:///{sweep_dir / 'study.db'}", statuses)
    runs = trial_runs(tmp_path)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(statuses)
    for run in runs:
        assert epoch_steps(tmp_path, run.info.run_id) == list(range(1, epochs + 1))
        assert run.info.status == "FINISHED"


def duplicate_steps(tmp_path: Path, name: str = "smoke") -> dict[str, list[int]]:
    """'run name/metric' → its steps, for every metric of every live run of the experiment (the
    parent run's included) that holds a step more than once."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name(name)
    found = {}
    for run in client.search_runs([experiment.experiment_id]):
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            if len(steps) != len(set(steps)):
                found[f"{run.info.run_name}/{key}"] = sorted(steps)
    return found


LEAVE_HOT_JOURNAL = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size=1")   # spill: changed pages reach the file before the commit
db.execute("BEGIN IMMEDIATE")
for i in range(3000):
    db.execute("insert into experiment_tags(key, value, experiment_id) values (?, ?, 0)", (f"k{i}", "x" * 500))
os.kill(os.getpid(), signal.SIGKILL)
"""


def leave_hot_journal(database: Path) -> None:
    """A real process SIGKILLed in the middle of a write to the store, as a kill during an MLflow
    write leaves it: a hot `-journal` that the next writer must roll back."""
    killed = subprocess.run([sys.executable, "-c", LEAVE_HOT_JOURNAL, str(database)])
    assert killed.returncode == -signal.SIGKILL
    assert database.with_name(database.name + "-journal").stat().st_size > 0


@contextmanager
def serve_folder(folder: Path, requests: list[str] | None = None) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving `folder` → its base URL; each request's path is
    appended to `requests` when given."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if requests is not None:
                requests.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url(name: str = "cifar-10-python.tar.gz") -> str:
    """A URL on 127.0.0.1 where nothing listens: a connection is refused at once, as offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def fake_official_archive(path: Path, per_batch: int = 4) -> str:
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


def make_smoke_sweep(base: Path) -> Path:
    """`base/sweeps/smoke` made by one smoke launch, or the finished one already there; the launch's
    stdout is kept in `base/launch.stdout`."""
    sweep = base / "sweeps" / "smoke"
    state = sweep / "colorsweep_state.json"
    if not (state.exists() and json.loads(state.read_text())["finished"]):
        base.mkdir(exist_ok=True)
        done = run_launch(base)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (base / "launch.stdout").write_text(done.stdout)
    return sweep


def sigkill_then_resume(tmp_path: Path, epochs: int, *extra: str,
                        study_url: str | None = None) -> subprocess.CompletedProcess:
    """SIGKILL the launcher's whole process group once Tune has recorded a trial's first checkpoint,
    run the same command (trials of `epochs` epochs) again, and check that it completes and that
    trials continued from their checkpoints."""
    extra = ("--set", f"train.epochs={epochs}", *extra)
    process = start_launch(tmp_path, *extra)
    sweep_dir = sweep_folder(tmp_path, study_url)
    recorded = wait_until(lambda: recorded_a_checkpoint(sweep_dir), process)
    assert recorded, (tmp_path / "first_run.log").read_text()[-3000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {d.name: iterations(d) for d in trial_dirs(sweep_dir)}
    assert any(before.values()), "no trial reported before the kill"
    assert not all(len(its) == epochs for its in before.values()), "sweep finished before the kill"
    done = run_launch(tmp_path, *extra)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming smoke" in done.stdout
    assert_complete(tmp_path, epochs=epochs, study_url=study_url)
    resumed = [d for d in trial_dirs(sweep_dir) if before.get(d.name)]
    assert resumed
    for trial_dir in resumed:
        after = iterations(trial_dir)[len(before[trial_dir.name]):]
        if after:  # continued from its checkpoint: the count did not start again at 1
            assert after[0] > 1, (trial_dir.name, before[trial_dir.name], after)
            assert after[-1] == epochs
    return done


def assert_packed_equals_plain(history: list) -> None:
    """Every loss of every step of plain trainers equals the packed step's, to float64 precision;
    `history` holds (plain losses per trainer, packed losses keyed by name, (K,)) per step."""
    for plain_losses, packed_losses in history:
        for k, losses in enumerate(plain_losses):
            for key, value in losses.items():
                assert float(value) == pytest.approx(float(packed_losses[key][k]), rel=1e-9, abs=1e-12), key
