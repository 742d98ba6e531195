"""Sweep progress in the terminal: one live table redrawn in place (rich Live) when stdout is a
terminal; one plain line every PLAIN_EVERY_S when it is piped (no ANSI codes); the summary at the end.

A row is a plain dict made by the Ray adapter: {"trial", "status" (Tune's), "epoch" (epochs
reported), "epochs", "config" (searched values), "metrics" (last report), "live" (the trial's
`sweep.trial_progress` record or None)}. A trial that ends or fails is one `event` line.
The ETA is sweep.estimate's `Pace.seconds_for` the epochs left (in-epoch progress counted): at the
median measured epoch time over the trials open at once, or, before any epoch is measured, at the
launcher's measured pace (the time its no-GPU line printed). Columns are dropped, never cut, to fit
the terminal; objectives stay.
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from analysis.pareto import Objective, front_indices
from sweep.estimate import Pace, clock
from sweep.spec import SweepSpec
from trainable.names import control_symbol

PLAIN_EVERY_S = 30.0
BAR_CELLS = 10
STATES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "done", "ERROR": "failed"}
FINISHED = ("done", "stopped", "failed")
ORDER = {"running": 0, "paused": 1, "pending": 2, "done": 3, "stopped": 4, "failed": 5}

console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def pareto_front(rows: Sequence[dict], objectives: Sequence[Objective]) -> list[dict]:
    """Rows that report every objective and that no other such row dominates, best first."""
    scored = [r for r in rows if all(o.metric in r["metrics"] for o in objectives)]
    values = [[r["metrics"][o.metric] for o in objectives] for r in scored]
    return [scored[i] for i in front_indices(values, objectives)]


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def state_of(row: dict) -> str:
    """Tune's status in a word; a trial that ended before its last epoch was stopped (by ASHA)."""
    state = STATES.get(row["status"], row["status"].lower())
    return "stopped" if state == "done" and row["epoch"] < row["epochs"] else state


def trained(row: dict) -> int:
    """Epochs the trial has finished: its last report's count, or its progress file's when newer
    (with report_every > 1 a trial trains epochs between reports)."""
    live = row.get("live")
    return max(row["epoch"], live["epoch"] - 1) if live and state_of(row) == "running" else row["epoch"]


def _in_epoch(row: dict) -> float:
    """Share of the epoch in progress already trained (0 when none is known)."""
    live = row.get("live")
    if state_of(row) != "running" or not live or live["epoch"] != trained(row) + 1 or not live["steps"]:
        return 0.0
    return live["step"] / live["steps"]


def _timed_share(row: dict) -> float:
    """Share of the epoch in progress trained since its record's clock started (a resumed epoch's
    steps before the restart are not in that time)."""
    share = _in_epoch(row)
    return share - row["live"].get("step_started", 0) / row["live"]["steps"] if share else 0.0


def epoch_seconds(rows: Sequence[dict], report_every: int, now: float) -> float | None:
    """Median measured time of one epoch: whole epochs timed by the trials, else reports' times
    (when `report_every` counts epochs; 0 when it counts steps), else the running epochs projected
    from their progress."""
    whole = [r["live"]["epoch_seconds"] for r in rows if r.get("live") and r["live"].get("epoch_seconds")]
    reports = [r["metrics"]["time_this_iter_s"] / report_every for r in rows
               if report_every and "time_this_iter_s" in r["metrics"]]
    partial = [(now - r["live"]["epoch_started"]) / timed for r in rows if (timed := _timed_share(r)) > 0]
    for measured in (whole, reports, partial):
        if measured:
            return statistics.median(measured)
    return None


def eta_seconds(rows: Sequence[dict], spec: SweepSpec, now: float, start: Pace | None = None) -> float | None:
    """Seconds left: the trials' measured pace, or `start` (the launcher's) until they have one."""
    open_rows = [r for r in rows if state_of(r) not in FINISHED]
    unseen = max(0, spec.num_samples - len(rows))
    epochs_left = sum(max(0.0, r["epochs"] - trained(r) - _in_epoch(r)) for r in open_rows)
    epochs_left += unseen * spec.config.train.epochs
    per_epoch = epoch_seconds(rows, spec.report_every.epochs, now)
    if per_epoch is None:
        return None if start is None else start.seconds_for(epochs_left)
    return Pace(per_epoch, max(1, min(spec.max_concurrent, len(open_rows) + unseen))).seconds_for(epochs_left)


