"""What reading a sweep gives, wherever it is read from (its folder: `analysis.load`; its MLflow
experiment: `analysis.mlflow_runs`): one table with a row per trial, and the rules that shape it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.pareto import DEFAULT_OBJECTIVES, Objective
from trainable.layout import SweepState

EARLY_STOPPED = "EARLY_STOPPED"
METRIC_PREFIXES = ("val_", "loss_", "test_")


class SweepError(Exception):
    """A sweep that cannot be read; the message is one line for the user."""


@dataclass
class Sweep:
    """A sweep's results. `table` has one row per trial: trial_id, status, iterations, error,
    path, checkpoint, every metric of the last report and every searched parameter (dotted key)."""
    name: str
    table: pd.DataFrame
    params: list[str]
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    path: Path | None = None
    spec: dict = field(default_factory=dict)
    state: SweepState | None = None

    def metrics(self) -> list[str]:
        return [c for c in self.table.columns if c.startswith(METRIC_PREFIXES)]


def varying_params(configs: pd.DataFrame) -> list[str]:
    """Config keys whose value differs between trials (the searched ones when no spec says)."""
    return [c for c in configs.columns if configs[c].astype(str).nunique(dropna=False) > 1]


def mark_early_stopped(table: pd.DataFrame) -> pd.DataFrame:
    """A TERMINATED trial with fewer reports than the longest one was stopped by the scheduler."""
    if table.empty:
        return table
    finished = table["status"] == "TERMINATED"
    longest = table.loc[finished, "iterations"].max() if finished.any() else 0
    table.loc[finished & (table["iterations"] < longest), "status"] = EARLY_STOPPED
    return table
