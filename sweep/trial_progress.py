"""A running trial's link to its driver through small files (never a Ray call: a step never waits
on the driver): how far it is inside its epoch, for the live display, and the launcher's stop.

A trial's `progress(done, total)` hook (trainable.loop's StepProgress) rewrites one small JSON file,
`<sweep>/.progress/<trial_id>.json`, at most once a second: the epoch in progress, the steps done
of the epoch's steps, when that epoch began and how long the trial's last whole epoch took
(training, evaluation and report). When the launcher stops it writes the sweep's STOP_FILE; a trial
that saw it (`stop_asked`) saves its place and writes `<trial_id>.saved` beside its progress file.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from trainable.files import write_text_atomic
from trainable.layout import PROGRESS_DIR, STOP_FILE

SAVED_SUFFIX = ".saved"
WRITE_EVERY_S = 1.0
STOP_LOOK_S = 0.5


class TrialProgress:
    """The progress hook of one trial; `run.epoch` is the number of epochs it has finished."""

    def __init__(self, sweep_dir: str | Path, trial_id: str, run, epochs: int):
        self.path = Path(sweep_dir) / PROGRESS_DIR / f"{trial_id}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run, self.epochs = run, epochs
        self.stop_file = Path(sweep_dir) / STOP_FILE
        self._looked, self._stop = float("-inf"), False
        self._epoch = self._epoch_started = self._epoch_seconds = None
        self._step_started = 0
        self._written = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        epoch = self.run.epoch + 1
        if epoch != self._epoch:          # the first step of an epoch: the previous one ended
            if self._epoch is not None and epoch == self._epoch + 1:
                self._epoch_seconds = now - self._epoch_started
            # a resumed epoch starts here at step done - 1: the steps timed are those from there
            self._epoch, self._epoch_started, self._step_started = epoch, now, done - 1
        if now - self._written >= WRITE_EVERY_S or done == total:
            self._written = now
            record = {"epoch": epoch, "epochs": self.epochs, "step": done, "steps": total,
                      "epoch_started": self._epoch_started, "step_started": self._step_started,
                      "epoch_seconds": self._epoch_seconds}
            try:
                write_text_atomic(self.path, json.dumps(record))
            except OSError:               # progress is a display aid: never fail a trial for it
                pass


    def stop_asked(self) -> bool:
        """Whether the launcher is stopping (its STOP_FILE), looked at most every STOP_LOOK_S: the
        sweep folder may be a network drive."""
        now = time.monotonic()
        if now - self._looked >= STOP_LOOK_S:
            self._looked, self._stop = now, self.stop_file.exists()
        return self._stop

    def saved(self) -> None:
        """Tell the stopping launcher this trial has saved its place (a file beside its progress)."""
        write_text_atomic(self.path.with_suffix(SAVED_SUFFIX), "")


def saved_trials(sweep_dir: str | Path) -> set[str]:
    """The trials that have saved their place since the launcher asked them to stop."""
    return {path.stem for path in (Path(sweep_dir) / PROGRESS_DIR).glob(f"*{SAVED_SUFFIX}")}


def clear_progress(sweep_dir: str | Path) -> None:
    """Drop the saved marks and progress records a previous launcher left: their clocks were that
    process's, and a restored trial's stale record would time its epoch from before the restart."""
    for path in [*(Path(sweep_dir) / PROGRESS_DIR).glob(f"*{SAVED_SUFFIX}"),
                 *(Path(sweep_dir) / PROGRESS_DIR).glob("*.json")]:
        path.unlink(missing_ok=True)


def read_progress(sweep_dir: str | Path) -> dict[str, dict]:
    """trial_id → its last progress record; files half-written or gone are skipped."""
    records = {}
    for path in (Path(sweep_dir) / PROGRESS_DIR).glob("*.json"):
        try:
            records[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return records
