"""Read a sweep's storage folder into one table: a row per trial with its status, last reported
metrics, searched parameters and checkpoint, plus each trial's learning curve.

Ray Tune's `ExperimentAnalysis` reads the experiment files; this module only shapes its answer.
The same `Sweep` comes from an MLflow experiment through `analysis.mlflow_runs.load_mlflow_sweep`;
`open_sweep` takes either.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from analysis.pareto import DEFAULT_OBJECTIVES, Objective, parse_objective
from analysis.sweep_table import METRIC_PREFIXES, Sweep, SweepError, mark_early_stopped, varying_params
from trainable.config import ConfigError, flatten
from trainable.layout import SweepState, read_spec, read_state

KEPT_RESULT_KEYS = ("epoch", "training_iteration", "time_total_s")


def read_sidecars(path: Path) -> tuple[dict, SweepState | None]:
    """The resolved spec ({} when absent) and the launch state written beside the Ray experiment."""
    try:
        return read_spec(path) or {}, read_state(path)
    except ConfigError as err:
        raise SweepError(str(err)) from None


def spec_objectives(spec: Mapping) -> tuple[Objective, ...]:
    """Objectives of the spec as [{metric, mode}], or the defaults."""
    listed = spec.get("objectives") or []
    return tuple(Objective(o["metric"], o["mode"]) for o in listed) or DEFAULT_OBJECTIVES


def spec_params(spec: Mapping) -> list[str]:
    """Searched keys of the spec's space; `fixed` entries are not searched."""
    space = spec.get("space") or {}
    return [k for k, d in space.items() if not (isinstance(d, Mapping) and d.get("type") == "fixed")]


def _error_line(trial: object) -> str:
    """Last line of the trial's error.txt ('' when it has none)."""
    name = trial.run_metadata.error_filename
    path = Path(trial.storage.trial_fs_path, name) if name else None
    if path is None or not path.exists():
        return "error (no error file)" if trial.status == "ERROR" else ""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _trial_row(trial: object) -> dict:
    result = trial.last_result or {}
    row = {"trial_id": trial.trial_id, "status": trial.status,
           "iterations": int(result.get("training_iteration", 0) or 0),
           "error": _error_line(trial), "path": str(trial.storage.trial_fs_path)}
    # trial.checkpoint, not analysis.get_last_checkpoint: that logs an ERROR per trial without one
    row["checkpoint"] = trial.checkpoint.path if trial.checkpoint is not None else ""
    row.update({k: v for k, v in result.items() if k.startswith(METRIC_PREFIXES) or k in KEPT_RESULT_KEYS})
    return row


def load_sweep(path: str | Path, objectives: Sequence[Objective] | None = None) -> Sweep:
    """Read `sweeps/<name>/` (Ray experiment dir + colorsweep sidecar files)."""
    path = Path(path)
    if not path.is_dir():
        raise SweepError(f"{path}: no such sweep folder")
    spec, state = read_sidecars(path)
    from ray.tune import ExperimentAnalysis  # Ray only where Tune results are read
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)   # a trial without results yet is no warning
    try:
        analysis = ExperimentAnalysis(str(path.resolve()))
        curves = {tid: df for tid, df in analysis.trial_dataframes.items() if not df.empty}
    except ValueError:
        raise SweepError(f"{path}: not a Ray Tune experiment folder (no experiment_state-*.json)") from None
    finally:
        quiet.setLevel(level)
    rows = [_trial_row(t) for t in analysis.trials]
    configs = pd.DataFrame([flatten(t.config) for t in analysis.trials])
    params = spec_params(spec) or varying_params(configs)
    table = pd.concat([pd.DataFrame(rows), configs[[p for p in params if p in configs]]], axis=1)
    return Sweep(name=spec.get("name") or path.name, table=mark_early_stopped(table), params=params,
                 objectives=tuple(objectives or spec_objectives(spec)), curves=curves, path=path,
                 spec=spec, state=state)


def open_sweep(ref: str, objectives: Sequence[str] | None = None, tracking_uri: str | None = None) -> Sweep:
    """A sweep folder, or `mlflow:EXPERIMENT` for a sweep read from its MLflow experiment."""
    parsed = [parse_objective(o) for o in objectives] if objectives else None
    if ref.startswith("mlflow:"):
        from analysis.mlflow_runs import load_mlflow_sweep   # MLflow only when a sweep is read from it
        return load_mlflow_sweep(ref.removeprefix("mlflow:"), tracking_uri, parsed)
    return load_sweep(Path(ref), parsed)
