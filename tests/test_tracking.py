"""The MLflow module on real sqlite stores in temp folders: a store survives a SIGKILL at any moment
of its creation, a half-created one is repaired, the parent run carries the sweep's best values
and Pareto table, each step is logged once across a resume, and readers never create a store."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis import rank, tracking
from analysis.pareto import DEFAULT_OBJECTIVES
from analysis.store import StoreError, ensure_store

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUILD = "import sys; from analysis.store import ensure_store; ensure_store(sys.argv[1]); print('built')"


@pytest.fixture(scope="module")
def built_store(tmp_path_factory) -> Path:
    """One store built once; tests copy it (building one takes MLflow several seconds)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    ensure_store(f"sqlite:///{path}")
    return path


def store_copy(built_store: Path, folder: Path) -> str:
    shutil.copy(built_store, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def temp_store_size(folder: Path) -> int:
    """Size of the largest temp store file, -1 when there is none. sqlite's journal comes and goes
    while we look, so a file that vanishes between glob and stat counts as absent."""
    sizes = [-1]
    for temp in folder.glob(".mlflow.db.tmp-*"):
        try:
            sizes.append(temp.stat().st_size)
        except FileNotFoundError:
            pass
    return max(sizes)


def kill_building(folder: Path, moment) -> bool:
    """Start a process that builds the store and SIGKILL it once `moment(folder)` is true (or it
    has finished); True when the kill landed while it was still building."""
    process = subprocess.Popen([sys.executable, "-c", BUILD, f"sqlite:///{folder / 'mlflow.db'}"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and not moment(folder):
        time.sleep(0.005)
    building = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return building


MOMENTS = {"temp file made": lambda f: temp_store_size(f) >= 0,
           "tables being created": lambda f: temp_store_size(f) > 0,
           "migrations running": lambda f: temp_store_size(f) >= 300_000,
           "migrations nearly done": lambda f: temp_store_size(f) >= 700_000,
           "store in place": lambda f: (f / "mlflow.db").exists()}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_store_survives_sigkill_during_creation(tmp_path, moment):
    killed_while_building = kill_building(tmp_path, MOMENTS[moment])
    if moment != "store in place":      # the kill hit a half-built store: nothing in place yet
        assert killed_while_building and not (tmp_path / "mlflow.db").exists()
        assert temp_store_size(tmp_path) >= 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment, parent = tracking.start_sweep_run(uri, "after-kill", None)
    client = MlflowClient(uri)
    assert client.get_run(parent).info.experiment_id == experiment
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    assert not list(tmp_path.glob(".mlflow.db.tmp-*"))          # the killed builder's temp is gone


def half_created(path: Path, with_run: bool) -> None:
    """What a kill during MLflow's own first migration leaves: a batch-migration temp table."""
    with sqlite3.connect(path) as db:
        db.execute("create table runs (run_uuid text)")
        db.execute("create table _alembic_tmp_runs (run_uuid text)")
        if with_run:
            db.execute("insert into runs values ('abc')")


def test_half_created_store_is_rebuilt_and_one_with_runs_refused(tmp_path):
    half_created(tmp_path / "mlflow.db", with_run=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.start_sweep_run(uri, "repaired", None)
    assert MlflowClient(uri).get_experiment_by_name("repaired") is not None
    assert len(list(tmp_path.glob("mlflow.db.broken-*"))) == 1   # moved aside, not deleted
    (tmp_path / "other").mkdir()
    half_created(tmp_path / "other" / "mlflow.db", with_run=True)
    with pytest.raises(StoreError, match="half-migrated"):
        ensure_store(f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}")


def report(tracker: tracking.SweepTracker, trial: str, step: int, control: float, realism: float) -> bool:
    tracker.trial_run(trial, trial, {"loss.saturation.weight": float(len(trial))})
    return tracker.log_result(trial, {"epoch": step, "val_control_error": control,
                                      "val_realism_abhist": realism, "done": False}, step, {})


def test_parent_run_carries_best_values_and_pareto_table(built_store, tmp_path):
    uri = store_copy(built_store, tmp_path)
    experiment, parent = tracking.start_sweep_run(uri, "sweep", None)
    tracker = tracking.SweepTracker(uri, experiment, parent)
    finals = {"a": (0.10, 0.50), "bb": (0.30, 0.20), "ccc": (0.40, 0.60)}   # ccc is dominated
    for trial, (control, realism) in finals.items():
        assert report(tracker, trial, 1, control + 1, realism + 1)
        assert report(tracker, trial, 2, control, realism)
        tracker.end_trial(trial, "FINISHED")
    tracker.end_sweep(True, DEFAULT_OBJECTIVES)
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_val_control_error"] == pytest.approx(0.10)
    assert run.data.metrics["best_val_realism_abhist"] == pytest.approx(0.20)
    table = json.loads(Path(client.download_artifacts(parent, tracking.PARETO_TABLE, str(tmp_path))).read_text())
    front = {row[table["columns"].index("trial_id")] for row in table["data"]}
    assert front == {"a", "bb"}
    note = run.data.tags[tracking.NOTE_TAG]          # the run page's description
    assert "val_control_error 0.1" in note and "| a |" in note and "| ccc |" not in note


def test_resumed_tracker_logs_each_step_once(built_store, tmp_path):
    uri = store_copy(built_store, tmp_path)
    experiment, parent = tracking.start_sweep_run(uri, "sweep", None)
    first = tracking.SweepTracker(uri, experiment, parent)
    assert report(first, "t", 1, 0.5, 0.5) and report(first, "t", 2, 0.4, 0.4)
    again_experiment, again_parent = tracking.start_sweep_run(uri, "sweep", parent)   # a resume
    assert (again_experiment, again_parent) == (experiment, parent)
    resumed = tracking.SweepTracker(uri, experiment, parent)
    assert not report(resumed, "t", 2, 0.4, 0.4)
    assert report(resumed, "t", 3, 0.3, 0.3)
    run_id = resumed.trial_run("t", "t", {})
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "val_control_error")]
    assert sorted(steps) == [1, 2, 3]
    tracking.log_new_steps(_state(uri, parent), run_id, {3: {"epoch": 3, "x": 1.0}}, "epoch")
    assert len(MlflowClient(uri).get_metric_history(run_id, "epoch")) == 3


def test_a_report_repeating_the_last_position_is_not_logged_again(built_store, tmp_path):
    """A trial restored at its last epoch reports once more for Tune (training_iteration one higher):
    the same report, so no new MLflow step, also when a new tracker (a relaunch) sees it."""
    uri = store_copy(built_store, tmp_path)
    experiment, parent = tracking.start_sweep_run(uri, "sweep", None)
    tracker = tracking.SweepTracker(uri, experiment, parent)
    assert report(tracker, "t", 1, 0.5, 0.5) and report(tracker, "t", 2, 0.4, 0.4)
    relaunched = tracking.SweepTracker(uri, experiment, parent)
    relaunched.trial_run("t", "t", {})
    assert not relaunched.log_result("t", {"epoch": 2, "val_control_error": 0.4}, 3, {})
    assert relaunched.log_result("t", {"epoch": 2, "epoch_step": 5, "val_control_error": 0.3}, 3, {})
    run_id = relaunched.trial_run("t", "t", {})
    assert sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "val_control_error")) == [1, 2, 3]