def _counts(rows: Sequence[dict]) -> dict[str, int]:
    counts = {state: 0 for state in ORDER}
    for row in rows:
        counts[state_of(row)] = counts.get(state_of(row), 0) + 1
    return counts


def headline(rows: Sequence[dict], spec: SweepSpec, elapsed_s: float, now: float,
             start: Pace | None = None) -> str:
    counts = _counts(rows)
    ended = counts["done"] + counts["stopped"] + counts["failed"]
    eta = eta_seconds(rows, spec, now, start)
    bound = "<=" if spec.scheduler == "asha" else "~"
    parts = [f"{spec.name}: {ended}/{spec.num_samples} trials ended", f"{counts['running']} running"]
    parts += [f"{counts[s]} {s}" for s in ("stopped", "failed") if counts[s]]
    parts += [f"elapsed {clock(elapsed_s)}", f"ETA {bound}{clock(eta)}" if eta is not None else "ETA -"]
    return ", ".join(parts)


def best_line(rows: Sequence[dict], objectives: Sequence[Objective]) -> str:
    parts = []
    for objective in objectives:
        scored = [r for r in rows if objective.metric in r["metrics"]]
        if scored:
            best = min(scored, key=lambda r: objective.sign * r["metrics"][objective.metric])
            parts.append(f"{objective.metric} {_number(best['metrics'][objective.metric])} ({best['trial']})")
    return "best so far: " + ("; ".join(parts) if parts else "no reports yet")


def _epoch_cell(row: dict, bar: bool) -> str:
    """'3/30', and for a running trial its share of the epoch in progress: a bar, or just '45%'."""
    cell = f"{trained(row)}/{row['epochs']}"
    if state_of(row) != "running" or not row.get("live"):
        return cell
    share = _in_epoch(row)
    filled = int(share * BAR_CELLS)
    return f"{cell} {'#' * filled}{'.' * (BAR_CELLS - filled)} {100 * share:3.0f}%" if bar \
        else f"{cell} {100 * share:3.0f}%"


def _short(key: str) -> str:
    """loss.saturation.weight → λ saturation, loss.saturation.target → σ saturation."""
    return control_symbol(key, " ") or key.split(".")[-1]


def _columns(rows: Sequence[dict], spec: SweepSpec, bar: bool) -> list[tuple[str, list[str], bool]]:
    """(header, cells, kept-at-any-width) per column, in display order."""
    columns = [("trial", [r["trial"] for r in rows], True),
               ("state", [state_of(r) for r in rows], False),
               ("epoch", [_epoch_cell(r, bar) for r in rows], True)]
    columns += [(_short(key), [_number(r["config"].get(key)) for r in rows], False) for key in spec.space]
    columns += [(o.label.removeprefix("val_"), [_number(r["metrics"].get(o.metric)) for r in rows], True)
                for o in spec.objectives]
    return columns


def _width(columns: list) -> int:
    return sum(max([len(h), *(len(c) for c in cells)]) for h, cells, _ in columns) + 2 * (len(columns) - 1)


def _fitted(rows: Sequence[dict], spec: SweepSpec, width: int, live: bool) -> list:
    """The columns that fit `width`: the searched values are dropped from the right, then the state,
    then the in-epoch bar shrinks to a percentage, then the epoch goes; the trial and the
    objectives stay, uncut."""
    variants = (True, False) if live else (False,)
    for bar in variants:
        columns = _columns(rows, spec, bar)
        optional = [header for header, _, kept in reversed(columns) if not kept and header != "state"]
        for header in [*optional, "state", *(["epoch"] if bar == variants[-1] else [])]:
            if _width(columns) <= width:
                break
            columns = [c for c in columns if c[0] != header]
        if _width(columns) <= width:
            break
    return columns


def trial_table(rows: Sequence[dict], spec: SweepSpec, width: int, live: bool = False,
                title: str | None = None) -> Table:
    """One line per trial, its columns fitted to width."""
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
    columns = _fitted(rows, spec, width, live)
    for header, cells, _ in columns:
        numeric = header not in ("trial", "state", "epoch")
        table.add_column(header, justify="right" if numeric else "left", no_wrap=True,
                         min_width=max([len(header), *(len(c) for c in cells)]))
    for index in range(len(rows)):
        table.add_row(*(cells[index] for _, cells, _ in columns))
    return table


