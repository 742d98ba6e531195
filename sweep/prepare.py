"""What the driver does once before any trial starts: find the data (or download and check it) and,
without a GPU, measure a few steps to say how long the sweep would take.

Trials only read the data `prepare_data` left in place: the official archive is fetched (MD5-checked)
and extracted here, the JPEG mirror decoded and cached as `train.npz` here, not once per trial.
No Ray here; torch is imported only by the estimate.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np

from trainable.config import Config, DataConfig, apply_overrides
from trainable.datasets import load_raw

MEASURED_STEPS = 2              # timed after one warm-up step
CPU_SIZED_WIDTH = 0.25
CPU_SIZED_HOURS = 1.0           # what the suggested CPU-sized sweep aims at


def _missing_folders(path: str) -> list[Path]:
    """The folders on the way to path that do not exist yet, deepest first."""
    if not path:
        return []
    target = Path(path).expanduser()
    return [folder for folder in [target, *target.parents] if not folder.exists()]


def prepare_data(cfg: DataConfig) -> np.ndarray:
    """The training images as uint8 NHWC, read (or downloaded, checked and extracted) once.

    Raises DataError (one line) when the data is missing, unreadable, cannot be downloaded or fails
    its checksum; then any folder made on the way is removed again, so nothing is left behind.
    """
    created = _missing_folders(cfg.path)
    try:
        return load_raw(cfg, "train")
    except BaseException:
        for folder in created:           # deepest first; a folder that holds something stays
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


def _format_duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 360000 else f"{seconds / 3600:.0f} h"


def _measure(cfg: Config, images: np.ndarray) -> tuple[float, float]:
    """(median seconds of one training step, seconds to evaluate one image) of cfg, from a few real
    steps after a warm-up step and one evaluation batch."""
    from trainable.data import ColorData, to_lab
    from trainable.engine import Trainer, setup_process
    from trainable.loop import train_epoch
    setup_process(cfg)
    count = min(len(images), cfg.train.batch_size * (MEASURED_STEPS + 1))
    lab = to_lab(images[:count], "cpu")
    val = lab[: min(count, cfg.train.eval_batch_size)]
    trainer = Trainer(cfg, data=ColorData(train=lab, val=val))
    stamps = [time.perf_counter()]
    train_epoch(trainer, lambda done, total: stamps.append(time.perf_counter()))
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    started = time.perf_counter()
    trainer.evaluate()
    return statistics.median(gaps[1:] or gaps), (time.perf_counter() - started) / len(val)


def _trial_seconds(cfg: Config, images: np.ndarray) -> tuple[float, float, int, int]:
    """(seconds per trial, seconds per step, steps per epoch, training images) of cfg on images."""
    from trainable.data import val_count
    val = val_count(len(images), cfg.data.val_fraction)
    train_count = len(images) - val
    if cfg.data.val_limit:
        val = min(val, cfg.data.val_limit)
    if cfg.data.train_limit:
        train_count = min(train_count, cfg.data.train_limit)
    steps = max(1, train_count // cfg.train.batch_size)
    step_s, eval_image_s = _measure(cfg, images)
    return (step_s * steps + eval_image_s * val) * cfg.train.epochs, step_s, steps, train_count


def cpu_estimate(spec, images: np.ndarray, cpus: float) -> str:
    """The rest of the launcher's 'no GPU: ' line: the sweep's length projected from steps measured
    now, and a CPU-sized sweep."""
    from sweep.spec import probe_config
    probe = probe_config(spec.config, spec.space)
    threads = probe.train.threads or max(1, math.floor(cpus / spec.max_concurrent))   # as a trial gets
    cfg = apply_overrides(probe, {"train.threads": threads, "train.device": "cpu"})
    parallel = max(1, min(spec.max_concurrent, math.floor(max(cpus, 1) / threads)))
    trial_s, step_s, steps, train_count = _trial_seconds(cfg, images)
    total_s = trial_s * spec.num_samples / parallel
    bound = "up to " if spec.scheduler == "asha" else ""
    line = (f"training this sweep takes {bound}{_format_duration(total_s)} on {cpus:g} CPUs "
            f"({spec.num_samples} trials x {cfg.train.epochs} epochs x {steps} steps, "
            f"{step_s:.2f} s per batch of {cfg.train.batch_size} at width {cfg.model.width:g}, measured now)")
    if spec.time_budget_s is not None and spec.time_budget_s < total_s:
        line += f"; its time budget stops it after {_format_duration(spec.time_budget_s)} (rerun continues)"
    small = apply_overrides(cfg, {"model.width": min(CPU_SIZED_WIDTH, cfg.model.width)})
    small_trial_s = trial_s if small == cfg else _trial_seconds(small, images)[0]
    budget_s = CPU_SIZED_HOURS * 3600 * parallel
    fits = math.floor(budget_s / max(small_trial_s, 1e-9))
    if fits >= spec.num_samples and small == cfg:
        return line + "; it is CPU-sized already"
    sized = f"; a CPU-sized sweep of about {CPU_SIZED_HOURS:g} h: --set model.width={small.model.width:g}"
    if fits >= 2:
        return line + f"{sized} --set num_samples={min(fits, spec.num_samples)}"
    limit = int(train_count * budget_s / (2 * small_trial_s)) // 1000 * 1000
    return line + f"{sized} --set num_samples=2 --set data.train_limit={max(limit, small.train.batch_size)}"
