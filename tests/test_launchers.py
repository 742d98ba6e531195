"""Several launchers on one study (docs/study.md, "Several machines without a cluster"): real
launchers as separate process groups sharing a real PostgreSQL study, a PostgreSQL MLflow store and
one --storage folder; one SIGKILLed mid-trial, its trial taken over after a short lease and resumed
from its checkpoint; and the inputs refused before Ray starts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweep.launch import main
from sweep.spec import load_spec, resolved
from sweep.study import StudyError, check_study, open_study, study_form
from tests.helpers import SMOKE, launch_env, wait_until

TIMEOUT_S = 900     # only stops a hung launcher from hanging the run


def _command(shared: Path, study: str, mlflow: str, launcher: str, *sets: str) -> list[str]:
    extra = [arg for assignment in sets for arg in ("--set", assignment)]
    return [sys.executable, "-m", "sweep.launch", str(SMOKE), "--storage", str(shared), "--study-storage", study,
            "--mlflow-uri", mlflow, "--launcher", launcher, "--set", "max_concurrent=1", *extra]


def _start(tmp_path: Path, command: list[str], name: str) -> subprocess.Popen:
    """A launcher in its own session (process group), from its own folder (as on its own machine)."""
    home = tmp_path / name
    home.mkdir()
    return subprocess.Popen(command, cwd=home, env=launch_env(), stdout=open(home / "log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _finish(tmp_path: Path, process: subprocess.Popen, name: str) -> str:
    process.wait(timeout=TIMEOUT_S)
    log = (tmp_path / name / "log").read_text()
    assert process.returncode == 0, log[-4000:]
    return log


def _mlflow(uri: str):
    from mlflow import MlflowClient
    from analysis.store import resolve_tracking_uri
    client = MlflowClient(resolve_tracking_uri(uri))
    return client, client.get_experiment_by_name("smoke").experiment_id


def _trial_runs(uri: str) -> dict[str, str]:
    """Study trial number → its one live MLflow run (a second run of one trial fails here)."""
    from analysis.mlflow_runs import STUDY_TRIAL
    client, experiment = _mlflow(uri)
    runs = client.search_runs([experiment], "tags.`colorsweep.role` = 'trial'")
    numbers = [r.data.tags[STUDY_TRIAL] for r in runs]
    assert len(numbers) == len(set(numbers)), numbers
    return {r.data.tags[STUDY_TRIAL]: r.info.run_id for r in runs}


def _steps(uri: str, run_id: str, metric: str = "val_control_error") -> list[int]:
    client, _ = _mlflow(uri)
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def _one_parent(uri: str) -> None:
    client, experiment = _mlflow(uri)
    assert len(client.search_runs([experiment], "tags.`colorsweep.role` = 'sweep'")) == 1


@pytest.mark.integration
@pytest.mark.slow
def test_two_launchers_share_one_study(tmp_path, postgres_url, mlflow_postgres_url):
    """Two launchers, one trial at a time each, on one study of four trials: together they finish
    four, no params twice, one MLflow run per study trial with each epoch once, one parent run."""
    shared = tmp_path / "shared"
    launchers = {name: _start(tmp_path, _command(shared, postgres_url, mlflow_postgres_url, name), name)
                 for name in ("a", "b")}
    logs = {name: _finish(tmp_path, process, name) for name, process in launchers.items()}
    trials = optuna.load_study(study_name="smoke", storage=postgres_url).trials
    assert len(trials) == 4 and {t.state.name for t in trials} == {"COMPLETE"}, trials
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    runs = _trial_runs(mlflow_postgres_url)
    assert sorted(runs) == sorted(str(t.number) for t in trials)
    assert all(_steps(mlflow_postgres_url, run) == [1, 2] for run in runs.values())
    _one_parent(mlflow_postgres_url)
    assert all("sweep finished" in log for log in logs.values())


def _reported(url: str, folder: Path) -> bool:
    """Whether a trial leased by the launcher of `folder` has made its first report."""
    import sqlalchemy as sa
    from sweep.leases import LEASES
    from sweep.study import database_url
    try:
        study = optuna.load_study(study_name="smoke", storage=url)
    except KeyError:          # not made yet
        return False
    engine = sa.create_engine(database_url(url))
    try:
        with engine.connect() as db:
            held = set(db.execute(sa.select(LEASES.c.trial_id).where(LEASES.c.folder == str(folder))).scalars())
    except sa.exc.ProgrammingError:    # the lease table not made yet
        return False
    finally:
        engine.dispose()
    return any(t._trial_id in held and t.intermediate_values for t in study.get_trials(deepcopy=False))


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_launchers_trial_is_taken_over_and_resumed(tmp_path, postgres_url, mlflow_postgres_url):
    """Launcher a is SIGKILLed (its whole process group) once its trial has reported; launcher b,
    started then, takes that trial over when its 5 s lease lapses, resumes it from a's checkpoint in
    the shared folder, and the study ends with both trials COMPLETE; the taken-over trial's MLflow
    run holds each epoch at most once, up to the last."""
    shared, sets = tmp_path / "shared", ("num_samples=2", "train.epochs=3", "lease=5s")
    first = _start(tmp_path, _command(shared, postgres_url, mlflow_postgres_url, "a", *sets), "a")
    reported = wait_until(lambda: _reported(postgres_url, shared / "smoke" / "a"), first)
    assert reported, (tmp_path / "a" / "log").read_text()[-4000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed = [t for t in optuna.load_study(study_name="smoke", storage=postgres_url).trials if t.intermediate_values]
    assert len(killed) == 1 and killed[0].state.name == "RUNNING"
    second = _start(tmp_path, _command(shared, postgres_url, mlflow_postgres_url, "b", *sets), "b")
    log = _finish(tmp_path, second, "b")
    assert f"took over trial {killed[0].number} from launcher {shared / 'smoke' / 'a'}" in log
    assert "resumed at epoch" in log and "started again" not in log
    trials = optuna.load_study(study_name="smoke", storage=postgres_url).trials
    assert len(trials) == 2 and {t.state.name for t in trials} == {"COMPLETE"}, trials
    # a report whose checkpoint a's trial saved but whose metrics a's driver died before taking is
    # a gap at that step, never a repeat; the steps go on from the checkpoint's
    steps = sorted(trials[killed[0].number].intermediate_values)
    assert steps[0] == 1 and steps[-1] == 3, steps
    runs = _trial_runs(mlflow_postgres_url)
    logged = _steps(mlflow_postgres_url, runs[str(killed[0].number)])
    assert len(runs) == 2 and logged == sorted(set(logged)) and logged[0] == 1 and logged[-1] == 3, logged
    _one_parent(mlflow_postgres_url)


def test_relative_storage_with_a_shared_study_is_refused_before_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "postgresql://u:secret@127.0.0.1:1/db"          # never reached: refused before connecting
    assert main([str(SMOKE), "--storage", "sweeps", "--study-storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert "--storage sweeps: a relative path" in err and len(err.splitlines()) == 1 and "secret" not in err
    assert main([str(SMOKE), "--storage", str(tmp_path / "sweeps"), "--launcher", "a"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--launcher: only with a shared --study-storage" in err and len(err.splitlines()) == 1
    assert main([str(SMOKE), "--storage", str(tmp_path / "s"), "--study-storage", url, "--launcher", "a/b"]) == 2
    assert "--launcher 'a/b'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_study_spec_leaves_out_what_each_machine_sets():
    here = resolved(load_spec(SMOKE, ["data.path=/content/data", "max_concurrent=2", "time_budget=1h"]))
    there = resolved(load_spec(SMOKE, ["data.path=/kaggle/input/data", "max_concurrent=8"]))
    assert here != there and study_form(here) == study_form(there)
    assert study_form(here)["config"]["data"] and "max_concurrent" not in study_form(here)


@pytest.mark.slow   # Optuna makes its tables: about a second
def test_a_joining_launcher_of_another_spec_is_refused_naming_the_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(url, load_spec(SMOKE, ["data.path=/machine/one"]), optuna.samplers.RandomSampler())
    check_study(url, load_spec(SMOKE, ["data.path=/machine/two", "max_concurrent=1"]))
    with pytest.raises(StudyError, match="config.train.epochs was 2, now 3"):
        check_study(url, load_spec(SMOKE, ["train.epochs=3"]))
