"""How long a sweep takes, computed in one place: the launcher's no-GPU line, the suggested CPU-sized
sweep and the live display's ETA all call `Pace.seconds_for`, so the times they print agree.

A pace is one trial's epoch time while `at_once` trials train side by side. Before the sweep the
launcher measures it (`Timing`: one trial alone on its share of the threads; as many at once as the
CPUs hold); once trials run, the display measures it (their epochs, slowed by sharing the CPUs; as
many at once as are open). No torch and no Ray here: the measuring is sweep.prepare's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

CPU_SIZED_WIDTH = 0.25
CPU_SIZED_S = 3600.0            # what the suggested CPU-sized sweep aims at
LIMIT_ROUNDING = 1000           # a suggested data.train_limit is a round number of images


@dataclass(frozen=True)
class Pace:
    epoch_s: float
    at_once: int

    def seconds_for(self, epochs: float) -> float:
        """Seconds to train `epochs` trial epochs in all, `at_once` trials side by side."""
        return epochs * self.epoch_s / max(1, self.at_once)


@dataclass(frozen=True)
class Timing:
    """One trial's measured costs on this machine: a training step (one batch) and one evaluated image."""
    step_s: float
    eval_image_s: float
    batch_size: int
    val_count: int

    def epoch_s(self, train_count: int) -> float:
        return self.step_s * steps_per_epoch(train_count, self.batch_size) + self.eval_image_s * self.val_count


def steps_per_epoch(train_count: int, batch_size: int) -> int:
    return max(1, train_count // batch_size)


def trials_at_once(max_concurrent: int, cpus: float, threads: int) -> int:
    """Trials that train at full speed side by side: more share the CPUs and each runs slower."""
    return max(1, min(max_concurrent, math.floor(max(cpus, 1) / threads)))


def clock(seconds: float | None) -> str:
    """'45s', '12m03s', '35h54m'; '-' for unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cpu_sized(timing: Timing, at_once: int, train_count: int, epochs: int, num_samples: int) -> tuple[int, int, float]:
    """(num_samples, data.train_limit, seconds) of a sweep of about CPU_SIZED_S: as many trials as fit
    on the full data (at least two), else two trials on a training set cut to fit."""
    def seconds(samples: int, limit: int) -> float:
        return Pace(timing.epoch_s(limit), at_once).seconds_for(samples * epochs)
    fits = math.floor(CPU_SIZED_S / max(seconds(1, train_count), 1e-9))
    samples = min(num_samples, max(2, fits))
    if fits >= samples:
        return samples, train_count, seconds(samples, train_count)
    epoch_budget_s = CPU_SIZED_S * at_once / (samples * epochs) - timing.eval_image_s * timing.val_count
    limit = math.floor(max(epoch_budget_s, 0.0) / timing.step_s) * timing.batch_size
    if limit > LIMIT_ROUNDING:
        limit = limit // LIMIT_ROUNDING * LIMIT_ROUNDING
    limit = min(train_count, max(limit, timing.batch_size))
    return samples, limit, seconds(samples, limit)


def no_gpu_line(spec, cfg, cpus: float, threads: int, timing: Timing, train_count: int,
                small: Timing) -> tuple[str, Pace]:
    """The rest of the launcher's 'no GPU: ' line and the pace it assumed (the display's first ETA).
    `cfg` is the probed trial config, `small` the timing of it at CPU_SIZED_WIDTH."""
    at_once = trials_at_once(spec.max_concurrent, cpus, threads)
    pace = Pace(timing.epoch_s(train_count), at_once)
    total_s = pace.seconds_for(spec.num_samples * cfg.train.epochs)
    bound = "up to " if spec.scheduler == "asha" else ""
    line = (f"training this sweep takes {bound}{clock(total_s)} on {cpus:g} CPUs "
            f"({spec.num_samples} trials x {cfg.train.epochs} epochs x "
            f"{steps_per_epoch(train_count, timing.batch_size)} steps, {timing.step_s:.2f} s per batch of "
            f"{timing.batch_size} at width {cfg.model.width:g}, measured now)")
    if spec.time_budget_s is not None and spec.time_budget_s < total_s:
        line += f"; its time budget stops it after {clock(spec.time_budget_s)} (rerun continues)"
    width = min(CPU_SIZED_WIDTH, cfg.model.width)
    samples, limit, sized_s = cpu_sized(small, at_once, train_count, cfg.train.epochs, spec.num_samples)
    if width == cfg.model.width and samples == spec.num_samples and limit == train_count:
        return line + "; it is CPU-sized already", pace
    return (line + f"; a CPU-sized sweep, {bound}{clock(sized_s)}: --set model.width={width:g} "
                   f"--set num_samples={samples} --set data.train_limit={limit}"), pace
