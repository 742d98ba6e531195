"""The sweep display from plain rows: columns fitted to the terminal without cutting objectives, an
ETA from measured epoch times, plain lines without ANSI codes when piped; and the launcher's exit
status and rerun hint for every way a sweep ends."""
from __future__ import annotations

import io
import re
import time
from dataclasses import replace

import pytest
from rich.console import Console

from sweep.launch import outcome, rerun_command
from sweep.progress import SweepDisplay, eta_seconds, plain_line, state_of, trained, trial_table
from sweep.spec import parse_spec

SPEC = parse_spec({
    "name": "t", "config": {"data": {"dataset": "synthetic"}, "train": {"epochs": 5}},
    "space": {"loss.saturation.weight": {"type": "loguniform", "low": 1, "high": 50},
              "loss.saturation.target": {"type": "uniform", "low": 0.1, "high": 0.9},
              "loss.hue.weight": {"type": "loguniform", "low": 1, "high": 50},
              "loss.hue.target": {"type": "uniform", "low": 0.1, "high": 0.9}},
    "num_samples": 4, "max_concurrent": 2})
ANSI = re.compile(r"\x1b\[")


def row(trial: str, status: str, epoch: int, live: dict | None = None, **metrics) -> dict:
    config = {"loss.saturation.weight": 12.345678, "loss.saturation.target": 0.4567,
              "loss.hue.weight": 3.21, "loss.hue.target": 0.75}
    return {"trial": trial, "status": status, "epoch": epoch, "epochs": 5, "config": config,
            "metrics": metrics, "live": live}


def running(trial: str, epoch: int, step: int, steps: int, epoch_seconds: float | None) -> dict:
    live = {"epoch": epoch + 1, "epochs": 5, "step": step, "steps": steps,
            "epoch_started": time.time() - 1.0, "epoch_seconds": epoch_seconds}
    return row(trial, "RUNNING", epoch, live, val_control_error=0.123456, val_realism_abhist=0.654321)


def rendered(table, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False).print(table)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("width", [50, 60, 80, 160])
def test_columns_fit_the_terminal_and_objectives_are_never_cut(width):
    rows = [running("a1b2c3d4", 1, 5, 10, 10.0), running("e5f6a7b8", 2, 1, 4, 12.0)]
    lines = rendered(trial_table(rows, SPEC, width, live=True), width)
    assert all(len(line) <= width for line in lines), lines
    header = lines[0]
    assert "control_error ↓" in header and "realism_abhist ↓" in header
    assert "0.1235" in lines[1] and "0.6543" in lines[1] and "…" not in "".join(lines)
    assert ("λ saturation" in header) == (width >= 160)          # searched values go first
    assert ("50%" in lines[1]) == (width >= 60)                   # progress inside the epoch stays


def test_eta_counts_epochs_left_at_the_measured_epoch_time():
    rows = [running("a", 1, 5, 10, 10.0), running("b", 1, 5, 10, 10.0),
            row("c", "TERMINATED", 5, val_control_error=0.2, val_realism_abhist=0.3)]
    # running: 5 - 1 - 0.5 = 3.5 epochs left each; one trial not started yet: 5 epochs; 2 at a time
    assert eta_seconds(rows, SPEC, time.time()) == pytest.approx((3.5 + 3.5 + 5) * 10.0 / 2)
    assert eta_seconds([row("a", "PENDING", 0)], SPEC, time.time()) is None


def test_a_trial_stopped_before_its_last_epoch_is_shown_stopped():
    assert state_of(row("a", "TERMINATED", 2)) == "stopped"
    assert state_of(row("a", "TERMINATED", 5)) == "done"
    assert state_of(row("a", "ERROR", 1)) == "failed"


def test_piped_output_is_plain_lines_without_ansi(capsys):
    display = SweepDisplay(SPEC, Console(file=io.StringIO(), force_terminal=False), plain_every_s=0)
    assert not display.live
    display.update([running("a1b2c3d4", 1, 5, 10, 10.0)])
    display.event("trial a1b2c3d4 finished: val_control_error 0.1")
    display.close()
    out = capsys.readouterr().out
    assert not ANSI.search(out)
    first = out.splitlines()[0]
    assert "0/4 trials ended, 1 running" in first and "a1b2c3d4 1.5/5" in first and "ETA ~" in first
    assert plain_line([running("a", 1, 5, 10, 10.0)], SPEC, 5.0, time.time()).startswith("[5s] ")


RERUN = rerun_command(["search_spaces/smoke.yaml", "--fresh", "--set", "num_samples=4"])


def test_rerun_hint_drops_fresh():
    assert RERUN == "python -m sweep.launch search_spaces/smoke.yaml --set num_samples=4"


@pytest.mark.parametrize("statuses, stopped, code, words", [
    (["TERMINATED"] * 4, None, 0, "sweep finished: 4 trials"),
    (["TERMINATED"] * 4, "budget", 0, "sweep finished"),
    (["TERMINATED", "TERMINATED", "TERMINATED", "ERROR"], None, 1, "1 trial(s) failed"),
    (["TERMINATED", "PAUSED"], "budget", 3, "time budget reached: 1/4"),
    (["TERMINATED", "PAUSED", "PAUSED", "PAUSED"], "ctrl_c", 130, "interrupted"),
    (["ERROR", "PAUSED"], "ctrl_c", 130, "interrupted"),             # Ctrl+C wins over a failed trial
    (["ERROR", "PAUSED"], "budget", 3, "time budget reached"),
    # Open trials that nothing stopped: Tune could not run them, and a rerun would not either.
    (["TERMINATED", "TERMINATED", "PAUSED", "PAUSED"], None, 4, "2 trial(s) it did not run (PAUSED)"),
])
def test_exit_status_for_every_ending(statuses, stopped, code, words):
    line, status = outcome(statuses, 4, stopped, RERUN)
    assert status == code and words in line, line
    if code in (1, 3, 130):
        assert line.endswith(RERUN)
    if code == 4:
        assert RERUN not in line     # rerunning is no advice when it cannot help


def test_epochs_trained_between_reports_count():
    """report_every 2: the last report says epoch 2, the trial's progress file says it is in epoch 4
    at half its steps; the cell, the plain line and the ETA count 3.5 epochs trained, not 2."""
    live = {"epoch": 4, "epochs": 5, "step": 5, "steps": 10, "epoch_started": time.time() - 1.0,
            "epoch_seconds": 10.0}
    between = row("a", "RUNNING", 2, live, val_control_error=0.2, val_realism_abhist=0.3)
    assert trained(between) == 3
    assert plain_line([between], SPEC, 5.0, time.time()).split(" | epochs: ")[1].startswith("a 3.5/5")
    assert eta_seconds([between], replace(SPEC, num_samples=1), time.time()) == pytest.approx(1.5 * 10.0)


def test_a_resumed_epoch_is_timed_from_its_restart_only():
    """Restored at step 6 of 10, then 2 steps in 1 s: the epoch is projected at 5 s (2 steps a
    second), not at 1.25 s (8 steps in 1 s); the ETA counts the 4.2 of 5 epochs left at that pace."""
    live = {"epoch": 1, "epochs": 1, "step": 8, "steps": 10, "epoch_started": time.time() - 1.0,
            "step_started": 6, "epoch_seconds": None}
    resumed = row("a", "RUNNING", 0, live, val_control_error=0.2, val_realism_abhist=0.3)
    spec = replace(SPEC, num_samples=1)
    assert eta_seconds([resumed], spec, live["epoch_started"] + 1.0) == pytest.approx(4.2 * 5.0)
