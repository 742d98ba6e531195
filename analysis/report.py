"""`python -m analysis.report SWEEP -o report.html`: one self-contained HTML report of a sweep.

Ranking table, Pareto scatter, each searched parameter against each objective, parameter
importance (fANOVA via optuna.importance on a study rebuilt from the results), learning curves of
the top trials and the same validation images colorized by the top trials. Every plot is embedded
as a base64 <img> and also written as a PNG beside the HTML; the files are logged to the sweep's
MLflow parent run when the sweep has one.
"""
from __future__ import annotations

import argparse
import base64
import html
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.gallery import gallery_for
from analysis.importance import build_study, common_epoch_rows, importance_summary, param_importances
from analysis.load import open_sweep
from analysis.sweep_table import Sweep, SweepError
from analysis.rank import cell, columns_shown, param_label, ranked
from analysis.tracking import log_report
from trainable.files import write_text_atomic

RANK_RULE = ("Rank: finished trials only; first by Pareto layer (non-dominated sorting over the "
             "objectives, 1 = front), then by the mean of the per-objective min–max normalized "
             "values (0 = best), ties by trial id. Failed and early-stopped trials are listed unranked.")
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;"
         "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
         "tr.front{background:#fff4c2}tr.unranked{color:#888}img{max-width:100%;display:block;"
         "margin:0.5em 0 1.5em}")


def table_html(sweep: Sweep, table: pd.DataFrame) -> str:
    shown = columns_shown(sweep, table)
    head = ["rank", "front", "trial", "status", "reports"] + [param_label(c) for c in shown]
    lines = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for _, row in table.iterrows():
        kind = "front" if row["pareto"] else ("unranked" if pd.isna(row["rank"]) else "")
        status = row["status"] + (f": {row['error']}" if row["error"] else "")
        cells = [cell(row["rank"]), "★" if row["pareto"] else "", row["trial_id"], status,
                 cell(row["iterations"])] + [cell(row[c]) for c in shown]
        lines.append(f"<tr class='{kind}'>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(lines + ["</table>"])


def make_figures(sweep: Sweep, table: pd.DataFrame, studies: tuple, importances: pd.DataFrame,
                 top: int, images: int) -> list[tuple[str, str, object]]:
    """(file suffix, caption, figure) for every plot that has data to show; `studies` holds the
    finished trials (Pareto front) and the trials compared at a common epoch (the rest)."""
    ranks = dict(zip(table["trial_id"].astype(str), table["rank"]))
    finished, compared = studies
    found = [("pareto", "Pareto front of the finished trials (labels: rank)", plots.pareto_plot(sweep, finished, ranks))]
    for objective, figure in zip(sweep.objectives, plots.param_plots(sweep, compared)):
        found.append((f"params-{objective.metric}", f"{objective.label} against each searched parameter", figure))
    found.append(("importance", "parameter importance (fANOVA)", plots.importance_plot(importances)))
    found.append(("curves", f"learning curves of the top {top} trials", plots.learning_curves(sweep, table, top)))
    gallery = gallery_for(table, top, images)
    if gallery is not None:
        grid = plots.image_grid(gallery.gray, gallery.real, gallery.rows)
        found.append(("samples", f"validation images colorized by the top {top} trials", grid))
    return [(name, caption, figure) for name, caption, figure in found if figure is not None]


def front_lines(sweep: Sweep, table: pd.DataFrame) -> list[str]:
    front = table[table["pareto"]]
    return [f"#{r['rank']} {r['trial_id']}: " + ", ".join(f"{o.metric}={r[o.metric]:.4g}" for o in sweep.objectives)
            + "; " + ", ".join(f"{param_label(p)}={cell(r[p])}" for p in sweep.params if p in r)
            for _, r in front.iterrows()]


def render(sweep: Sweep, table: pd.DataFrame, pngs: list[tuple[str, Path]], importance: list[str]) -> str:
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(table["status"].value_counts().items()))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>sweep {html.escape(sweep.name)}</title>",
             f"<style>{STYLE}</style></head><body><h1>Sweep {html.escape(sweep.name)}</h1>",
             f"<p>{len(table)} trials ({html.escape(counts)}); objectives: "
             f"{html.escape(', '.join(o.label for o in sweep.objectives))}.</p>",
             f"<p>{html.escape(RANK_RULE)}</p><h2>Pareto front</h2><ul>"]
    parts += [f"<li>{html.escape(line)}</li>" for line in front_lines(sweep, table)]
    parts += ["</ul><h2>Parameter importance</h2><ul>"]
    parts += [f"<li>{html.escape(line)}</li>" for line in importance]
    parts += ["</ul><h2>Ranking</h2>", table_html(sweep, table), "<h2>Plots</h2>"]
    for caption, path in pngs:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(caption)}</h3><img alt='{html.escape(caption)}' "
                     f"src='data:image/png;base64,{data}'>")
    return "\n".join(parts + ["</body></html>"])


def write_report(sweep: Sweep, out: Path, top: int = 4, images: int = 8) -> list[Path]:
    """Write the HTML and its PNGs; returns every file written (HTML first)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table = ranked(sweep)
    rows, epoch = common_epoch_rows(sweep)
    finished = build_study(sweep, table[table["status"] == "TERMINATED"])
    compared = build_study(sweep, rows) if epoch is not None else finished
    importances = param_importances(sweep, compared)
    figures = make_figures(sweep, table, (finished, compared), importances, top, images)
    pngs = [(caption, plots.save(figure, out.with_name(f"{out.stem}-{name}.png")))
            for name, caption, figure in figures]
    basis = (f"over {len(compared.trials)} finished and early-stopped trials at epoch {epoch}, the last "
             "epoch all of them reported" if epoch is not None else f"over {len(compared.trials)} finished trials")
    write_text_atomic(out, render(sweep, table, pngs, [f"fANOVA {basis}:"] + importance_summary(importances)))
    return [out] + [path for _, path in pngs]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep folder (sweeps/<name>), or mlflow:EXPERIMENT")
    parser.add_argument("-o", "--output", default=None, help="HTML file (default: SWEEP/report.html)")
    parser.add_argument("--top", type=int, default=4, help="trials in the curves and the image grid")
    parser.add_argument("--images", type=int, default=8, help="validation images in the grid")
    parser.add_argument("--objective", action="append", default=None, metavar="METRIC[:min|max]",
                        help="objective (repeatable); default: the sweep spec's objectives")
    parser.add_argument("--mlflow-uri", default=None, help="tracking URI for mlflow:EXPERIMENT")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top < 1 or args.images < 1:
        parser.error("--top and --images must be >= 1")
    try:
        sweep = open_sweep(args.sweep, args.objective, args.mlflow_uri)
        default = (sweep.path or Path(".")) / "report.html"
        written = write_report(sweep, Path(args.output) if args.output else default, args.top, args.images)
    except (SweepError, KeyError, ValueError, OSError) as err:
        print(f"analysis.report: {str(err).strip(chr(34) + chr(39))}", file=sys.stderr)
        return 2
    run_id = None if args.no_mlflow else log_report(sweep.state, written)
    print(f"wrote {written[0]} ({len(written) - 1} plots embedded, PNGs beside it)")
    if run_id:
        print(f"logged to MLflow run {run_id} (artifacts/report)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
