"""The sweep's Optuna study in a storage colorsweep owns (sweep/study.py, ray_adapter.StudySearcher):
the default SQLite file, a real PostgreSQL server (conftest.postgres_server), the bad inputs refused
before Ray starts, and an ASHA-stopped trial told PRUNED."""
from __future__ import annotations

import optuna
import pytest
from sqlalchemy.engine import make_url

from sweep.launch import main
from sweep.spec import load_spec, resolved
from sweep.study import StudyError, check_study, move_study_aside, open_study, study_url
from tests.helpers import SMOKE, run_launch, sigkill_then_resume, study_trials, sweep_folder, trial_statuses


def _smoke(*sets: str):
    return load_spec(SMOKE, list(sets))


def test_default_study_is_a_file_in_the_sweep_folder(tmp_path):
    assert study_url(None, tmp_path / "smoke") == f"sqlite:///{tmp_path / 'smoke' / 'study.db'}"
    check_study(study_url(None, tmp_path / "smoke"), _smoke())      # nothing there yet: fine, nothing made
    assert not (tmp_path / "smoke").exists()


@pytest.mark.parametrize("url, named", [("mysql://u:p@127.0.0.1/db", "scheme 'mysql'"),
                                        ("not a url", "not a database URL")])
def test_unsupported_storage_is_one_line_exit_2_and_nothing_made(tmp_path, capsys, url, named):
    assert main([str(SMOKE), "--storage", str(tmp_path / "sweeps"), "--study-storage", url]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow   # Optuna makes its tables: about a second
def test_study_made_by_another_spec_is_refused_naming_the_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(url, _smoke(), optuna.samplers.RandomSampler())
    check_study(url, _smoke())
    with pytest.raises(StudyError, match="num_samples was 4, now 5"):
        check_study(url, _smoke("num_samples=5"))
    check_study(url, _smoke("num_samples=5"), compare=False)   # --fresh moves it aside instead


def _launch_main(tmp_path, url: str, *sets: str) -> int:
    extra = [arg for assignment in sets for arg in ("--set", assignment)]
    return main([str(SMOKE), "--storage", str(tmp_path / "sweeps"), "--study-storage", url, *extra])


def _tables(url: str) -> list[str]:
    import sqlalchemy
    engine = sqlalchemy.create_engine(url)
    try:
        return sqlalchemy.inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.integration
@pytest.mark.slow
def test_postgres_bad_password_and_closed_port_are_one_line_exit_2(tmp_path, capsys, postgres_url):
    user_host, database = postgres_url.rsplit("/", 1)
    wrong = user_host.replace("postgres:", "postgres:wrong", 1) + "/" + database
    assert _launch_main(tmp_path, wrong) == 2
    err = capsys.readouterr().err.strip()
    assert "password authentication failed" in err and len(err.splitlines()) == 1 and "wrong" not in err
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    assert _launch_main(tmp_path, f"postgresql://postgres:x@127.0.0.1:{closed}/db") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot connect" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "sweeps").exists() and _tables(postgres_url) == []


@pytest.mark.integration
@pytest.mark.slow
def test_postgres_study_of_another_spec_is_refused_before_anything(tmp_path, capsys, postgres_url):
    open_study(postgres_url, _smoke(), optuna.samplers.RandomSampler())
    assert _launch_main(tmp_path, postgres_url, "num_samples=5") == 2
    err = capsys.readouterr().err.strip()
    assert "study 'smoke' was made by another spec: num_samples was 4, now 5" in err
    assert len(err.splitlines()) == 1 and "@" in err and postgres_url.split(":")[2].split("@")[0] not in err
    assert not (tmp_path / "sweeps").exists()
    assert [s.study_name for s in optuna.get_all_study_summaries(postgres_url)] == ["smoke"]


@pytest.mark.integration
@pytest.mark.slow
def test_sweep_on_postgres_tells_asha_stopped_trials_pruned(tmp_path, postgres_url):
    """Six smoke trials of three epochs with ASHA after one: the study in PostgreSQL holds six
    trials, the finished ones COMPLETE with a value per report and the ones ASHA stopped PRUNED
    (the same ones the analysis calls EARLY_STOPPED), with their reports. Then --fresh moves that
    study aside, whole, and a new one is made. One trial at a time: which trials ASHA stops depends
    on the order their first reports arrive in, which must not depend on the machine's speed."""
    done = run_launch(tmp_path, "--study-storage", postgres_url, "--set", "num_samples=6", "--set", "max_concurrent=1",
                      "--set", "train.epochs=3", "--set", "scheduler.type=asha", "--set", "scheduler.grace_period=1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "python -m sweep.dashboard" in done.stdout
    trials = study_trials(postgres_url)
    states = {t.user_attrs["tune_trial_id"]: t.state.name for t in trials}
    assert sorted(states) == sorted(trial_statuses(sweep_folder(tmp_path, postgres_url))) and len(states) == 6
    assert set(states.values()) == {"COMPLETE", "PRUNED"}, states
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        assert steps and steps == list(range(1, steps[-1] + 1)), trial
        assert (trial.state.name == "COMPLETE") == (steps[-1] == 3), trial
    from analysis.load import load_sweep
    table = load_sweep(sweep_folder(tmp_path, postgres_url)).table
    early = set(table.loc[table["status"] == "EARLY_STOPPED", "trial_id"])
    assert early == {trial for trial, state in states.items() if state == "PRUNED"}
    again = run_launch(tmp_path, "--study-storage", postgres_url, "--fresh", "--set", "num_samples=2",
                       "--set", "train.epochs=1")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "--fresh: renamed the old study" in again.stdout
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(postgres_url))
    assert names[0] == "smoke" and names[1].startswith("smoke.old-") and len(names) == 2
    assert len(study_trials(postgres_url)) == 2 and len(study_trials(postgres_url, names[1])) == 6


@pytest.mark.integration
@pytest.mark.slow
def test_fresh_moves_a_postgres_study_aside_with_its_trials(postgres_url):
    study = open_study(postgres_url, _smoke(), optuna.samplers.RandomSampler(seed=0))
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), [0.5, 0.25])
    assert move_study_aside(postgres_url, "smoke", "smoke.old-1")
    assert [s.study_name for s in optuna.get_all_study_summaries(postgres_url)] == ["smoke.old-1"]
    moved = optuna.load_study(study_name="smoke.old-1", storage=postgres_url)
    assert [t.values for t in moved.trials] == [[0.5, 0.25]] and "colorsweep_spec" in moved.user_attrs
    assert not move_study_aside(postgres_url, "smoke", "smoke.old-2")      # nothing left to move


