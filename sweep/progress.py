"""Live progress and the final summary of a sweep, drawn with rich from plain trial rows.

A row is {"trial": id, "status": str, "iteration": int, "node": ip, "metrics": {name: value}}.
Several objectives have no single best: the summary shows the Pareto front of the last reports.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from analysis.pareto import Objective, front_indices
from sweep.spec import SweepSpec

console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def pareto_front(rows: Sequence[dict], objectives: Sequence[Objective]) -> list[dict]:
    """Rows that report every objective and that no other such row dominates, best first."""
    scored = [r for r in rows if all(o.metric in r["metrics"] for o in objectives)]
    values = [[r["metrics"][o.metric] for o in objectives] for r in scored]
    return [scored[i] for i in front_indices(values, objectives)]


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def trial_table(rows: Sequence[dict], spec: SweepSpec, title: str) -> Table:
    """One line per trial: status, progress, searched values, objectives."""
    table = Table(title=title, title_justify="left")
    for column in ("trial", "status", "iter", "epoch", "node"):
        table.add_column(column)
    searched = list(spec.space)
    for key in searched:
        table.add_column(key.removeprefix("loss."), justify="right")
    for objective in spec.objectives:
        table.add_column(f"{objective.metric} {'↓' if objective.mode == 'min' else '↑'}", justify="right")
    for row in rows:
        metrics = row["metrics"]
        table.add_row(row["trial"], row["status"], str(row["iteration"]), _number(metrics.get("epoch")),
                      row["node"], *(_number(row["config"].get(k)) for k in searched),
                      *(_number(metrics.get(o.metric)) for o in spec.objectives))
    return table


def best_line(rows: Sequence[dict], spec: SweepSpec) -> str:
    parts = []
    for objective in spec.objectives:
        scored = [r for r in rows if objective.metric in r["metrics"]]
        if scored:
            pick = min if objective.mode == "min" else max
            best = pick(scored, key=lambda r: r["metrics"][objective.metric])
            parts.append(f"{objective.metric} {_number(best['metrics'][objective.metric])} ({best['trial']})")
    return "best so far: " + ("; ".join(parts) if parts else "no reports yet")


def show_progress(rows: Sequence[dict], spec: SweepSpec, elapsed_s: float) -> None:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(trial_table(rows, spec, f"{spec.name}: {elapsed_s:.0f}s, {status}"))
    console.print(best_line(rows, spec))


def show_summary(rows: Sequence[dict], spec: SweepSpec, sweep_dir: str, tracking_uri: str, outcome: str) -> None:
    front = pareto_front(rows, spec.objectives)
    label = "best trials (Pareto front)" if len(spec.objectives) > 1 else "best trial"
    console.print(trial_table(front[:10] if len(spec.objectives) > 1 else front[:1], spec, label))
    console.print(outcome)
    console.print(f"results:  {sweep_dir}")
    console.print(f"MLflow:   experiment '{spec.name}' — see it with: mlflow ui --backend-store-uri {tracking_uri}")
