"""The one MLflow writer of colorsweep: the sweep's runs, the final run, the report and registered
models' runs. Where runs are found and how they are read back is `analysis.mlflow_runs`.

A sweep is one experiment (tagged as model training, so MLflow 3 opens its runs view) holding a
parent run, one child run per study trial and the final run (tags in `analysis.mlflow_runs`). Only
drivers write (one per machine; several launchers of one sweep share a database store or an
`mlflow server`, each writing the runs of the trials it holds). Writes go in batches of MLflow's
limit and skip steps a run already holds, so a resumed sweep, a trial taken over by another
launcher, or a final run finds its run again (by tag or id) and logs each epoch once. MlflowClient with explicit run ids, no fluent active run. Nothing here knows
Ray.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from analysis.mlflow_view import SAVED_VIEW_TAG, TRIALS_VIEW, TRIALS_VIEW_NAME, trials_view_state
from analysis.mlflow_runs import LOST, PARENT, ROLE, STEP_METRIC, STUDY_TRIAL, TRIAL_ID, load_mlflow_sweep, trial_runs
from analysis.pareto import DEFAULT_OBJECTIVES, Objective, best_values, front_note, front_table, rank_table
from analysis.store import ensure_store, existing_store, resolve_tracking_uri, without_password
from analysis.sweep_table import Sweep, SweepError
from trainable.layout import SweepState

SWEEP, SWEEP_PATH = "colorsweep.sweep", "colorsweep.sweep_path"
SOURCE = "colorsweep.source"          # the generator file a registered run was made from
MODEL_ARTIFACT = "model"
FINAL_TRIAL, FINAL_RANK, FINAL_SOURCE = "colorsweep.trial_id", "colorsweep.trial_rank", "colorsweep.trial_run_id"
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # MLflow 3 UI: runs, not traces
BATCH = 100                           # MLflow's limit of params / metrics per log_batch call
PARETO_TABLE = "pareto_front.json"
NOTE_TAG = "mlflow.note.content"   # the run description MLflow shows on the run page
# Tune's bookkeeping fields that are not worth a metric series.
SKIPPED_RESULT_KEYS = frozenset({"timestamp", "pid", "done", "time_since_restore", "trial_id", "date", "hostname",
                                 "iterations_since_restore", "should_checkpoint", "node_ip", "checkpoint_dir_name"})


def metrics_of(result: Mapping) -> dict[str, float]:
    """The finite numbers of a report worth logging."""
    return {key: float(value) for key, value in result.items()
            if key not in SKIPPED_RESULT_KEYS and isinstance(value, (int, float))
            and not isinstance(value, bool) and math.isfinite(value)}


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, object]) -> None:
    items = [Param(key, str(value)[:6000]) for key, value in sorted(params.items())]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[start:start + BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping, step: int,
                tags: Mapping[str, str] | None = None) -> None:
    now = int(time.time() * 1000)
    items = [Metric(key, value, now, step) for key, value in metrics_of(metrics).items()]
    run_tags = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
    for start in range(0, max(len(items), 1), BATCH):
        client.log_batch(run_id, metrics=items[start:start + BATCH], tags=run_tags if start == 0 else [])


def logged_steps(client: MlflowClient, run_id: str, key: str = STEP_METRIC) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, key)}


def report_position(result: Mapping) -> tuple[float, float]:
    """Where in training a report was made: (epoch, step inside it)."""
    return float(result.get("epoch", -1)), float(result.get("epoch_step", 0))


def logged_position(client: MlflowClient, run_id: str, step: int) -> tuple[float, float] | None:
    """The report_position of the report logged at `step`, None when nothing is."""
    found = {key: [m.value for m in client.get_metric_history(run_id, key) if m.step == step]
             for key in ("epoch", "epoch_step")}
    if not found["epoch"]:
        return None
    return report_position({"epoch": found["epoch"][-1], "epoch_step": (found["epoch_step"] or [0])[-1]})


def log_file(client: MlflowClient, run_id: str, path: str | os.PathLike, artifact_path: str | None,
             name: str | None = None) -> None:
    """Log one file, under `name` when given (a copy, so the name is ours, not the source's)."""
    if name is None:
        client.log_artifact(run_id, str(path), artifact_path)
        return
    with tempfile.TemporaryDirectory() as folder:
        shutil.copyfile(path, Path(folder, name))
        client.log_artifact(run_id, str(Path(folder, name)), artifact_path)


def experiment_id(client: MlflowClient, name: str) -> str:
    """Find or create the experiment; either way it is marked as a model-training experiment."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, tags={KIND_TAG: KIND})
        except MlflowException as err:     # another launcher of the sweep made it first
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            found = client.get_experiment_by_name(name)
    found_id = found.experiment_id
    if found and KIND_TAG not in found.tags:      # a sweep started before the tag existed
        client.set_experiment_tag(found_id, KIND_TAG, KIND)
    return found_id


def move_experiment_aside(tracking_uri: str, name: str, new_name: str) -> bool:
    """Rename the experiment of a sweep started over with --fresh; True when there was one."""
    if existing_store(tracking_uri) is None:
        return False
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        client.rename_experiment(experiment.experiment_id, new_name)
    return experiment is not None


def start_sweep_run(tracking_uri: str, name: str, parent_run_id: str | None,
                    claim: Callable[[str], str] = lambda run_id: run_id) -> tuple[str, str]:
    """Create the store (atomically) when new, then find or create the sweep's experiment and
    parent run → (experiment_id, parent_run_id). `claim` records a parent run where every launcher
    of the sweep looks (sweep.leases.parent_run) and returns the one recorded first: a run made here
    that lost that race is tagged lost and deleted, so two launchers starting at once share one."""
    ensure_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = experiment_id(client, name)
    made = not (parent_run_id and reopened(client, parent_run_id, experiment))
    if made:
        parent_run_id = client.create_run(experiment, run_name=name, tags={ROLE: "sweep"}).info.run_id
    winner = claim(parent_run_id)
    if winner != parent_run_id:
        if made:
            client.set_tag(parent_run_id, LOST, "true")
            client.delete_run(parent_run_id)
        reopened(client, winner)
    return experiment, winner


def reopened(client: MlflowClient, run_id: str, experiment: str | None = None) -> bool:
    """Mark the run RUNNING again; False (start a new one) if the store lost it or it is elsewhere."""
    try:
        run = client.get_run(run_id)
    except Exception:
        return False
    if experiment is not None and run.info.experiment_id != experiment:
        return False
    client.update_run(run_id, status="RUNNING")
    return True


class SweepTracker:
    """Logs trials of one sweep under its parent run. Picklable (Tune stores its callbacks)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}          # trial_id → run_id
        self._last_step: dict[str, float] = {}   # trial_id → last logged step
        self._last_position: dict[str, tuple[float, float] | None] = {}   # trial_id → its report_position

    def __getstate__(self) -> dict:
        """Tune pickles it into the sweep folder: without a database password (a restored sweep
        is given this run's tracker)."""
        return {**self.__dict__, "tracking_uri": without_password(self.tracking_uri), "_client": None,
                "_runs": {}, "_last_step": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _trial_runs(self, extra: str = "") -> list:
        return trial_runs(self.client, self.experiment_id, f" and tags.`{PARENT}` = '{self.parent_run_id}'{extra}")

    def trial_run(self, trial_id: str, name: str, params: Mapping[str, object], study_trial: int | None = None) -> str:
        """The trial's run: found by its study trial (else, for sweeps logged before, its Tune trial
        id) after a resume or a takeover, else created with its params."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        key, value = (TRIAL_ID, trial_id) if study_trial is None else (STUDY_TRIAL, str(study_trial))
        found = self._trial_runs(f" and tags.`{key}` = '{value}'") or \
            self._trial_runs(f" and tags.`{TRIAL_ID}` = '{trial_id}'")     # logged before study trial tags
        if found:
            run_id = found[0].info.run_id
            self.client.set_tag(run_id, key, value)
            self._last_step[trial_id] = max(logged_steps(self.client, run_id), default=-1)
            self._last_position[trial_id] = logged_position(self.client, run_id, self._last_step[trial_id])
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {TRIAL_ID: trial_id, ROLE: "trial", PARENT: self.parent_run_id, key: value}
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            log_params(self.client, run_id, params)
            self._last_step[trial_id], self._last_position[trial_id] = -1, None
        self._runs[trial_id] = run_id
        return run_id

    def log_result(self, trial_id: str, result: Mapping, step: int, tags: Mapping[str, str]) -> bool:
        """Log one report's metrics at `step` unless that step is already logged (by this launcher,
        or by the one a trial was taken over from: read when the run was found), or the report
        repeats the last one's position (a trial restored at its end reports once more for Tune)."""
        position = report_position(result)
        if step <= self._last_step[trial_id] or position == self._last_position.get(trial_id):
            return False
        log_metrics(self.client, self._runs[trial_id], result, step, tags)
        self._last_step[trial_id], self._last_position[trial_id] = step, position
        return True

    def log_file(self, trial_id: str, path: str | os.PathLike, artifact_path: str, name: str) -> None:
        log_file(self.client, self._runs[trial_id], path, artifact_path, name)

    def end_trial(self, trial_id: str, status: str) -> None:
        if trial_id in self._runs:
            self.client.set_terminated(self._runs[trial_id], status)

    def end_sweep(self, finished: bool, objectives: Sequence[Objective] = DEFAULT_OBJECTIVES) -> None:
        """Close the parent run with the sweep's best values and Pareto front on it, so the
        experiment page shows them without expanding the trials."""
        name = self.client.get_experiment(self.experiment_id).name
        try:
            table = rank_table(load_mlflow_sweep(name, self.tracking_uri, objectives).table, objectives)
        except (SweepError, KeyError):    # no trial reported every objective yet
            table = None
        if table is not None:
            best, front = best_values(table, objectives), front_table(table, objectives)
            # The step is the number of ranked trials, so a relaunch that finished none logs none.
            step = int(best["trials_ranked"])
            if step not in logged_steps(self.client, self.parent_run_id, "trials_ranked"):
                log_metrics(self.client, self.parent_run_id, best, step)
            self.client.log_table(self.parent_run_id, front, PARETO_TABLE)
            self.client.set_tag(self.parent_run_id, NOTE_TAG, front_note(best, front))
        self.client.set_terminated(self.parent_run_id, "FINISHED" if finished else "KILLED")


