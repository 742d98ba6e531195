"""MLflow bookkeeping of a sweep, written only from the driver (one writer: no sqlite locking).

One experiment per sweep, a parent run (tag colorsweep.role=sweep) and one child run per trial
(tags trial_id, colorsweep.role=trial). After a resume every trial finds its run again by tag and
skips the steps already logged, so there are no duplicate runs and no duplicate steps. The Ray
callback in `sweep/ray_adapter.py` forwards Tune's events here; nothing in this file knows Ray.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

ROLE = "colorsweep.role"
TRIAL_ID = "trial_id"
PARENT = "mlflow.parentRunId"
STEP_METRIC = "epoch"           # every report carries it; its history says which steps are logged
PARAMS_PER_BATCH = 100          # MLflow's log_batch limit
# Tune's bookkeeping fields that are not worth a metric series.
SKIPPED_RESULT_KEYS = frozenset({"timestamp", "pid", "done", "time_since_restore", "trial_id",
                                 "iterations_since_restore", "should_checkpoint", "date", "hostname",
                                 "node_ip", "checkpoint_dir_name"})


def resolve_tracking_uri(uri: str | None) -> str:
    """The given URI, else MLflow's default (env MLFLOW_TRACKING_URI honoured), with a relative
    sqlite path made absolute so a resume from another folder writes to the same store."""
    import mlflow
    uri = uri or mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    elif "://" not in uri:
        uri = str(Path(uri).resolve())
    return uri


def metrics_of(result: Mapping) -> dict[str, float]:
    """The numeric entries of a Tune result worth logging."""
    return {key: float(value) for key, value in result.items()
            if key not in SKIPPED_RESULT_KEYS and isinstance(value, (int, float))
            and not isinstance(value, bool)}


def move_experiment_aside(tracking_uri: str, name: str, new_name: str) -> bool:
    """Rename the experiment of a sweep started over with --fresh; True when there was one."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return False
    client.rename_experiment(experiment.experiment_id, new_name)
    return True


def open_sweep(tracking_uri: str, name: str, parent_run_id: str | None) -> tuple[str, str]:
    """Find or create the sweep's experiment and parent run → (experiment_id, parent_run_id)."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    if parent_run_id:
        try:
            run = client.get_run(parent_run_id)
            if run.info.experiment_id == experiment_id:
                client.update_run(parent_run_id, status="RUNNING")
                return experiment_id, parent_run_id
        except Exception:  # the store was replaced: start a new parent run below
            pass
    run = client.create_run(experiment_id, run_name=name, tags={ROLE: "sweep"})
    return experiment_id, run.info.run_id


class SweepTracker:
    """Logs trials of one sweep under its parent run. Picklable (Tune stores its callbacks)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}          # trial_id → run_id
        self._last_step: dict[str, float] = {}   # trial_id → last logged step

    def __getstate__(self) -> dict:
        return {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, "_client": None, "_runs": {}, "_last_step": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _trial_runs(self, extra: str = "") -> list:
        query = f"tags.`{PARENT}` = '{self.parent_run_id}' and tags.`{ROLE}` = 'trial'{extra}"
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=10000)

    def archive_lost_trials(self, known_trial_ids: set[str]) -> int:
        """Delete (soft: MLflow keeps them as 'deleted') runs of trials that a crash lost before
        Tune saved them; Tune starts their replacements as new trials."""
        lost = [r for r in self._trial_runs() if r.data.tags.get(TRIAL_ID) not in known_trial_ids]
        for run in lost:
            self.client.set_tag(run.info.run_id, "colorsweep.lost", "true")
            self.client.delete_run(run.info.run_id)
        return len(lost)

    def trial_run(self, trial_id: str, name: str, params: Mapping[str, object]) -> str:
        """The trial's run: found by tag after a resume, else created with its params."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self._trial_runs(f" and tags.`{TRIAL_ID}` = '{trial_id}'")
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, STEP_METRIC)
            self._last_step[trial_id] = max((m.step for m in history), default=-1)
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {TRIAL_ID: trial_id, ROLE: "trial", PARENT: self.parent_run_id}
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            self._log_params(run_id, params)
            self._last_step[trial_id] = -1
        self._runs[trial_id] = run_id
        return run_id

    def _log_params(self, run_id: str, params: Mapping[str, object]) -> None:
        items = [Param(key, str(value)[:6000]) for key, value in sorted(params.items())]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start:start + PARAMS_PER_BATCH])

    def log_result(self, trial_id: str, result: Mapping, step: int, tags: Mapping[str, str]) -> bool:
        """Log one report's metrics at `step` unless that step is already logged."""
        if step <= self._last_step[trial_id]:
            return False
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in metrics_of(result).items()]
        run_tags = [RunTag(key, value) for key, value in tags.items()]
        self.client.log_batch(self._runs[trial_id], metrics=metrics, tags=run_tags)
        self._last_step[trial_id] = step
        return True

    def log_file(self, trial_id: str, path: str | os.PathLike, artifact_path: str, name: str) -> None:
        """Log one file under `artifact_path/name` (a copy so the name is ours, not the source's)."""
        import shutil
        import tempfile
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder, name)
            shutil.copyfile(path, copy)
            self.client.log_artifact(self._runs[trial_id], str(copy), artifact_path)

    def end_trial(self, trial_id: str, status: str) -> None:
        if trial_id in self._runs:
            self.client.set_terminated(self._runs[trial_id], status)

    def end_sweep(self, finished: bool) -> None:
        self.client.set_terminated(self.parent_run_id, "FINISHED" if finished else "KILLED")
