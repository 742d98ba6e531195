"""How far each running trial is inside its epoch, for the driver's live display.

A trial's `progress(done, total)` hook (trainable.loop's StepProgress) rewrites one small JSON file,
`<sweep>/.progress/<trial_id>.json`, at most once a second: the epoch in progress, the steps done
of the epoch's steps, when that epoch began and how long the trial's last whole epoch took
(training, evaluation and report). A file rename, not a Ray call: the step never waits on the driver.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from trainable.files import write_text_atomic
from trainable.layout import PROGRESS_DIR

WRITE_EVERY_S = 1.0


class TrialProgress:
    """The progress hook of one trial; `run.epoch` is the number of epochs it has finished."""

    def __init__(self, sweep_dir: str | Path, trial_id: str, run, epochs: int):
        self.path = Path(sweep_dir) / PROGRESS_DIR / f"{trial_id}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run, self.epochs = run, epochs
        self._epoch = self._epoch_started = self._epoch_seconds = None
        self._written = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        epoch = self.run.epoch + 1
        if epoch != self._epoch:          # the first step of an epoch: the previous one ended
            if self._epoch is not None and epoch == self._epoch + 1:
                self._epoch_seconds = now - self._epoch_started
            self._epoch, self._epoch_started = epoch, now
        if now - self._written >= WRITE_EVERY_S or done == total:
            self._written = now
            record = {"epoch": epoch, "epochs": self.epochs, "step": done, "steps": total,
                      "epoch_started": self._epoch_started, "epoch_seconds": self._epoch_seconds}
            try:
                write_text_atomic(self.path, json.dumps(record))
            except OSError:               # progress is a display aid: never fail a trial for it
                pass


def read_progress(sweep_dir: str | Path) -> dict[str, dict]:
    """trial_id → its last progress record; files half-written or gone are skipped."""
    records = {}
    for path in (Path(sweep_dir) / PROGRESS_DIR).glob("*.json"):
        try:
            records[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return records
