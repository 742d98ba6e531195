"""How a sweep lives in an MLflow experiment (the tags that mark its runs) and reading it back
into the same table as a sweep folder gives (`analysis.sweep_table`). The one writer of these runs
is `analysis.tracking`; this module only reads.

A sweep is one experiment holding a parent run (colorsweep.role=sweep), one child run per trial
(tags trial_id, colorsweep.role=trial) and the final run (colorsweep.role=final, final=true).
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from mlflow import MlflowClient

from analysis.pareto import DEFAULT_OBJECTIVES, Objective
from analysis.store import existing_store, resolve_tracking_uri
from analysis.sweep_table import Sweep, SweepError, mark_early_stopped, varying_params

ROLE = "colorsweep.role"              # sweep | trial | final | registered
TRIAL_ID = "trial_id"
STUDY_TRIAL = "colorsweep.study_trial"  # the Optuna trial number: one run per study trial, whichever launcher ran it
PARENT = "mlflow.parentRunId"
LOST = "colorsweep.lost"              # runs of trials a crash lost before Tune saved them; parent runs that lost a race
STEP_METRIC = "epoch"                 # every report carries it; its history says which steps are logged
STATUS_FROM_MLFLOW = {"FINISHED": "TERMINATED", "FAILED": "ERROR", "KILLED": "KILLED",
                      "RUNNING": "RUNNING", "SCHEDULED": "PENDING"}


def trial_runs(client: MlflowClient, experiment: str, extra: str = "") -> list:
    query = f"tags.`{ROLE}` = 'trial'{extra}"
    return client.search_runs([experiment], filter_string=query, max_results=10000)


def _history_frame(client: MlflowClient, run_id: str, metrics: Sequence[str]) -> pd.DataFrame:
    columns = {}
    for key in metrics:
        history = client.get_metric_history(run_id, key)
        columns[key] = pd.Series({m.step: m.value for m in history}, dtype=float)
    frame = pd.DataFrame(columns).sort_index()
    if STEP_METRIC not in frame:  # the step is the epoch
        frame.insert(0, STEP_METRIC, frame.index)
    return frame.reset_index(drop=True)


def load_mlflow_sweep(experiment: str, tracking_uri: str | None = None,
                      objectives: Sequence[Objective] | None = None) -> Sweep:
    """The same table as `analysis.load.load_sweep`, from the trial runs of an experiment."""
    uri = resolve_tracking_uri(tracking_uri)
    if existing_store(uri) is None:
        raise SweepError(f"no MLflow store at {uri}")
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SweepError(f"no MLflow experiment named {experiment!r} at {uri}")
    runs = [r for r in trial_runs(client, found.experiment_id) if r.data.tags.get(LOST) != "true"]
    if not runs:
        raise SweepError(f"MLflow experiment {experiment!r} holds no trial runs (tag {TRIAL_ID})")
    rows, curves, configs = [], {}, []
    for run in runs:
        trial_id = run.data.tags[TRIAL_ID]
        curves[trial_id] = _history_frame(client, run.info.run_id, list(run.data.metrics))
        rows.append({"trial_id": trial_id, "status": STATUS_FROM_MLFLOW.get(run.info.status, run.info.status),
                     "iterations": len(curves[trial_id]), "error": "", "path": "", "checkpoint": "",
                     "run_id": run.info.run_id, **run.data.metrics})
        configs.append(run.data.params)
    configs = pd.DataFrame(configs)
    params = varying_params(configs)
    numeric = configs[params].apply(pd.to_numeric, errors="coerce")
    table = pd.concat([pd.DataFrame(rows), numeric.where(numeric.notna(), configs[params])], axis=1)
    return Sweep(name=experiment, table=mark_early_stopped(table), params=params,
                 objectives=tuple(objectives or DEFAULT_OBJECTIVES), curves=curves)
