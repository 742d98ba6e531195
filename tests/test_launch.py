"""The sweep launcher end to end: real local Ray, real Optuna, a real MLflow sqlite store in a temp
dir. Each test runs `python -m sweep.launch` as a user would, in a subprocess."""
from __future__ import annotations

import pytest

from trainable import layout as sweep_state
from sweep.launch import main
from sweep.spec import load_spec, resolved
from tests.helpers import (SMOKE, assert_complete, run_launch, sigkill_then_resume, trial_dirs,
                           trial_runs)


@pytest.mark.integration
@pytest.mark.slow
def test_smoke_sweep_end_to_end(tmp_path):
    done = run_launch(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
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
@pytest.mark.slow
def test_sigkill_then_same_command_resumes(tmp_path):
    # epochs of a second or two, so the kill lands mid-sweep
    sigkill_then_resume(tmp_path, 8, "--set", "data.synthetic_size=1200")


@pytest.mark.integration
@pytest.mark.slow
def test_time_budget_stops_and_same_command_completes(tmp_path):
    # Ray's start, the trials' start and a restore take ~15 s here: 40 s leaves room to progress,
    # and 30 epochs of 1,200 images are more than one budget can hold.
    command = ("--set", "train.epochs=30", "--set", "data.synthetic_size=1200", "--set", "time_budget=40s")
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
    assert_complete(tmp_path, epochs=30)


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
