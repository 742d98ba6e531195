"""Every MLflow call of analysis/ and the final run: read a sweep's table from its MLflow
experiment, attach the report to the sweep's parent run, and keep the final run's own run.

MlflowClient with explicit run ids (no fluent active run), so a resumed final run finds its run.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from analysis.load import Sweep, SweepError, load_sweep, mark_early_stopped, varying_params
from analysis.pareto import DEFAULT_OBJECTIVES, Objective, parse_objective

STATUS_FROM_MLFLOW = {"FINISHED": "TERMINATED", "FAILED": "ERROR", "KILLED": "KILLED",
                      "RUNNING": "RUNNING", "SCHEDULED": "PENDING"}
TRIAL_RUNS = "tags.`colorsweep.role` = 'trial'"
LOST_TAG = "colorsweep.lost"  # trial runs of a resumed sweep that Tune no longer knows
BATCH = 100  # MLflow's limit of params / metrics per log_batch call


def client_for(state: Mapping) -> MlflowClient:
    """A client on the sweep's tracking store (MLflow's default when the state names none)."""
    return MlflowClient(tracking_uri=state.get("tracking_uri") or None)


def parent_run_id(state: Mapping) -> str | None:
    return state.get("parent_run_id") or None


def experiment_name(state: Mapping, fallback: str) -> str:
    return state.get("experiment_name") or fallback


def trial_run_id(state: Mapping, sweep_name: str, trial_id: str) -> str | None:
    """The MLflow run of one trial of the sweep, when the store has it."""
    client = client_for(state)
    found = client.get_experiment_by_name(experiment_name(state, sweep_name))
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"{TRIAL_RUNS} and tags.trial_id = '{trial_id}'")
    return runs[0].info.run_id if runs else None


def _history_frame(client: MlflowClient, run_id: str, metrics: Sequence[str]) -> pd.DataFrame:
    columns = {}
    for key in metrics:
        history = client.get_metric_history(run_id, key)
        columns[key] = pd.Series({m.step: m.value for m in history}, dtype=float)
    frame = pd.DataFrame(columns).sort_index()
    if "epoch" not in frame:  # the step is the epoch (sweep/tracking.py)
        frame.insert(0, "epoch", frame.index)
    return frame.reset_index(drop=True)


def load_mlflow_sweep(experiment: str, tracking_uri: str | None = None,
                      objectives: Sequence[Objective] | None = None) -> Sweep:
    """The same table as `load_sweep`, from the trial runs (tagged trial_id) of an experiment."""
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SweepError(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}")
    runs = [r for r in client.search_runs([found.experiment_id], filter_string=TRIAL_RUNS)
            if r.data.tags.get(LOST_TAG) != "true"]
    if not runs:
        raise SweepError(f"MLflow experiment {experiment!r} holds no trial runs (tag trial_id)")
    objectives = tuple(objectives or DEFAULT_OBJECTIVES)
    rows, curves, configs = [], {}, []
    for run in runs:
        trial_id = run.data.tags["trial_id"]
        curve = _history_frame(client, run.info.run_id, list(run.data.metrics))
        curves[trial_id] = curve
        rows.append({"trial_id": trial_id, "status": STATUS_FROM_MLFLOW.get(run.info.status, run.info.status),
                     "iterations": len(curve), "error": "", "path": "", "checkpoint": "",
                     "run_id": run.info.run_id, **run.data.metrics})
        configs.append(run.data.params)
    configs = pd.DataFrame(configs)
    params = varying_params(configs)
    numeric = configs[params].apply(pd.to_numeric, errors="coerce")
    table = pd.concat([pd.DataFrame(rows), numeric.where(numeric.notna(), configs[params])], axis=1)
    return Sweep(name=experiment, table=mark_early_stopped(table), params=params,
                 objectives=objectives, curves=curves)


def open_sweep(ref: str, objectives: Sequence[str] | None = None, tracking_uri: str | None = None) -> Sweep:
    """A sweep folder, or `mlflow:EXPERIMENT` for a sweep read from its MLflow experiment."""
    parsed = [parse_objective(o) for o in objectives] if objectives else None
    if ref.startswith("mlflow:"):
        return load_mlflow_sweep(ref.removeprefix("mlflow:"), tracking_uri, parsed)
    return load_sweep(Path(ref), parsed)


def log_report(state: Mapping, files: Sequence[Path], artifact_path: str = "report") -> str | None:
    """Attach report files to the sweep's parent run; returns its run id (None: no parent run)."""
    run_id = parent_run_id(state)
    if not run_id:
        return None
    client = client_for(state)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path)
    return run_id


def start_final_run(state: Mapping, sweep_name: str, run_id: str | None, tags: Mapping[str, str],
                    params: Mapping[str, object]) -> str:
    """Reopen `run_id` when it exists, else create the final run with its tags and params."""
    client = client_for(state)
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id
    name = experiment_name(state, sweep_name)
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    run = client.create_run(experiment_id, tags=dict(tags), run_name=f"final-{tags['colorsweep.trial_id']}")
    items = [Param(k, str(v)) for k, v in params.items()]
    for start in range(0, len(items), BATCH):
        client.log_batch(run.info.run_id, params=items[start:start + BATCH])
    return run.info.run_id


def logged_steps(state: Mapping, run_id: str, key: str) -> set[int]:
    return {m.step for m in client_for(state).get_metric_history(run_id, key)}


def log_metrics(state: Mapping, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and math.isfinite(v)]
    for start in range(0, len(items), BATCH):
        client_for(state).log_batch(run_id, metrics=items[start:start + BATCH])


def finish_final_run(state: Mapping, run_id: str, files: Sequence[Path], tags: Mapping[str, str]) -> None:
    client = client_for(state)
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
