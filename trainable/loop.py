"""The one training loop, used by `trainable.train`, a Tune trial, a packed trial and `sweep.final`.

- `steps_for(trainers)` is the one choice of how steps are taken: eager, packed or graphed.
- `train_epoch(group)` is the one pass over the training images (of every trainer of a StepGroup).
- `run_epochs(run, sink, epochs, every)` is the one epoch loop. A run has `.epoch`, `.advance(progress)`
  (one epoch → its mean losses) and `.report()` (→ validation metrics, trainer state, sample grid):
  `LocalRun` here, a packed trial's `PackedRun` (sweep/ray_adapter.py). A sink is called with
  (row, state, grid), row = {"epoch", the last epoch's losses, the metrics}: `FolderSink` here
  (MLflow through its on_report), Tune's in sweep/ray_adapter.py. Callers differ only in these two.
  A `Midway` pauses inside epochs when its clock is due (train.checkpoint_every's checkpoints, a
  sweep's reports every N steps): the epoch stops through train_epoch's `stop`, the Midway acts,
  and the same epoch goes on at the next step.
- `run_training(cfg, directory)` is a training folder: it resumes from `checkpoint/` and reports to
  `FolderSink`, which appends a line to `metrics.jsonl` and then writes the checkpoint. A crash
  between the two leaves a metrics line newer than the checkpoint; on resume such lines are dropped
  (rewritten atomically) and the epoch runs again, so the file never holds an epoch twice. A
  mid-epoch checkpoint writes no line: a resume goes on at its next step.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from trainable.checkpoint import load_checkpoint, save_checkpoint
from trainable.config import Config, to_dict
from trainable.engine import Trainer, setup_process
from trainable.files import write_text_atomic
from trainable.graphs import GraphedTrainer
from trainable.interval import Clock, parse_interval
from trainable.layout import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE
from trainable.packed import PackedTrainer
from trainable.steps import EagerStep, StepGroup

SUMMARY_KEYS = ("loss_d", "loss_g", "loss_l1", "loss_control", "val_control_error",
                "val_saturation", "val_pixel_acc_5", "val_realism_abhist")
SAMPLE_COUNT = 8
StepProgress = Callable[[int, int], None]       # (steps done, steps in the epoch)
Report = tuple[dict[str, float], dict, np.ndarray]   # (validation metrics, trainer state, sample grid)


def steps_for(trainers: list[Trainer]) -> StepGroup:
    """How these trainers step together: a CUDA graph when one asks for it (on CUDA), else alone
    eagerly, else packed under vmap."""
    if trainers[0].device.type == "cuda" and any(t.cfg.train.cuda_graph == "on" for t in trainers):
        return GraphedTrainer(trainers)
    return EagerStep(trainers[0]) if len(trainers) == 1 else PackedTrainer(trainers)


class Interrupted(Exception):
    """The epoch in progress stopped after a step because `stop()` said so; the trainers hold its
    position (epoch_step, epoch_rng, epoch_sums), so their state_dict resumes at the next step."""


def _start(group: StepGroup) -> tuple[int, dict[str, torch.Tensor]]:
    """The step the epoch starts at and the loss sums so far: 0 and none, or where an interrupted
    epoch stopped, whose plan is then drawn again from the generator as that epoch began."""
    starts = {trainer.epoch_step for trainer in group.trainers}
    if len(starts) > 1:
        raise ValueError("trainers stepped together must stand at the same step of their epoch")
    for trainer in group.trainers:
        if trainer.epoch_step:
            trainer.rng.set_state(trainer.epoch_rng)
        else:
            trainer.epoch_rng = trainer.rng.get_state()
    keys = group.trainers[0].epoch_sums
    sums = {key: torch.tensor([t.epoch_sums[key] for t in group.trainers], device=group.device) for key in keys}
    return starts.pop(), sums


def train_epoch(group: StepGroup | Trainer, progress: StepProgress | None = None,
                stop: Callable[[], bool] | None = None) -> list[dict[str, float]]:
    """One pass over the training images by every trainer of `group` (a lone Trainer: as
    `steps_for` steps it); → each trainer's mean losses and lr. Stacked state is synced back.
    `stop` is asked after each step; when it says so mid-epoch, Interrupted is raised."""
    group = steps_for([group]) if isinstance(group, Trainer) else group
    for trainer in group.trainers:          # evaluate() leaves the nets in eval mode
        trainer.generator.train()
        trainer.discriminator.train()
    start, sums = _start(group)
    plan = group.plan_epoch(start)
    steps = len(plan)
    noise = group.plan_conditions(steps)
    lr_table = group.lr_factors(steps)
    for i in range(start, steps):
        step_noise = None if noise is None else noise[i]
        for key, value in group.step(group.next_batch(plan, i), lr_table[i], step_noise).items():
            sums[key] = sums[key] + value if key in sums else value
        if progress is not None:
            progress(i + 1, steps)
        if stop is not None and i + 1 < steps and stop():
            host = {key: value.tolist() for key, value in sums.items()}     # one sync, only here
            for k, trainer in enumerate(group.sync()):
                trainer.epoch_step, trainer.epoch_sums = i + 1, {key: values[k] for key, values in host.items()}
            raise Interrupted
    results = group.end_epoch(sums, steps)
    for trainer in group.sync():
        trainer.epoch_step, trainer.epoch_rng, trainer.epoch_sums = 0, None, {}
    return results


def report_of(trainer: Trainer) -> Report:
    return trainer.evaluate(), trainer.state_dict(), trainer.sample_grid(SAMPLE_COUNT)


class LocalRun:
    """A trainer in this process; its StepGroup is kept across epochs (a CUDA graph is captured once)."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.group = trainer, None
        self.done = trainer.epoch_step         # steps done of the epoch in progress

    @property
    def epoch(self) -> int:
        return self.trainer.epoch

    @property
    def steps(self) -> int:
        """Steps trained in all: the finished epochs' and those of the epoch in progress."""
        return self.trainer.step + self.done

    def advance(self, progress: StepProgress | None = None,
                stop: Callable[[], bool] | None = None) -> dict[str, float]:
        self.group = self.group or steps_for([self.trainer])

        def seen(done: int, total: int) -> None:
            self.done = done
            if progress is not None:
                progress(done, total)
        self.done = self.trainer.epoch_step
        losses = train_epoch(self.group, seen, stop)[0]
        self.done = 0
        return losses

    def partial_losses(self) -> dict[str, float]:
        """The mean losses of the epoch in progress so far (after an Interrupted)."""
        return {key: value / self.trainer.epoch_step for key, value in self.trainer.epoch_sums.items()}

    def report(self) -> Report:
        return report_of(self.trainer)


