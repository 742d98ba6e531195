"""The sweep launcher end to end: real local Ray, real Optuna, a real MLflow sqlite store in a temp
dir. Each test runs `python -m sweep.launch` as a user would, in a subprocess."""
from __future__ import annotations

import json
import os
import re
import signal

import pytest
import yaml

from trainable import layout as sweep_state
from trainable.checkpoint import load_checkpoint
from sweep.launch import main, rerun_command
from sweep.spec import load_spec, resolved
from tests.helpers import (SMOKE, assert_complete, duplicate_steps, epoch_steps, iterations, leave_hot_journal,
                           recorded_a_checkpoint, run_launch, start_launch, study_trials, trial_dirs, trial_runs,
                           wait_until)


@pytest.mark.integration
@pytest.mark.slow
def test_smoke_sweep_end_to_end(smoke_sweep_dir):
    """The session's shared smoke launch (conftest), checked whole; later tests only add to it."""
    tmp_path = smoke_sweep_dir.parents[1]
    stdout = (tmp_path / "launch.stdout").read_text()
    assert "sweep finished: 4 trials" in stdout and "mlflow ui --backend-store-uri" in stdout
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


ENDED = re.compile(r"^trial (\w+) (?:finished|stopped early[^:]*):", re.MULTILINE)


def _ended_trials(tmp_path) -> set[str]:
    """Trials any launch so far printed as ended (`trial X finished: ...`)."""
    return {found for log in tmp_path.glob("run*.log") for found in ENDED.findall(log.read_text())}


def _checkpoints(sweep_dir) -> int:
    return sum(1 for trial_dir in trial_dirs(sweep_dir) for _ in trial_dir.glob("checkpoint_*"))


@pytest.mark.integration
@pytest.mark.slow
def test_kills_at_the_moments_that_matter_then_the_same_command_finishes(tmp_path):
    """One sweep, its launcher's process group SIGKILLed at each moment in turn, each on its event:
    right after the 1st trial ended, during a trial's report (its checkpoint folder appears), right
    after the 2nd, with a hot MLflow journal left by a process killed mid-write, and right after the
    3rd. Each time the same command goes on; it then finishes within two relaunches with every trial
    finished, one MLflow run per trial and no step logged twice in any run, the parent's included."""
    command = ("--set", "max_concurrent=2", "--set", "train.epochs=3", "--set", "data.synthetic_size=400")
    sweep_dir = tmp_path / "sweeps" / "smoke"
    moments = [("after the 1st trial ended", lambda: len(_ended_trials(tmp_path)) >= 1),
               ("during a report", lambda: _checkpoints(sweep_dir) > reports_before),
               ("after the 2nd trial ended", lambda: len(_ended_trials(tmp_path)) >= 2),
               ("during an MLflow write", None),
               ("after the 3rd trial ended", lambda: len(_ended_trials(tmp_path)) >= 3)]
    killed, launches, before = [], 0, {}
    for moment, happened in moments:
        if happened is None:
            leave_hot_journal(tmp_path / "mlflow.db")
            killed.append(moment)
            continue
        reports_before = _checkpoints(sweep_dir)
        launches += 1
        process = start_launch(tmp_path, *command, log_name=f"run{launches}.log")
        if not wait_until(happened, process):     # the sweep ended before the moment came
            assert process.returncode == 0, (tmp_path / f"run{launches}.log").read_text()[-3000:]
            break
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        killed.append(moment)
        before = {d.name: iterations(d) for d in trial_dirs(sweep_dir)}
    assert len(killed) >= 3, killed        # at least the 1st end, a report and the 2nd end were hit
    for relaunch in range(2):
        done = run_launch(tmp_path, *command)
        if done.returncode == 0:
            break
    assert done.returncode == 0 and "sweep finished: 4 trials" in done.stdout, \
        (killed, done.stdout[-3000:] + done.stderr[-3000:])
    assert_complete(tmp_path, epochs=3)
    assert duplicate_steps(tmp_path) == {}
    for trial_dir in trial_dirs(sweep_dir):   # a killed trial continued from its checkpoint, not from 1
        after = iterations(trial_dir)[len(before.get(trial_dir.name, [])):]
        if before.get(trial_dir.name) and after:
            assert after[0] > 1, (trial_dir.name, before[trial_dir.name], after)
    again = run_launch(tmp_path, *command)
    assert again.returncode == 0 and "is finished" in again.stdout
    # The last moment: Tune saved every trial TERMINATED, the launcher was killed before it wrote
    # that the sweep is finished. Restored trials keep their last report's `done`, mostly False.
    state = sweep_state.read_state(sweep_dir)
    sweep_state.write_state(sweep_dir, sweep_state.SweepState(False, state.tracking_uri, state.experiment_name,
                                                              state.parent_run_id))
    last = run_launch(tmp_path, *command)
    assert last.returncode == 0 and "sweep finished: 4 trials" in last.stdout, last.stdout[-3000:]
    assert duplicate_steps(tmp_path) == {}


