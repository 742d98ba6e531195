"""The sweep launcher end to end: real local Ray, real Optuna, a real MLflow sqlite store in a temp
dir. Each test runs `python -m sweep.launch` as a user would, in a subprocess."""
from __future__ import annotations

import os
import signal
import time

import pytest

from sweep import state as sweep_state
from sweep.launch import main
from sweep.spec import load_spec, resolved
from tests.sweep_fixtures import (SMOKE, epoch_steps, iterations, run_launch, start_launch, trial_dirs,
                                  trial_runs, trial_statuses)

LONGER = ("--set", "train.epochs=5")  # five reports a trial: time to kill or stop a sweep midway


def assert_complete(tmp_path, epochs: int) -> None:
    """Every trial TERMINATED; exactly num_samples MLflow trial runs, one value per step."""
    sweep_dir = tmp_path / "sweeps" / "smoke"
    statuses = trial_statuses(sweep_dir)
    assert len(statuses) == 4 and set(statuses.values()) == {"TERMINATED"}, statuses
    runs = trial_runs(tmp_path)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(statuses)
    for run in runs:
        assert epoch_steps(tmp_path, run.info.run_id) == list(range(1, epochs + 1))
        assert run.info.status == "FINISHED"


@pytest.mark.integration
def test_smoke_sweep_end_to_end(tmp_path):
    started = time.monotonic()
    done = run_launch(tmp_path)
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert wall < 120, f"smoke sweep took {wall:.0f}s"
    assert "sweep finished: 4 trials" in done.stdout and "mlflow ui --backend-store-uri" in done.stdout
    assert_complete(tmp_path, epochs=2)
    run = trial_runs(tmp_path)[0]
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    artifacts = {a.path for folder in ("samples", "generator") for a in client.list_artifacts(run.info.run_id, folder)}
    assert artifacts == {"samples/epoch_0001.png", "samples/epoch_0002.png", "generator/generator.pt"}
    assert float(run.data.params["loss.saturation.weight"]) > 0 and run.data.params["model.width"] == "0.0625"
    for trial_dir in trial_dirs(tmp_path / "sweeps" / "smoke"):
        checkpoint = sorted(trial_dir.glob("checkpoint_*"))[-1]
        assert {"latest.pt", "samples.png"} <= {p.name for p in checkpoint.iterdir()}
    again = run_launch(tmp_path)
    assert again.returncode == 0 and "is finished" in again.stdout


@pytest.mark.integration
def test_sigkill_then_same_command_resumes(tmp_path):
    process = start_launch(tmp_path, *LONGER)
    sweep_dir = tmp_path / "sweeps" / "smoke"
    deadline = time.monotonic() + 180
    while not list(sweep_dir.glob("train_trial_*/checkpoint_*")) and time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "first_run.log").read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(2)  # let Tune record the checkpoint in its experiment state
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {d.name: iterations(d) for d in trial_dirs(sweep_dir)}
    assert any(before.values()), "no trial reported before the kill"
    assert not all(len(its) == 5 for its in before.values()), "sweep finished before the kill"
    done = run_launch(tmp_path, *LONGER)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming smoke" in done.stdout
    assert_complete(tmp_path, epochs=5)
    resumed = [d for d in trial_dirs(sweep_dir) if before.get(d.name)]
    assert resumed
    for trial_dir in resumed:
        after = iterations(trial_dir)[len(before[trial_dir.name]):]
        if after:  # continued from its checkpoint: the count did not start again at 1
            assert after[0] > 1, (trial_dir.name, before[trial_dir.name], after)
            assert after[-1] == 5


@pytest.mark.integration
def test_time_budget_stops_and_same_command_completes(tmp_path):
    # Ray's start, the trials' start and a restore take ~15 s here: 40 s leaves room to progress.
    command = ("--set", "train.epochs=8", "--set", "time_budget=40s")
    first = run_launch(tmp_path, *command)
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-3000:]
    assert "time budget reached" in first.stdout
    assert not sweep_state.read_state(tmp_path / "sweeps" / "smoke").finished
    for _ in range(6):
        later = run_launch(tmp_path, *command)
        assert later.returncode in (0, 3), later.stdout[-3000:] + later.stderr[-3000:]
        if later.returncode == 0:
            break
    assert later.returncode == 0 and "sweep finished: 4 trials" in later.stdout
    assert_complete(tmp_path, epochs=8)


def test_changed_spec_is_refused_before_ray(tmp_path, capsys):
    sweep_dir = tmp_path / "sweeps" / "smoke"
    sweep_state.write_spec(sweep_dir, resolved(load_spec(SMOKE, ["model.width=0.125"])))
    code = main([str(SMOKE), "--storage", str(tmp_path / "sweeps")])
    err = capsys.readouterr().err
    assert code == 2 and "config.model.width was 0.125, now 0.0625" in err and "--fresh" in err


def test_address_without_token_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    code = main([str(SMOKE), "--storage", str(tmp_path / "sweeps"), "--address", "127.0.0.1:1",
                 "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: --address: the cluster's token is missing")
    assert len(err.splitlines()) == 1
