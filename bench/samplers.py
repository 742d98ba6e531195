"""Which sampler finds the better point when trials run ten at a time: constant-liar TPE (what
`sweep.ray_adapter` uses), plain TPE, random search.

    python -m bench.samplers                        # 30 trials, 10 at a time, 5 seeds
    python -m bench.samplers --trials 60 --seeds 10

The objective is the 6-D Hartmann function on [0, 1]^6 (minimum -3.32237, a standard test for
Bayesian optimization), cheap and with a known optimum: no GAN, no Ray. Concurrency is mimicked
with Optuna directly: each round asks `--concurrent` trials before any is told, as `max_concurrent`
Tune trials are asked before the first one ends. TPE's first 10 trials are random (its startup),
so with 10 at a time the samplers differ from the second round on. Prints the best value found per
seed and its mean ± std per sampler, and the gap to the optimum.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import numpy as np
import optuna

HARTMANN_MIN = -3.32237
ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
              [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                     [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
SPACE = {f"x{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(6)}


def hartmann6(x: np.ndarray) -> float:
    return float(-np.sum(ALPHA * np.exp(-np.sum(A * (x - P) ** 2, axis=1))))


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "constant-liar TPE": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True),
    "plain TPE": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=False),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


def best_value(sampler: optuna.samplers.BaseSampler, trials: int, concurrent: int) -> float:
    """Best value after `trials` trials asked `concurrent` at a time, each round told only once
    every trial of it was asked."""
    study = optuna.create_study(sampler=sampler)
    for start in range(0, trials, concurrent):
        asked = [study.ask(SPACE) for _ in range(min(concurrent, trials - start))]
        for trial in asked:
            study.tell(trial, hartmann6(np.array([trial.params[f"x{i}"] for i in range(6)])))
    return study.best_value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.samplers", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    if min(args.trials, args.concurrent, args.seeds) < 1:
        parser.error("--trials, --concurrent and --seeds must be >= 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = list(range(args.seeds))
    print(f"6-D Hartmann (minimum {HARTMANN_MIN}), {args.trials} trials, {args.concurrent} asked before "
          f"any is told, seeds {seeds[0]}..{seeds[-1]}; best value found (lower is better)\n")
    print("| sampler | mean ± std | gap to optimum | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|---|---|" + "---|" * len(seeds))
    for name, make in SAMPLERS.items():
        found = np.array([best_value(make(seed), args.trials, args.concurrent) for seed in seeds])
        print(f"| {name} | {found.mean():.3f} ± {found.std(ddof=1) if len(found) > 1 else 0.0:.3f} | "
              f"{found.mean() - HARTMANN_MIN:.3f} | " + " | ".join(f"{v:.3f}" for v in found) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