def test_resume_with_another_study_storage_is_refused(tmp_path, capsys):
    from trainable import layout
    sweep_dir = tmp_path / "sweeps" / "smoke"
    layout.write_spec(sweep_dir, resolved(_smoke()))
    layout.write_state(sweep_dir, layout.SweepState(False, "sqlite:///m.db", "smoke", "parent"))
    assert _launch_main(tmp_path, f"sqlite:///{tmp_path / 'other.db'}") == 2
    err = capsys.readouterr().err.strip()
    assert "study.db in the sweep folder" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "other.db").exists() and sorted(p.name for p in sweep_dir.iterdir()) == \
        [layout.SPEC_FILE, layout.STATE_FILE]


@pytest.mark.slow   # imports Ray and torch through sweep.ray_adapter
def test_searcher_tells_each_ending_once_and_hands_out_asks_lost_at_a_kill(tmp_path):
    """StudySearcher on a real SQLite study, called as Tune calls it: a trial that ran every epoch is
    COMPLETE, one ASHA stopped PRUNED with its report, one stopped by Ctrl+C stays RUNNING; a second
    ending is ignored; after a restore from an older save, the trial asked since (its lease is this
    launcher's) is handed to the next trial Tune asks for at once, with its params, instead of a
    new ask, and one a kill left without params gets them; with num_samples asked it waits while
    some run, and says FINISHED once all ended."""
    from sweep.ray_adapter import StudySearcher, build_scheduler
    spec = _smoke("scheduler.type=asha", "train.epochs=2", "report_every=1", "num_samples=5")
    url, scheduler = f"sqlite:///{tmp_path / 'study.db'}", build_scheduler(spec)
    searcher = StudySearcher(spec, url, scheduler, "here", tmp_path)
    for trial_id in ("done", "pruned", "stopped"):
        searcher.suggest(trial_id)
    searcher.save(str(tmp_path / "searcher.json"))
    lost = searcher.suggest("lost")            # asked after the last save: a kill would lose it
    report = {"val_control_error": 0.5, "val_realism_abhist": 0.9, "training_iteration": 1, "epoch": 1}
    last = {**report, "training_iteration": 2, "epoch": 2}
    searcher.on_trial_result("done", report)
    searcher.on_trial_complete("done", last)
    searcher.on_trial_complete("done", {**last, "val_control_error": 0.1})    # a rerun ends it again
    scheduler.stopped.add("pruned")
    searcher.on_trial_complete("pruned", report)
    searcher.on_trial_complete("stopped", report)      # Tune's cleanup at Ctrl+C: no verdict
    trials = {t.user_attrs["tune_trial_id"]: t for t in study_trials(url)}
    assert trials["done"].state.name == "COMPLETE" and trials["done"].values == [0.5, 0.9]
    assert trials["done"].intermediate_values == {1: 0.5, 2: 0.5}
    assert trials["pruned"].state.name == "PRUNED" and trials["pruned"].intermediate_values == {1: 0.5}
    assert trials["stopped"].state.name == "RUNNING" and trials["lost"].state.name == "RUNNING"

    optuna.load_study(study_name="smoke", storage=url).ask()     # a kill inside ask: no params yet

    restored = StudySearcher(spec, url, build_scheduler(spec), "here", tmp_path)
    restored.restore(str(tmp_path / "searcher.json"))
    assert restored.suggest("next") == lost
    after = {t.user_attrs.get("tune_trial_id"): t.number for t in study_trials(url)}
    assert len(after) == 5 and after["next"] == trials["lost"].number and "lost" not in after
    filled = restored.suggest("new")        # the one left without params gets them now
    assert filled != lost and len(study_trials(url)) == 5
    assert sorted(study_trials(url)[4].params) == sorted(spec.space) and study_trials(url)[4].user_attrs["tune_trial_id"] == "new"
    restored.WAIT_S = 0.0
    assert restored.suggest("more") is None        # num_samples asked, three still running: wait
    for trial_id in ("stopped", "next", "new"):
        restored.on_trial_complete(trial_id, error=True)
    assert restored.suggest("more") == "FINISHED" and restored.done()


@pytest.mark.integration
@pytest.mark.slow
def test_sweep_on_postgres_resumes_after_sigkill_and_keeps_no_password(tmp_path, postgres_url):
    """SIGKILL mid-sweep, the same command again: every Tune trial has one finished trial in the
    PostgreSQL study, and no file of the sweep folder holds the database password (Tune pickles the
    searcher there)."""
    sigkill_then_resume(tmp_path, 3, "--study-storage", postgres_url, study_url=postgres_url)
    password = make_url(postgres_url).password.encode()
    holding = [p for p in (tmp_path / "sweeps").rglob("*") if p.is_file() and password in p.read_bytes()]
    assert not holding
