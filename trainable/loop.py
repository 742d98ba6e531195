"""The resumable training loop shared by `trainable.train`, the final run and the benchmarks.

Per epoch: train, evaluate, append one JSON line to `metrics.jsonl`, then write the checkpoint.
A crash between the two leaves a metrics line newer than the checkpoint; on resume such lines are
dropped (rewritten atomically) and the epoch runs again, so the file never holds an epoch twice.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from trainable.checkpoint import load_checkpoint, save_checkpoint
from trainable.config import Config, to_dict
from trainable.engine import Trainer

SUMMARY_KEYS = ("loss_d", "loss_g", "loss_l1", "loss_control", "val_control_error",
                "val_saturation", "val_pixel_acc_5", "val_realism_abhist")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _trim_metrics(path: Path, last_epoch: int) -> None:
    rows = read_metrics(path)
    kept = [row for row in rows if row["epoch"] <= last_epoch]
    if len(kept) != len(rows):
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))


def summary_line(row: dict, seconds: float, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"{seconds:.1f}s"]
    parts += [f"{key}={row[key]:.4g}" for key in SUMMARY_KEYS if key in row]
    return "  ".join(parts)


def resume(trainer: Trainer, directory: Path) -> None:
    """Load the newest checkpoint in `directory/checkpoint`, if any, and trim metrics.jsonl to it."""
    state = load_checkpoint(directory / "checkpoint")
    if state is not None:
        trainer.load_state_dict(state)
        print(f"resumed from {directory / 'checkpoint'} at epoch {trainer.epoch}")
    _trim_metrics(directory / "metrics.jsonl", trainer.epoch)


def run_training(cfg: Config, directory: str | Path, progress: bool = True,
                 on_report: Callable[[Trainer, dict], None] | None = None,
                 trainer: Trainer | None = None) -> Trainer:
    """Train `cfg` in `directory` up to cfg.train.epochs, resuming from what is there."""
    directory = Path(directory)
    trainer = trainer or Trainer(cfg)         # bad data fails here, before any folder is made
    directory.mkdir(parents=True, exist_ok=True)
    resume(trainer, directory)
    write_text_atomic(directory / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if trainer.epoch >= cfg.train.epochs:
        print(f"{directory}: already trained {trainer.epoch} of {cfg.train.epochs} epochs")
        return trainer
    columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not progress) as bar:
        while trainer.epoch < cfg.train.epochs:
            task = bar.add_task("train", total=None, epoch=trainer.epoch + 1)
            started = time.perf_counter()
            row = {"epoch": trainer.epoch + 1}
            row.update(trainer.train_epoch(lambda done, total: bar.update(task, completed=done, total=total)))
            row.update(trainer.evaluate())
            bar.remove_task(task)
            with open(directory / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            save_checkpoint(directory / "checkpoint", trainer.state_dict())
            bar.console.print(summary_line(row, time.perf_counter() - started, cfg.train.epochs), soft_wrap=True)
            if on_report is not None:
                on_report(trainer, row)
    print(f"done: {trainer.epoch} epochs; checkpoint, config.yaml and metrics.jsonl in {directory}")
    return trainer