@pytest.mark.integration
@pytest.mark.slow
def test_time_budget_stops_and_same_command_completes(tmp_path, monkeypatch):
    """On events, not on the machine's speed: Ctrl+C once Tune has recorded a trial's checkpoint
    (130, state saved); a budget that ends before a restored trial can even start (3, state saved);
    then the same command continues from the checkpoints and finishes (0)."""
    command = ("--set", "train.epochs=3", "--set", "data.synthetic_size=400")
    sweep_dir = tmp_path / "sweeps" / "smoke"
    # the Ctrl+C waits for every running trial to save or finish, however slow the machine
    monkeypatch.setenv("COLORSWEEP_STOP_GRACE_S", "900")
    process = start_launch(tmp_path, *command)
    assert wait_until(lambda: recorded_a_checkpoint(sweep_dir), process), \
        (tmp_path / "first_run.log").read_text()[-3000:]
    os.killpg(process.pid, signal.SIGINT)              # Ctrl+C: the terminal signals the whole group
    assert process.wait() == 130, (tmp_path / "first_run.log").read_text()[-3000:]
    interrupted = (tmp_path / "first_run.log").read_text()
    assert "interrupted, state saved; to continue: python -m sweep.launch" in interrupted
    # the running trials saved where they were in their epoch before Tune stopped them
    saved = [load_checkpoint(folder) for folder in (sweep_dir / "interrupted").iterdir()]
    assert saved and all(state["epoch_step"] > 0 for state in saved), interrupted[-3000:]
    assert not (sweep_dir / ".stop").exists()
    for noise in ("Tuner.restore", "Checkpoint successfully created", "Token authentication", "ensorBoard",
                  "Traceback", "\x1b["):
        assert noise not in interrupted, noise
    budget = run_launch(tmp_path, *command, "--set", "time_budget=1s")
    assert budget.returncode == 3, budget.stdout[-3000:] + budget.stderr[-3000:]
    closing = next(line for line in budget.stdout.splitlines() if line.startswith("time budget reached"))
    assert "time_budget=1s" not in closing and closing.endswith("--set train.epochs=3 --set data.synthetic_size=400")
    assert not sweep_state.read_state(sweep_dir).finished
    before = {d.name: iterations(d) for d in trial_dirs(sweep_dir)}
    done = run_launch(tmp_path, *command)
    assert done.returncode == 0 and "sweep finished: 4 trials" in done.stdout, done.stdout[-3000:]
    assert "finished: val_control_error" in done.stdout          # a resumed sweep shows its progress too
    assert done.stderr == "", done.stderr[-3000:]
    assert_complete(tmp_path, epochs=3)
    for trial_dir in trial_dirs(sweep_dir):
        after = iterations(trial_dir)[len(before.get(trial_dir.name, [])):]
        if before.get(trial_dir.name) and after:        # continued from its checkpoint, not from 1
            assert after[0] > 1, (trial_dir.name, before[trial_dir.name], after)


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


