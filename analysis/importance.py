"""An Optuna study rebuilt from a sweep's table, for `optuna.importance` and Optuna's plots.

Each ranked-eligible trial (finished, every objective reported) becomes one completed
`optuna.trial.FrozenTrial` holding the searched parameters and the objective values; its Ray trial
id is kept as the user attribute `trial_id`.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import optuna
import pandas as pd

from analysis.sweep_table import EARLY_STOPPED, Sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec_distribution(entry: object) -> optuna.distributions.BaseDistribution | None:
    """The spec's distribution for one key when it is one Optuna knows, else None."""
    if not isinstance(entry, Mapping):
        return None
    kind = entry.get("type")
    if kind in ("uniform", "loguniform") and {"low", "high"} <= entry.keys():
        return optuna.distributions.FloatDistribution(float(entry["low"]), float(entry["high"]),
                                                      log=kind == "loguniform")
    if kind == "int" and {"low", "high"} <= entry.keys():
        return optuna.distributions.IntDistribution(int(entry["low"]), int(entry["high"]),
                                                    log=bool(entry.get("log", False)))
    if kind in ("choice", "grid") and "values" in entry:
        return optuna.distributions.CategoricalDistribution(list(entry["values"]))
    return None


def _observed_distribution(values: pd.Series) -> optuna.distributions.BaseDistribution:
    """A distribution covering the observed values: numeric → float range, else categorical."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return optuna.distributions.FloatDistribution(float(numeric.min()), float(numeric.max()))
    return optuna.distributions.CategoricalDistribution(sorted(values.astype(str).unique()))


def distributions(sweep: Sweep, rows: pd.DataFrame) -> dict[str, optuna.distributions.BaseDistribution]:
    space = sweep.spec.get("space") or {}
    found = {}
    for key in sweep.params:
        found[key] = _spec_distribution(space.get(key)) or _observed_distribution(rows[key])
    return found


def _param_value(value: object, dist: optuna.distributions.BaseDistribution) -> object:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return value if value in dist.choices else str(value)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(value)
    return float(value)


def common_epoch_rows(sweep: Sweep) -> tuple[pd.DataFrame, int | None]:
    """Finished and early-stopped trials with their objectives at the last epoch all of them
    reported: with ASHA most trials stop early, and their last values are not comparable with
    those of trials that ran longer. (rows, that epoch); no rows when no curves are known."""
    done = sweep.table[sweep.table["status"].isin(["TERMINATED", EARLY_STOPPED])
                       & sweep.table["trial_id"].isin(sweep.curves)]
    curves = [sweep.curves[t] for t in done["trial_id"]]
    if done.empty or any("epoch" not in c for c in curves):
        return done.iloc[0:0], None
    epoch = int(min(c["epoch"].max() for c in curves))
    rows = done.copy()
    for metric in (o.metric for o in sweep.objectives):
        at_epoch = [c.loc[c["epoch"] == epoch, metric] if metric in c else pd.Series(dtype=float) for c in curves]
        rows[metric] = [float(v.iloc[-1]) if len(v) else float("nan") for v in at_epoch]
    return rows, epoch


def build_study(sweep: Sweep, rows: pd.DataFrame | None = None) -> optuna.Study:
    """An in-memory study with one completed trial per row (default: the finished trials)."""
    metrics = [o.metric for o in sweep.objectives]
    if rows is None:
        rows = sweep.table[sweep.table["status"] == "TERMINATED"]
    rows = rows[rows[metrics].notna().all(axis=1)]
    rows = rows.sort_values("trial_id")  # the forest behind fANOVA depends on the order
    dists = distributions(sweep, rows)
    study = optuna.create_study(directions=[o.direction for o in sweep.objectives])
    for _, row in rows.iterrows():
        params = {k: _param_value(row[k], d) for k, d in dists.items()}
        values = [float(row[m]) for m in metrics]
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=values,
                                                  user_attrs={"trial_id": str(row["trial_id"])}))
    return study


def param_importances(sweep: Sweep, study: optuna.Study | None = None,
                      seed: int = 0) -> pd.DataFrame:
    """Importance of each searched parameter for each objective (fANOVA, normalized to sum 1).

    Rows: parameters, columns: objective metrics. NaN where Optuna cannot tell (fewer than two
    finished trials, or a parameter that never varied)."""
    study = study or build_study(sweep)
    table = pd.DataFrame(index=pd.Index(sweep.params, name="param"))
    for index, objective in enumerate(sweep.objectives):
        table[objective.metric] = _importances_for(study, index, seed)
    return table.sort_values(sweep.objectives[0].metric, ascending=False)


def _importances_for(study: optuna.Study, index: int, seed: int) -> pd.Series:
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        return pd.Series(dtype=float)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = optuna.importance.get_param_importances(
            study, evaluator=evaluator, target=lambda t: t.values[index])
    return pd.Series({k: v for k, v in found.items() if not math.isnan(v)}, dtype=float)


def importance_summary(importances: pd.DataFrame) -> list[str]:
    """One line per objective: parameters from most to least important."""
    lines = []
    for metric in importances.columns:
        column = importances[metric].dropna().sort_values(ascending=False)
        parts = ", ".join(f"{k} {v:.2f}" for k, v in column.items())
        lines.append(f"{metric}: {parts or 'not enough finished trials'}")
    return lines

