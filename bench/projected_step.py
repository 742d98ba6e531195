"""What `model.output=projected` costs per training step on the CPU, against `learned`.

    python -m bench.projected_step [--widths 0.25 0.5] [--steps 6] [--threads 1]

Per width and per control (saturation fixed at 0.3; saturation conditioned on [0.1, 0.6]): the
median CPU seconds (this process) of a training step after one warm-up step, batch 64 of synthetic
32×32 images, for both outputs, and the ratio projected / learned. CPU seconds, not wall: this
machine is shared, and other jobs' load changes wall time more than it changes CPU time.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, Python puts bench/ first on sys.path, where concurrent.py shadows the standard
# library's `concurrent` (torch imports it): import from the project root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import statistics
import time

from trainable.config import load_config
from trainable.engine import Trainer, setup_process
from trainable.loop import steps_for

BASE = ["data.dataset=synthetic", "train.batch_size=64", "train.device=cpu",
        "train.precision=fp32"]
CONTROLS = {"saturation fixed 0.3": ["loss.saturation.weight=5", "loss.saturation.target=0.3"],
            "saturation conditioned": ["model.conditioning=film", "loss.saturation.weight=5",
                                       "loss.saturation.range=[0.1,0.6]"]}


def synthetic_size(steps: int) -> int:
    """Images enough for the warm-up and `steps` timed batches of 64 in one epoch, after the
    validation split (data.val_fraction 0.1) is held out."""
    return 64 * (steps + 2) * 10 // 9 + 64


def step_seconds(overrides: list[str], steps: int) -> float:
    """Median CPU seconds of one training step after a warm-up step."""
    trainer = Trainer(load_config(None, overrides))
    group = steps_for([trainer])
    plan = group.plan_epoch()
    noise = group.plan_conditions(len(plan))
    lr_table = group.lr_factors(len(plan))
    seconds = []
    for i in range(steps + 1):
        started = time.process_time()
        group.step(group.next_batch(plan, i), lr_table[i], None if noise is None else noise[i])
        seconds.append(time.process_time() - started)
    return statistics.median(seconds[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.projected_step", description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_process(load_config(None, [*BASE, f"train.threads={args.threads}"]))
    print(f"{'width':>5}  {'control':<24} {'learned s':>9} {'projected s':>11} {'ratio':>6}")
    for width in args.widths:
        for label, control in CONTROLS.items():
            common = [*BASE, f"data.synthetic_size={synthetic_size(args.steps)}", f"model.width={width}", f"train.threads={args.threads}", *control]
            learned = step_seconds(common + ["model.output=learned"], args.steps)
            projected = step_seconds(common + ["model.output=projected"], args.steps)
            print(f"{width:5g}  {label:<24} {learned:9.3f} {projected:11.3f} {projected / learned:6.2f}", flush=True)
    print(f"CPU seconds per step (median of {args.steps}), batch 64, {args.threads} thread(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
