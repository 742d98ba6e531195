"""Helpers for the sweep tests: run `python -m sweep.launch` in a real subprocess against a sweep
folder and an MLflow sqlite store in a temp dir, and read back what Tune and MLflow recorded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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
    """trial_id → status from Tune's newest experiment state file."""
    newest = max(sweep_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
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