class Midway:
    """A pause inside an epoch: when `clock` is due after a step, the epoch stops (Interrupted),
    `act(losses so far)` runs (a checkpoint, a report), and the same epoch goes on at the next step:
    the trainer's position (epoch_step, epoch_rng) redraws the same plan (trainable.source's contract)."""

    def __init__(self, clock: Clock, act: Callable[[dict[str, float]], None]):
        self.clock, self.act = clock, act

    def __call__(self, losses: dict[str, float]) -> None:
        self.act(losses)
        self.clock.reset()


def _advance(run, progress: StepProgress | None, stop: Callable[[], bool] | None,
             midway: Midway | None) -> dict[str, float]:
    """One epoch of `run`, paused by `midway` when due; `stop`'s Interrupted leaves here."""
    if midway is None:
        return run.advance(progress, stop)
    while True:
        stopped = []

        def asked() -> bool:
            if stop is not None and stop():
                stopped.append(True)
                return True
            return midway.clock.due()
        try:
            return run.advance(progress, asked)
        except Interrupted:
            if stopped:
                raise
            midway(run.partial_losses())


def run_epochs(run, sink: Callable[[dict, dict, np.ndarray], None], epochs: int, every: int = 1,
               progress: StepProgress | None = None, stop: Callable[[], bool] | None = None,
               midway: Midway | None = None) -> None:
    """Train `run` up to `epochs`, reporting after every `every`-th epoch and the last. A run
    restored at its last epoch still reports once: Tune marks a trial done only on a report.
    `stop` goes to each epoch (train_epoch), whose Interrupted leaves here; `midway` pauses inside
    epochs (and at the end of one that does not report) when its clock is due."""
    losses: dict[str, float] = {}
    reported = False
    while run.epoch < epochs or not reported:
        target = min(epochs, (run.epoch // every + 1) * every)
        while run.epoch < target:
            losses = _advance(run, progress, stop, midway)
            if midway is not None and run.epoch < target and midway.clock.due():   # due at the epoch's last step
                midway(losses)
        reported = True
        metrics, state, grid = run.report()
        sink({"epoch": run.epoch, **losses, **metrics}, state, grid)
        if midway is not None:
            midway.clock.reset()


def report_midway(run: LocalRun, sink: Callable[[dict, dict, np.ndarray], None]) -> Callable[[dict], None]:
    """A Midway action that reports to `sink` inside an epoch: the row says the epochs finished and
    the steps done of the next (`epoch_step`), the losses so far, and the validation metrics."""
    def act(losses: dict[str, float]) -> None:
        metrics, state, grid = run.report()
        sink({"epoch": run.epoch, "epoch_step": run.trainer.epoch_step, **losses, **metrics}, state, grid)
    return act


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl; a torn last line (a kill during its append) is left out."""
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    rows = [json.loads(line) for line in lines[:-1]]
    try:
        return rows + [json.loads(line) for line in lines[-1:]]
    except json.JSONDecodeError:
        return rows


def _trim_metrics(path: Path, last_epoch: int) -> None:
    """Keep the rows up to the checkpoint's epoch (later ones are trained again), torn lines dropped."""
    text = "".join(json.dumps(row) + "\n" for row in read_metrics(path) if row["epoch"] <= last_epoch)
    if path.exists() and path.read_text() != text:
        write_text_atomic(path, text)


def summary_line(row: dict, seconds: float, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"{seconds:.1f}s"]
    parts += [f"{key}={row[key]:.4g}" for key in SUMMARY_KEYS if key in row]
    return "  ".join(parts)


class FolderSink:
    """A training folder: per report a metrics.jsonl line, then the checkpoint, then a summary line."""

    def __init__(self, directory: Path, epochs: int, console: Console,
                 on_report: Callable[[dict], None] | None = None):
        self.directory, self.epochs, self.console, self.on_report = directory, epochs, console, on_report
        self.started = time.perf_counter()

    def __call__(self, row: dict, state: dict, grid: np.ndarray) -> None:
        with open(self.directory / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        save_checkpoint(self.directory / CHECKPOINT_DIR, state)
        self.console.print(summary_line(row, time.perf_counter() - self.started, self.epochs), soft_wrap=True)
        self.started = time.perf_counter()
        if self.on_report is not None:
            self.on_report(row)


def resume(trainer: Trainer, directory: Path) -> None:
    """Load the newest checkpoint in `directory/checkpoint`, if any, and trim metrics.jsonl to it."""
    state = load_checkpoint(directory / CHECKPOINT_DIR)
    if state is not None:
        trainer.load_state_dict(state)
        inside = f", step {trainer.epoch_step} of epoch {trainer.epoch + 1}" if trainer.epoch_step else ""
        print(f"resumed from {directory / CHECKPOINT_DIR} at epoch {trainer.epoch}{inside}")
    _trim_metrics(directory / METRICS_FILE, trainer.epoch)


def checkpoints(run: LocalRun, folder: Path) -> Midway | None:
    """train.checkpoint_every as a Midway that saves the trainer, its place in the epoch included,
    to `folder`; None when it is 0 (checkpoints at reports only)."""
    interval = parse_interval(run.trainer.cfg.train.checkpoint_every, ("steps",), durations=True)
    if not interval:
        return None
    return Midway(Clock(interval, lambda: run.steps),
                  lambda losses: save_checkpoint(folder, run.trainer.state_dict()))


def run_training(cfg: Config, directory: str | Path, progress: bool = True,
                 on_report: Callable[[Trainer, dict], None] | None = None,
                 trainer: Trainer | None = None) -> Trainer:
    """Train `cfg` in `directory` up to cfg.train.epochs, resuming from what is there."""
    directory = Path(directory)
    setup_process(cfg)
    trainer = trainer or Trainer(cfg)         # bad data fails here, before any folder is made
    directory.mkdir(parents=True, exist_ok=True)
    resume(trainer, directory)
    write_text_atomic(directory / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if trainer.epoch >= cfg.train.epochs:
        print(f"{directory}: already trained {trainer.epoch} of {cfg.train.epochs} epochs")
        return trainer
    columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not progress) as bar:
        task = bar.add_task("train", total=None, epoch=trainer.epoch + 1)

        def show(done: int, total: int) -> None:
            if done == 1 or bar.tasks[task].total is None:   # a new (or resumed) epoch: a fresh estimate
                bar.reset(task, total=total, epoch=trainer.epoch + 1)
            bar.update(task, completed=done)
        callback = (lambda row: on_report(trainer, row)) if on_report is not None else None
        sink = FolderSink(directory, cfg.train.epochs, bar.console, callback)
        run = LocalRun(trainer)
        run_epochs(run, sink, cfg.train.epochs, progress=show, midway=checkpoints(run, directory / CHECKPOINT_DIR))
    print(f"done: {trainer.epoch} epochs; checkpoint, config.yaml and metrics.jsonl in {directory}")
    return trainer