def client_for(state: SweepState | None) -> MlflowClient:
    """A client on the sweep's tracking store (MLflow's default when the sweep names none)."""
    return MlflowClient(tracking_uri=state.tracking_uri if state else None)


def log_report(state: SweepState | None, files: Sequence[Path], artifact_path: str = "report") -> str | None:
    """Attach report files to the sweep's parent run; returns its run id (None: no parent run)."""
    if not (state and state.parent_run_id):
        return None
    for path in files:
        log_file(client_for(state), state.parent_run_id, path, artifact_path)
    return state.parent_run_id


def start_final_run(state: SweepState | None, sweep: Sweep, trial_id: str, rank: int, run_id: str | None,
                    params: Mapping[str, object]) -> str:
    """Reopen the final run `run_id`, else create it as a child of the sweep's parent run, tagged
    with the sweep, the trial and the trial's own run."""
    ensure_store(resolve_tracking_uri(state.tracking_uri if state else None))
    client = client_for(state)
    if run_id and reopened(client, run_id):
        return run_id
    experiment = experiment_id(client, state.experiment_name if state else sweep.name)
    tags = {ROLE: "final", "final": "true", SWEEP: sweep.name, SWEEP_PATH: str(sweep.path.resolve()),
            FINAL_TRIAL: trial_id, FINAL_RANK: str(rank)}
    source = trial_runs(client, experiment, f" and tags.`{TRIAL_ID}` = '{trial_id}'")
    if source:
        tags[FINAL_SOURCE] = source[0].info.run_id
    if state and state.parent_run_id:
        tags[PARENT] = state.parent_run_id
    run = client.create_run(experiment, tags=tags, run_name=f"final-{trial_id}")
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_new_steps(state: SweepState | None, run_id: str, steps: Mapping[int, Mapping], probe: str) -> None:
    """Log the metrics of each step whose `probe` metric the run does not hold yet."""
    client = client_for(state)
    done = logged_steps(client, run_id, probe)
    for step, metrics in steps.items():
        if step not in done:
            log_metrics(client, run_id, metrics, step)