def test_damaged_state_file_is_one_line_before_ray(tmp_path, capsys):
    sweep_dir = tmp_path / "sweeps" / "smoke"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / sweep_state.STATE_FILE).write_text('{"finished": fal')
    code = main([str(SMOKE), "--storage", str(tmp_path / "sweeps")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert sweep_state.STATE_FILE in err and "--fresh" in err


def test_storage_under_a_file_is_one_line_and_makes_nothing(tmp_path, capsys):
    (tmp_path / "some_file").write_text("not a folder")
    before = sorted(tmp_path.rglob("*"))
    code = main([str(SMOKE), "--storage", str(tmp_path / "some_file" / "sweeps"),
                 "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1, captured
    assert err[0].startswith("error: --storage ") and "some_file is a file, not a folder" in err[0]
    assert captured.out == ""                                  # Ray was not started
    assert sorted(tmp_path.rglob("*")) == before               # no mlflow.db, no mlruns, no folder


@pytest.mark.parametrize("argv, expected", [
    (["s.yaml", "--set", "time_budget=60s", "--set", "num_samples=4"], "s.yaml --set num_samples=4"),
    (["s.yaml", "--set=time_budget=60s", "--fresh", "--set=model.width=0.25"], "s.yaml --set=model.width=0.25"),
    (["s.yaml", "--set", "num_samples=4", "--storage", "time_budget=x"], "s.yaml --set num_samples=4 --storage time_budget=x"),
])
def test_rerun_command_drops_the_one_run_budget_and_keeps_other_sets(argv, expected):
    assert rerun_command(argv) == f"python -m sweep.launch {expected}"


def test_realism_objective_without_enough_reference_images_is_refused_before_ray(tmp_path, capsys):
    spec = {"name": "real", "config": {"data": {"dataset": "synthetic"}, "model": {"width": 0.125},
                                       "train": {"realism_images": 400}},
            "space": {"loss.saturation.weight": {"type": "uniform", "low": 1, "high": 5}},
            "objectives": [{"metric": "val_artefact"}], "num_samples": 2}
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = main([str(path), "--storage", str(tmp_path / "sweeps")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: objectives: val_artefact cannot be estimated: train.realism_images: "
                          "saturation=0.5 has ") and "fewer than 400" in err
    assert not (tmp_path / "sweeps" / "real").exists()


def _results(trial_dir) -> list[dict]:
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.integration
@pytest.mark.slow
def test_reports_counted_in_steps_come_inside_the_first_epoch_and_asha_counts_them(tmp_path):
    """One epoch of 3 steps, a report every step: 3 reports per trial, ASHA ranks trials on them
    and stops the bad ones before their only epoch ends. One trial at a time, so which ones it stops
    does not depend on the machine's speed."""
    done = run_launch(tmp_path, "--set", "train.epochs=1", "--set", "report_every=1 steps",
                      "--set", "scheduler.type=asha", "--set", "scheduler.grace_period=1",
                      "--set", "max_concurrent=1")
    assert done.returncode == 0, done.stdout + done.stderr
    sweep_dir = tmp_path / "sweeps" / "smoke"
    results = {trial_dir: _results(trial_dir) for trial_dir in trial_dirs(sweep_dir)}
    assert len(results) == 4
    whole = [rows for rows in results.values() if rows[-1]["epoch"] == 1]
    assert whole and all([(r["training_iteration"], r["epoch"], r.get("epoch_step")) for r in rows]
                         == [(1, 0, 1), (2, 0, 2), (3, 1, None)] for rows in whole)
    stopped = [rows for rows in results.values() if rows[-1]["epoch"] == 0]
    assert stopped and "stopped early (ASHA) at step 1 of epoch 1" in done.stdout
    for trial_dir in results:                          # Tune's checkpoint holds the place in the epoch
        state = load_checkpoint(sorted(trial_dir.glob("checkpoint_*"))[-1])
        assert (state["epoch"], state["epoch_step"]) == (results[trial_dir][-1]["epoch"],
                                                         results[trial_dir][-1].get("epoch_step", 0))
    study = {t.user_attrs["tune_trial_id"]: t for t in study_trials(f"sqlite:///{sweep_dir / 'study.db'}")}
    assert sorted(t.state.name for t in study.values()).count("PRUNED") == len(stopped)
    assert all(sorted(t.intermediate_values) == list(range(1, len(results[d]) + 1))
               for d in results for t in [study[_results(d)[0]["trial_id"]]])
    assert duplicate_steps(tmp_path) == {}
    for run in trial_runs(tmp_path):                   # MLflow's step is the report's index
        trial_dir = next(d for d in results if results[d][0]["trial_id"] == run.data.tags["trial_id"])
        assert epoch_steps(tmp_path, run.info.run_id) == list(range(1, len(results[trial_dir]) + 1))


@pytest.mark.integration
@pytest.mark.slow
def test_a_trial_killed_after_a_report_inside_its_epoch_resumes_inside_it(tmp_path):
    """A report every 4 steps of a one-epoch trial; the launcher is SIGKILLed once Tune has recorded
    a trial checkpoint; the same command finishes. The report after a resume comes 4 steps after
    the restored one: the trial went on inside its epoch (restarting the epoch would report step 4
    again under a later report index)."""
    extra = ("--set", "train.epochs=1", "--set", "report_every=4 steps", "--set", "data.synthetic_size=400",
             "--set", "num_samples=2", "--set", "max_concurrent=1")
    process = start_launch(tmp_path, *extra)
    sweep_dir = tmp_path / "sweeps" / "smoke"
    assert wait_until(lambda: recorded_a_checkpoint(sweep_dir), process), (tmp_path / "first_run.log").read_text()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {d.name: _results(d) for d in trial_dirs(sweep_dir) if (d / "result.json").exists()}
    inside = [rows for rows in before.values() if rows and rows[-1]["epoch"] == 0]
    assert inside, before                                  # a trial was killed inside its epoch
    done = run_launch(tmp_path, *extra)
    assert done.returncode == 0 and "resuming smoke" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    went_on = []
    for trial_dir in trial_dirs(sweep_dir):
        rows = _results(trial_dir)
        assert rows[-1]["epoch"] == 1
        for row in rows[:-1]:                               # every report at 4 × its index, also after a resume
            assert (row["epoch"], row["epoch_step"]) == (0, 4 * row["training_iteration"]), rows
        if before.get(trial_dir.name) and before[trial_dir.name][-1]["epoch"] == 0:
            went_on.append(rows[len(before[trial_dir.name])]["training_iteration"] > 1)
    assert any(went_on), before                             # not started again at its first report
