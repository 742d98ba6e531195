"""Wall time of N trials through `sweep.launch` (Ray Tune + Optuna + MLflow, one trial at a time)
against the same N trainings in a plain loop, measured in the same run.

    python bench/sweep_overhead.py --trials 2 --epochs 3 --synthetic-size 2048

The sweep pays for Ray's start, trial actors, a checkpoint + sample grid + exported generator at every
report, and MLflow logging; the plain loop trains and evaluates only. Overhead = sweep / loop − 1.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)     # not bench/, whose concurrent.py shadows the standard library's

from sweep.spec import load_spec  # noqa: E402
from trainable.engine import Trainer, setup_process  # noqa: E402
from trainable.loop import train_epoch  # noqa: E402


def bench_spec(folder: Path, args: argparse.Namespace) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    raw["name"] = "overhead"
    raw["config"]["data"]["synthetic_size"] = args.synthetic_size
    raw["config"]["model"]["width"] = args.width
    raw["config"]["train"]["epochs"] = args.epochs
    raw["space"] = {"loss.saturation.weight": {"type": "choice", "values": [5.0]},
                    "loss.saturation.target": {"type": "choice", "values": [0.5]}}
    raw.update(num_samples=args.trials, max_concurrent=1, sampler={"type": "random", "seed": 0})
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def plain_loop(spec_path: Path, trials: int) -> tuple[float, float]:
    """→ (total wall s, mean epoch s) of the same trainings without Ray or MLflow."""
    spec = load_spec(spec_path)
    cfg = spec.trial_config({"loss.saturation.weight": 5.0, "loss.saturation.target": 0.5})
    started, epoch_times = time.perf_counter(), []
    setup_process(cfg)
    for _ in range(trials):
        trainer = Trainer(cfg)
        while trainer.epoch < cfg.train.epochs:
            epoch_start = time.perf_counter()
            train_epoch(trainer)
            trainer.evaluate()
            epoch_times.append(time.perf_counter() - epoch_start)
    return time.perf_counter() - started, sum(epoch_times) / len(epoch_times)


def through_launch(spec_path: Path, folder: Path) -> float:
    from sweep.launch import main
    started = time.perf_counter()
    code = main([str(spec_path), "--storage", str(folder / "sweeps"),
                 "--mlflow-uri", f"sqlite:///{folder / 'mlflow.db'}"])
    if code != 0:
        raise SystemExit(f"sweep failed with exit status {code}")
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--synthetic-size", type=int, default=2048, help="images; sets the epoch length")
    parser.add_argument("--width", type=float, default=0.125)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        spec_path = bench_spec(folder, args)
        loop_s, epoch_s = plain_loop(spec_path, args.trials)
        sweep_s = through_launch(spec_path, folder)
    print(f"\n{args.trials} trials x {args.epochs} epochs, {args.synthetic_size} synthetic images, "
          f"width {args.width}, one trial at a time; mean epoch {epoch_s:.1f} s")
    print(f"{'mode':<14}{'wall s':>10}{'ratio':>10}")
    print(f"{'plain loop':<14}{loop_s:>10.1f}{1.0:>10.2f}")
    print(f"{'sweep.launch':<14}{sweep_s:>10.1f}{sweep_s / loop_s:>10.2f}")
    print(f"overhead: {100 * (sweep_s / loop_s - 1):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
