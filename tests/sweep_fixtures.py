"""Helpers for the sweep tests: run `python -m sweep.launch` in a real subprocess against a sweep
folder and an MLflow sqlite store in a temp dir, and read back what Tune and MLflow recorded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


def launch_command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweep.launch", str(SMOKE), "--storage", str(tmp_path / "sweeps"),
            "--mlflow-uri", tracking_uri(tmp_path), *extra]


def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def launch_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)
    return env


def run_launch(tmp_path: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The same command a user types, from the temp dir (so ./mlruns lands there)."""
    return subprocess.run(launch_command(tmp_path, *extra), cwd=tmp_path, env=launch_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_launch(tmp_path: Path, *extra: str) -> subprocess.Popen:
    """Started in its own session so the test can SIGKILL the whole process group."""
    log = open(tmp_path / "first_run.log", "w")
    return subprocess.Popen(launch_command(tmp_path, *extra), cwd=tmp_path, env=launch_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.glob("train_*trial_*") if p.is_dir())   # train_packed_trial_* too


def trial_statuses(sweep_dir: Path) -> dict[str, str]:
    """trial_id → status from Tune's newest experiment state file (by the time in its name: a
    restore can touch the older files after the new one is written)."""
    newest = max(sweep_dir.glob("experiment_state-*.json"), key=lambda p: p.name)
    state = json.loads(newest.read_text())
    statuses = {}
    for trial_json, _runtime in state["trial_data"]:
        trial = json.loads(trial_json)
        statuses[trial["trial_id"]] = trial["status"]
    return statuses


def iterations(trial_dir: Path) -> list[int]:
    """training_iteration of every result the trial wrote, in order (result.json is appended)."""
    lines = (trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").exists() else []
    return [json.loads(line)["training_iteration"] for line in lines if line.strip()]


def trial_runs(tmp_path: Path, name: str = "smoke") -> list:
    client = MlflowClient(tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], "tags.`colorsweep.role` = 'trial'")


def epoch_steps(tmp_path: Path, run_id: str, metric: str = "val_control_error") -> list[int]:
    client = MlflowClient(tracking_uri(tmp_path))
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def assert_complete(tmp_path: Path, epochs: int) -> None:
    """Every trial TERMINATED; exactly num_samples MLflow trial runs, one value per step."""
    sweep_dir = tmp_path / "sweeps" / "smoke"
    statuses = trial_statuses(sweep_dir)
    assert len(statuses) == 4 and set(statuses.values()) == {"TERMINATED"}, statuses
    runs = trial_runs(tmp_path)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(statuses)
    for run in runs:
        assert epoch_steps(tmp_path, run.info.run_id) == list(range(1, epochs + 1))
        assert run.info.status == "FINISHED"


def sigkill_then_resume(tmp_path: Path, epochs: int, *extra: str) -> subprocess.CompletedProcess:
    """SIGKILL the launcher's whole process group after the first checkpoint, run the same command
    (trials of `epochs` epochs) again, and check that it completes and that trials continued from
    their checkpoints."""
    extra = ("--set", f"train.epochs={epochs}", *extra)
    process = start_launch(tmp_path, *extra)
    sweep_dir = tmp_path / "sweeps" / "smoke"
    deadline = time.monotonic() + 180
    while not any(list(d.glob("checkpoint_*")) for d in trial_dirs(sweep_dir)) and time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "first_run.log").read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(2)  # let Tune record the checkpoint in its experiment state
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {d.name: iterations(d) for d in trial_dirs(sweep_dir)}
    assert any(before.values()), "no trial reported before the kill"
    assert not all(len(its) == epochs for its in before.values()), "sweep finished before the kill"
    done = run_launch(tmp_path, *extra)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming smoke" in done.stdout
    assert_complete(tmp_path, epochs=epochs)
    resumed = [d for d in trial_dirs(sweep_dir) if before.get(d.name)]
    assert resumed
    for trial_dir in resumed:
        after = iterations(trial_dir)[len(before[trial_dir.name]):]
        if after:  # continued from its checkpoint: the count did not start again at 1
            assert after[0] > 1, (trial_dir.name, before[trial_dir.name], after)
            assert after[-1] == epochs
    return done
