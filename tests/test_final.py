"""`python -m sweep.final` on the shared smoke sweep: train, SIGKILL, rerun the same command,
export, and colorize an image with the export alone."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from analysis.sweep_table import Sweep, SweepError
from sweep import colorize, final
from tests.helpers import launch_env, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EPOCHS = 30


@pytest.fixture
def sweep_dir(smoke_sweep_dir) -> Path:
    return smoke_sweep_dir


def final_command(sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "sweep.final", str(sweep_dir), "--epochs", str(EPOCHS)]


def kill_after_first_checkpoint(sweep_dir: Path, log: Path) -> None:
    with open(log, "w") as out:
        process = subprocess.Popen(final_command(sweep_dir), env=launch_env(), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    checkpoint = sweep_dir / "final" / "checkpoint" / "latest.pt"
    assert wait_until(checkpoint.exists, process), log.read_text()[-2000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]


def epochs_logged(sweep_dir: Path) -> list[int]:
    lines = (sweep_dir / "final" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


def final_run_ids(sweep_dir: Path) -> set[str]:
    """Runs tagged final in the sweep's experiment (other tests may have made some)."""
    state = json.loads((sweep_dir / "colorsweep_state.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    experiment = client.get_experiment_by_name("smoke")
    return {r.info.run_id for r in client.search_runs([experiment.experiment_id], "tags.final = 'true'")}


def test_final_survives_sigkill_and_exports_a_working_model(sweep_dir, tmp_path):
    shutil.rmtree(sweep_dir / "final", ignore_errors=True)
    runs_before = final_run_ids(sweep_dir)
    kill_after_first_checkpoint(sweep_dir, tmp_path / "killed.log")
    assert not (sweep_dir / "final" / "generator.pt").exists()
    assert 1 <= len(epochs_logged(sweep_dir)) < EPOCHS
    rerun = subprocess.run(final_command(sweep_dir), env=launch_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "resumed from" in rerun.stdout and "validation split (synthetic has no test split):" in rerun.stdout
    assert epochs_logged(sweep_dir) == list(range(1, EPOCHS + 1))
    record = json.loads((sweep_dir / "final" / "final.json").read_text())
    test_metrics = json.loads((sweep_dir / "final" / "test_metrics.json").read_text())
    assert 0 <= test_metrics["test_control_error"] < 1 and "test_realism_abhist" in test_metrics
    assert final_run_ids(sweep_dir) - runs_before == {record["mlflow_run_id"]}  # one run across the kill
    check_mlflow_run(sweep_dir, record)
    check_export_colorizes(sweep_dir, tmp_path)
    check_rerun_logs_nothing_twice(sweep_dir, record)


def check_mlflow_run(sweep_dir: Path, record: dict) -> None:
    state = json.loads((sweep_dir / "colorsweep_state.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["colorsweep.trial_id"] == record["trial_id"]
    assert run.data.tags["colorsweep.sweep"] == "smoke"
    assert run.data.tags["mlflow.parentRunId"] == state["parent_run_id"]
    trial_run = client.get_run(run.data.tags["colorsweep.trial_run_id"])
    assert trial_run.data.tags["trial_id"] == record["trial_id"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_control_error")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))  # each epoch once across kill and rerun
    assert "test_pixel_acc_5" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"generator.pt", "samples.png", "model"}
    assert len(client.search_model_versions(f"name = 'smoke' and run_id = '{run.info.run_id}'")) == 1


def check_export_colorizes(sweep_dir: Path, tmp_path: Path) -> None:
    alone = tmp_path / "elsewhere" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(sweep_dir / "final" / "generator.pt", alone)
    gray = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (24, 1))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert colorize.main([str(alone), str(tmp_path / "gray.png"), "-o", str(tmp_path / "out.png")]) == 0
    colored = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).astype(int)
    assert colored.shape == (24, 40, 3)
    assert np.abs(colored[..., 0] - colored[..., 2]).mean() > 1  # not gray any more


def test_final_refuses_bad_input(sweep_dir, capsys):
    assert final.main([str(sweep_dir), "--rank", "99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 ranked" in err[0]
    (sweep_dir / "final").mkdir(exist_ok=True)
    (sweep_dir / "final" / "final.json").write_text(json.dumps({"trial_id": "someone-else"}))
    assert final.main([str(sweep_dir), "--epochs", "1"]) == 2
    assert "holds the final run of trial someone-else" in capsys.readouterr().err
    shutil.rmtree(sweep_dir / "final")


def check_rerun_logs_nothing_twice(sweep_dir: Path, record: dict) -> None:
    """The same command on a finished final run reuses its test metrics (no second FID) and logs
    nothing new."""
    tested = sweep_dir / "final" / "test_metrics.json"
    before = (tested.stat().st_mtime_ns, tested.read_text())
    again = subprocess.run(final_command(sweep_dir), env=launch_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert (tested.stat().st_mtime_ns, tested.read_text()) == before
    state = json.loads((sweep_dir / "colorsweep_state.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    for key in ("test_control_error", "val_control_error"):
        steps = [m.step for m in client.get_metric_history(record["mlflow_run_id"], key)]
        assert len(steps) == len(set(steps)), key
    assert client.get_run(record["mlflow_run_id"]).data.tags["colorsweep.evaluated_on"].startswith("validation split")
    assert len(client.search_model_versions(f"name = 'smoke' and run_id = '{record['mlflow_run_id']}'")) == 1


def test_final_without_a_finished_trial_says_so_in_one_line(tmp_path):
    table = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": ["ERROR", "ERROR", "RUNNING"],
                          "iterations": [0, 0, 0]})
    sweep = Sweep(name="s", table=table, params=[], path=tmp_path)
    with pytest.raises(SweepError) as raised:
        final.pick_trial(sweep, 1)
    assert str(raised.value) == "no finished trial to train: the sweep has 3 trials (2 ERROR, 1 RUNNING)"
