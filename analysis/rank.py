"""`python -m analysis.rank SWEEP`: the trials of a sweep ranked by target fidelity × realism.

Prints a table (Pareto front marked ★, failed and early-stopped trials listed with their status)
and writes it as CSV / JSON. The rank is defined in analysis.pareto.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

from analysis.load import open_sweep
from analysis.sweep_table import Sweep, SweepError
from analysis.pareto import rank_table
from trainable.files import write_text_atomic
from trainable.names import control_symbol

SHOWN_METRICS = ("val_colorfulness_ratio", "val_pixel_acc_5", "val_psnr")


def param_label(key: str) -> str:
    """'loss.saturation.weight' → 'λ_saturation', 'loss.hue.target' → 'σ_hue',
    'val_control_error_hue' → 'val_err_hue', others unchanged."""
    if key.startswith("val_control_error_"):
        return "val_err_" + key.removeprefix("val_control_error_")
    return control_symbol(key) or key


def ranked(sweep: Sweep) -> pd.DataFrame:
    """The sweep's table with pareto_layer / score / rank (see analysis.pareto)."""
    return rank_table(sweep.table, sweep.objectives)


def columns_shown(sweep: Sweep, table: pd.DataFrame) -> list[str]:
    """Objectives, per-statistic control errors, a few realism/accuracy metrics, searched params."""
    objectives = [o.metric for o in sweep.objectives]
    control = sorted(c for c in table.columns if c.startswith("val_control_error_"))
    extra = [c for c in SHOWN_METRICS if c in table.columns]
    picked = objectives + [c for c in control + extra if c not in objectives]
    return picked + [p for p in sweep.params if p in table.columns]


def cell(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_table(sweep: Sweep, table: pd.DataFrame, top: int | None) -> Table:
    shown = columns_shown(sweep, table)
    out = Table(title=f"sweep {sweep.name}: {len(table)} trials, ★ = Pareto front over "
                      + ", ".join(o.label for o in sweep.objectives))
    for name in ("rank", "★", "trial", "status", "reports"):
        out.add_column(name, justify="right" if name in ("rank", "reports") else "left")
    for name in shown:
        label = param_label(name).removeprefix("val_")
        out.add_column(label, justify="right", min_width=len(label))
    ranked_rows = table[table["rank"].notna()]
    rows = pd.concat([ranked_rows.head(top) if top else ranked_rows, table[table["rank"].isna()]])
    for _, row in rows.iterrows():
        status = row["status"] + (f": {row['error'][:60]}" if row.get("error") else "")
        out.add_row(cell(row["rank"]), "★" if row["pareto"] else "", str(row["trial_id"]), status,
                    cell(row["iterations"]), *(cell(row[c]) for c in shown))
    return out


def export(table: pd.DataFrame, csv: str | None, json: str | None) -> list[str]:
    written = []
    for path, text in ((csv, lambda: table.to_csv(index=False)),
                       (json, lambda: table.to_json(orient="records", indent=1))):
        if path:
            write_text_atomic(path, text())
            written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis.rank", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep folder (sweeps/<name>), or mlflow:EXPERIMENT")
    parser.add_argument("--top", type=int, default=None, help="show only the K best ranked trials")
    parser.add_argument("--objective", action="append", default=None, metavar="METRIC[:min|max]",
                        help="objective (repeatable); default: the sweep spec's objectives")
    parser.add_argument("--mlflow-uri", default=None, help="tracking URI for mlflow:EXPERIMENT")
    parser.add_argument("--csv", help="write the full table as CSV")
    parser.add_argument("--json", help="write the full table as JSON records")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top is not None and args.top < 1:
        parser.error("--top must be >= 1")
    try:
        sweep = open_sweep(args.sweep, args.objective, args.mlflow_uri)
        table = ranked(sweep)
        written = export(table, args.csv, args.json)
    except (SweepError, KeyError, ValueError, OSError) as err:
        print(f"analysis.rank: {str(err).strip(chr(34) + chr(39))}", file=sys.stderr)
        return 2
    console = Console() if sys.stdout.isatty() else Console(width=240)  # piped: do not cut columns
    console.print(render_table(sweep, table, args.top))
    counts = table["status"].value_counts().to_dict()
    console.print("status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for path in written:
        console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
