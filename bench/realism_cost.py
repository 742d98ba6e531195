"""What the realism metrics cost per report: `Trainer.evaluate` with val_kid_controlled at
several input sizes and reference counts, against the same evaluate without it, on this CPU.

    python -m bench.realism_cost --npz ../shared/data/cifar10/test.npz [--threads 2] [--repeats 2]

A `film` generator at width 0.25 conditioned on saturation over [0.1, 0.5] (5 grid points, each
judged against its natural reference) evaluates 500 validation images of the npz (a 10% split).
Per row: seconds of the first evaluate (the reference's features are computed once there) and
the median of the later ones (a report's steady cost) in wall and in this process's CPU seconds,
and the CPU seconds as a ratio to the baseline's evaluate without KID (val_artefact is in every
row, the baseline included). Untrained weights: the cost does not depend on them.
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

import torch

from trainable.config import load_config
from trainable.engine import Trainer, setup_process

BASE = ["data.dataset=npz", "data.train_limit=64", "data.val_limit=500", "model.width=0.25",
        "model.conditioning=film", "loss.saturation.weight=10",
        "loss.saturation.range=[0.1,0.5]", "train.device=cpu", "train.epochs=1000"]
# (label, overrides): KID off is the baseline; FID's own 299-pixel input, then the cheaper settings
ROWS = (("no KID (baseline)", ["train.kid_every=0"]),
        ("KID 299 px, 50 images", ["train.kid_every=1", "train.kid_input_size=299", "train.realism_images=50"]),
        ("KID 128 px, 50 images", ["train.kid_every=1", "train.kid_input_size=128", "train.realism_images=50"]),
        ("KID 128 px, 25 images", ["train.kid_every=1", "train.kid_input_size=128", "train.realism_images=25"]),
        ("KID 75 px, 25 images", ["train.kid_every=1", "train.kid_input_size=75", "train.realism_images=25"]))


def timed_evaluates(overrides: list[str], repeats: int) -> tuple[float, float, float, dict]:
    """(wall seconds of the first evaluate, median wall and CPU seconds of the next `repeats`, the
    last metrics). CPU seconds (this process, all threads) say less about other jobs' load."""
    trainer = Trainer(load_config(None, overrides))
    wall, cpu = [], []
    for _ in range(repeats + 1):
        started, started_cpu = time.perf_counter(), time.process_time()
        metrics = trainer.evaluate()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return wall[0], statistics.median(wall[1:]), statistics.median(cpu[1:]), metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realism_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--npz", required=True, help="uint8 NHWC `images` (CIFAR-10's test.npz)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="evaluates timed after the first")
    args = parser.parse_args(argv)
    base = [*BASE, f"data.path={Path(args.npz).resolve()}", f"train.threads={args.threads}"]
    setup_process(load_config(None, base))
    baseline = None
    print(f"{'setting':<24} {'first s':>8} {'report s':>9} {'CPU s':>7} {'× no KID (CPU)':>15} "
          f"{'val_kid_controlled':>19}")
    for label, extra in ROWS:
        first, steady, cpu, metrics = timed_evaluates(base + extra, args.repeats)
        baseline = baseline or cpu
        kid = metrics.get("val_kid_controlled")
        kid_text = "-" if kid is None else f"{kid:.4f}"
        print(f"{label:<24} {first:8.1f} {steady:9.1f} {cpu:7.1f} {cpu / baseline:15.1f} {kid_text:>19}", flush=True)
    print(f"{torch.get_num_threads()} threads; 500 validation images; report s: median of {args.repeats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
