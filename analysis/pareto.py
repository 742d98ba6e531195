"""Objectives, dominance, Pareto layers and the one scalar rank of a sweep's trials: defined here
once for the spec, the live progress, `analysis.rank` and the report (numpy and pandas, no torch).

The rank, documented in docs/ranking.md and reproducible from the table alone:
1. only trials that ran to the end (status TERMINATED with every report) are ranked;
2. first by Pareto layer from non-dominated sorting over the objectives (layer 1 = the front);
3. within a layer by the mean over objectives of the min–max normalized value, oriented so that
   0 is the best trial of the sweep and 1 the worst (an objective on which all trials tie counts 0);
4. remaining ties by trial id.

Optuna's `Study.best_trials` gives only the first front, so the layers are sorted here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

RANKED_STATUS = "TERMINATED"
MODES = ("min", "max")


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # "min" or "max"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"objective {self.metric}: mode must be min or max, got {self.mode!r}")

    @property
    def label(self) -> str:
        return f"{self.metric} {'↓' if self.mode == 'min' else '↑'}"

    @property
    def sign(self) -> float:
        """1 for a minimized objective, -1 for a maximized one: sign × value is a cost."""
        return 1.0 if self.mode == "min" else -1.0

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "minimize" if self.mode == "min" else "maximize"


DEFAULT_OBJECTIVES = (Objective("val_control_error", "min"), Objective("val_realism_abhist", "min"))


def parse_objective(text: str) -> Objective:
    """'val_psnr:max' → Objective('val_psnr', 'max'); a bare metric name is minimized."""
    metric, _, mode = text.partition(":")
    return Objective(metric.strip(), (mode or "min").strip())


def as_costs(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """Flip maximized columns so that lower is better everywhere."""
    signs = np.array([o.sign for o in objectives])
    return np.asarray(values, dtype=float) * signs


def non_dominated_layers(costs: np.ndarray) -> np.ndarray:
    """Layer per row of a (n, k) cost matrix (lower is better): 1 = not dominated by any row, 2 = the
    front once layer 1 is removed, … Equal rows share a layer."""
    costs = np.asarray(costs, dtype=float)
    layers = np.zeros(len(costs), dtype=int)
    remaining = np.arange(len(costs))
    layer = 1
    while remaining.size:
        sub = costs[remaining]
        no_worse = (sub[:, None, :] <= sub[None, :, :]).all(axis=2)
        better = (sub[:, None, :] < sub[None, :, :]).any(axis=2)
        dominated = (no_worse & better).any(axis=0)  # column j is dominated by some row i
        layers[remaining[~dominated]] = layer
        remaining = remaining[dominated]
        layer += 1
    return layers


def front_indices(values: Sequence[Sequence[float]], objectives: Sequence[Objective]) -> list[int]:
    """Indices of the rows of `values` (one column per objective) that no other row dominates,
    best first on the first objective."""
    if not len(values):
        return []
    costs = as_costs(np.asarray(values, dtype=float), objectives)
    layers = non_dominated_layers(costs)
    return sorted((i for i in range(len(costs)) if layers[i] == 1), key=lambda i: (costs[i, 0], i))


def normalized_score(costs: np.ndarray) -> np.ndarray:
    """Mean over columns of the min–max normalized cost; 0 = best on every objective."""
    costs = np.asarray(costs, dtype=float)
    low, high = costs.min(axis=0), costs.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return ((costs - low) / span).mean(axis=1)


def rank_table(table: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """Add `pareto_layer`, `score`, `rank` (1 = best; NA for unranked trials) and `pareto` columns,
    sorted by rank with the unranked trials after, by status then trial id."""
    missing = [o.metric for o in objectives if o.metric not in table.columns]
    if missing:
        raise KeyError(f"objective metric not reported by the trials: {', '.join(missing)}")
    table = table.copy()
    metrics = table[[o.metric for o in objectives]].astype(float)
    rankable = (table["status"] == RANKED_STATUS) & metrics.notna().all(axis=1)
    table["pareto_layer"] = pd.Series(pd.NA, index=table.index, dtype="Int64")
    table["score"] = np.nan
    table["rank"] = pd.Series(pd.NA, index=table.index, dtype="Int64")
    if rankable.any():
        costs = as_costs(metrics[rankable].to_numpy(), objectives)
        table.loc[rankable, "pareto_layer"] = non_dominated_layers(costs)
        table.loc[rankable, "score"] = normalized_score(costs)
        order = table[rankable].sort_values(["pareto_layer", "score", "trial_id"]).index
        table.loc[order, "rank"] = np.arange(1, len(order) + 1)
    table["pareto"] = table["pareto_layer"].eq(1).fillna(False).astype(bool)
    return _sorted(table)


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    ranked = table[table["rank"].notna()].sort_values("rank")
    unranked = table[table["rank"].isna()].sort_values(["status", "trial_id"])
    return pd.concat([ranked, unranked]).reset_index(drop=True)


def best_values(table: pd.DataFrame, objectives: Sequence[Objective]) -> dict[str, float]:
    """best_<metric> over the trials' last reports, and how many trials finished."""
    best = {f"best_{o.metric}": table[o.metric].agg(o.mode) for o in objectives}
    return {**best, "trials_ranked": float(table["rank"].notna().sum())}


def front_table(table: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    front = table[table["pareto"]]
    params = [c for c in table.columns if "." in c]        # searched keys are dotted config keys
    return front[["rank", "trial_id", "run_id", *(o.metric for o in objectives), *params]].astype(str)


def _short(text: str) -> str:
    try:
        return f"{float(text):.4g}"
    except ValueError:
        return text


def front_note(best: dict[str, float], front: pd.DataFrame) -> str:
    """Markdown for the parent run's description: MLflow shows it on the run page as it opens."""
    lines = ["**Best values** " + ", ".join(f"{k.removeprefix('best_')} {v:.4g}" for k, v in best.items()
                                             if k.startswith("best_")), "", "**Pareto front**", ""]
    columns = [c for c in front.columns if c != "run_id"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] if c == "trial_id" else _short(row[c]) for c in columns) + " |" for _, row in front.iterrows()]
    return "\n".join(lines)