def _state(uri: str, parent: str):
    from trainable.layout import SweepState
    return SweepState(False, uri, "sweep", parent)


def test_rank_of_a_missing_experiment_creates_no_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert rank.main(["mlflow:nosuch"]) == 2
    assert rank.main(["mlflow:nosuch", "--mlflow-uri", f"sqlite:///{tmp_path / 'elsewhere.db'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("no MLflow store at" in line for line in err)
    assert os.listdir(tmp_path) == []


def test_final_run_recorded_in_a_replaced_store_starts_a_new_one(built_store, tmp_path):
    """final.json names a run the store no longer holds (the store was replaced): a new final run,
    not an MLflow traceback."""
    import pandas as pd

    from analysis.sweep_table import Sweep
    uri = store_copy(built_store, tmp_path)
    experiment, parent = tracking.start_sweep_run(uri, "sweep", None)
    sweep = Sweep("sweep", pd.DataFrame(), [], path=tmp_path)
    run_id = tracking.start_final_run(_state(uri, parent), sweep, "t1", 1, "0" * 32, {"model.width": 0.25})
    run = MlflowClient(uri).get_run(run_id)
    assert run_id != "0" * 32 and run.info.experiment_id == experiment and run.info.status == "RUNNING"
    assert tracking.start_final_run(_state(uri, parent), sweep, "t1", 1, run_id, {}) == run_id
    assert not tracking.reopened(MlflowClient(uri), parent, experiment="no-such-experiment")


def test_building_a_store_removes_only_dead_builders_temps(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()                                                   # its pid is free now
    dead = [tmp_path / f".mlflow.db.tmp-{finished.pid}{side}" for side in ("", "-journal")]
    builder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    alive = tmp_path / f".mlflow.db.tmp-{builder.pid}-journal"        # a live builder's sqlite journal
    try:
        for path in (*dead, alive):
            path.write_bytes(b"x")
        ensure_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert alive.exists() and not any(path.exists() for path in dead)
    finally:
        builder.communicate(b"")