def ordered(rows: Sequence[dict], objectives: Sequence[Objective]) -> list[dict]:
    """Running trials first, then waiting ones, then ended ones by the first objective."""
    first = objectives[0]

    def key(row):
        value = row["metrics"].get(first.metric)
        return ORDER.get(state_of(row), 9), first.sign * value if isinstance(value, (int, float)) else float("inf"), row["trial"]
    return sorted(rows, key=key)


def plain_line(rows: Sequence[dict], spec: SweepSpec, elapsed_s: float, now: float,
               start: Pace | None = None) -> str:
    running = [f"{r['trial']} {trained(r) + _in_epoch(r):.1f}/{r['epochs']}" for r in rows
               if state_of(r) == "running"]
    text = f"[{clock(elapsed_s)}] {headline(rows, spec, elapsed_s, now, start).split(': ', 1)[1]}"
    if running:
        text += f" | epochs: {', '.join(running)}"
    return f"{text} | {best_line(rows, spec.objectives)}"


class SweepDisplay:
    """The live table on a terminal, plain periodic lines otherwise; `event` prints one line above."""

    def __init__(self, spec: SweepSpec, out: Console | None = None, plain_every_s: float = PLAIN_EVERY_S,
                 start: Pace | None = None):
        self.spec, self.plain_every_s, self.start = spec, plain_every_s, start
        self.console = out or console
        self.live = self.console.is_terminal
        self._started = time.monotonic()
        self._printed = self._started
        self._live: Live | None = None

    def _render(self, rows: Sequence[dict], now: float):
        height = max(5, self.console.size.height - 4)
        shown = ordered(rows, self.spec.objectives)
        more = len(shown) - height
        table = trial_table(shown[:height] if more > 0 else shown, self.spec, self.console.size.width, live=True)
        lines = [Text(headline(rows, self.spec, time.monotonic() - self._started, now, self.start)), table]
        if more > 0:
            lines.append(Text(f"… and {more} more"))
        lines.append(Text(best_line(rows, self.spec.objectives)))
        return Group(*lines)

    def update(self, rows: Sequence[dict]) -> None:
        now, elapsed = time.time(), time.monotonic() - self._started
        if self.live:
            if self._live is None:
                self._live = Live(console=self.console, refresh_per_second=2, transient=True,
                                  redirect_stdout=True, redirect_stderr=True)
                self._live.start()
            self._live.update(self._render(rows, now), refresh=True)
        elif time.monotonic() - self._printed >= self.plain_every_s:
            self._printed = time.monotonic()
            print(plain_line(rows, self.spec, elapsed, now, self.start), flush=True)

    def event(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(Text(text), soft_wrap=True)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def show_summary(rows: Sequence[dict], spec: SweepSpec, sweep_dir: str, tracking_uri: str, outcome: str,
                 experiment_id: str | None = None, parent_run_id: str | None = None,
                 study: str | None = None) -> None:
    """`study`: what `python -m sweep.dashboard` takes for this sweep (its folder or database URL)."""
    front = pareto_front(rows, spec.objectives)
    label = "best trials (Pareto front)" if len(spec.objectives) > 1 else "best trial"
    if front:
        shown = front[:10] if len(spec.objectives) > 1 else front[:1]
        console.print(trial_table(shown, spec, console.size.width, title=label))
    for line in (outcome, f"results:  {sweep_dir}",
                 f"MLflow:   experiment '{spec.name}' — see it with: mlflow ui --backend-store-uri {tracking_uri}"):
        console.print(Text(line), soft_wrap=True)     # a command or path wrapped by rich cannot be pasted
    if experiment_id is not None:
        from analysis.mlflow_view import TRIALS_VIEW_NAME, run_page_url, trials_view_url
        console.print(Text(f"          then open {trials_view_url(experiment_id)}"), soft_wrap=True)
        console.print(Text(f"          (or, on the experiment page: Views, top right → {TRIALS_VIEW_NAME})"))
        if parent_run_id is not None:
            console.print(Text(f"          best values: {run_page_url(experiment_id, parent_run_id)}"), soft_wrap=True)
    if study is not None:
        console.print(Text(f"Optuna:   study '{spec.name}' — see it with: python -m sweep.dashboard {study}"),
                      soft_wrap=True)