def finish_final_run(state: SweepState | None, run_id: str, files: Sequence[Path], tags: Mapping[str, str]) -> None:
    client = client_for(state)
    log_metrics(client, run_id, {}, 0, tags)
    for path in files:
        log_file(client, run_id, path, None)
    client.set_terminated(run_id, "FINISHED")


def registered_version(tracking_uri: str, name: str, run_id: str) -> str | None:
    """The version of registered model `name` that `run_id` already holds, if any."""
    if existing_store(tracking_uri) is None:
        return None
    done = MlflowClient(tracking_uri).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(done[0].version) if done else None


def log_model_version(tracking_uri: str, name: str, model_folder: Path, run_id: str | None, source: Path,
                      description: str) -> str:
    """Log a saved pyfunc model folder under `model/` of `run_id` (else of a new run tagged
    registered, in the experiment named `name`) and register it as a new version of `name`."""
    ensure_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    own_run = run_id is None
    if own_run:
        tags = {ROLE: "registered", SOURCE: str(Path(source).resolve())}
        run_id = client.create_run(experiment_id(client, name), run_name=f"register-{name}", tags=tags).info.run_id
    client.log_artifacts(run_id, str(model_folder), MODEL_ARTIFACT)
    if own_run:
        client.set_terminated(run_id, "FINISHED")
    try:
        client.create_registered_model(name, description="colorsweep colorizer (sweep.serving)")
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    artifacts = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    return str(client.create_model_version(name, artifacts, run_id=run_id, description=description).version)


def save_trials_view(tracking_uri: str, experiment_id: str, searched: Sequence[str],
                     objectives: Sequence[Objective]) -> None:
    """Write (or rewrite, when the spec's space or objectives changed) the experiment's trials view
    (`analysis.mlflow_view`)."""
    client = MlflowClient(tracking_uri)
    key = SAVED_VIEW_TAG + TRIALS_VIEW
    state = json.dumps(trials_view_state(searched, objectives))
    try:
        if json.loads(client.get_experiment(experiment_id).tags[key])["state"] == state:
            return
    except (KeyError, TypeError, ValueError):   # no view yet, or not one this module wrote
        pass
    now = int(time.time() * 1000)
    envelope = {"name": TRIALS_VIEW_NAME, "createdAt": now, "updatedAt": now, "state": state}
    client.set_experiment_tag(experiment_id, key, json.dumps(envelope))
