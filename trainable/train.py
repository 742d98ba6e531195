"""`python -m trainable.train`: train one colorization GAN, resumably.

    python -m trainable.train [CONFIG.yaml] [--set model.width=0.25 ...] [seed-project flags]

The seed project's own flags are accepted verbatim (`--seed 100 --dataset cifar10 --dataset-path
./dataset/cifar10 --checkpoints-path ./checkpoints --batch-size 128 --epochs 200 --lr 3e-4
--lr-decay-steps 1e4 --augment True --desired-saturation 1 --saturation-weight 20 …`). Precedence:
defaults < CONFIG < seed flags < --set. The checkpoint folder holds `checkpoint/latest.pt` (plus
`previous.pt`), `config.yaml` and `metrics.jsonl`; running the same command again resumes, and a
larger `--epochs` continues from the last finished epoch. `--set train.checkpoint_every=500` (steps)
or `=10m` also checkpoints inside epochs, so a kill loses at most that much: the same command goes on
at the next batch. `--workers N` trains data-parallel on Ray Train workers: `python -m
sweep.distributed` with the same flags, in its own process.
Exit status: 0 trained (or trained already), 2 bad config, flags, data or checkpoint folder (one
line, before anything is written), 130 interrupted by Ctrl+C (the same command resumes).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from trainable.checkpoint import CheckpointError
from trainable.config import CONTROL_NAMES, ConfigError, apply_overrides, load_config, parse_assignment
from trainable.download import DataError
from trainable.files import folder_problem
from trainable.loop import run_training

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_bool(text: str) -> bool:
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainable.train", description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", help="YAML config (any key of the config tree)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set model.width=0.25 (repeatable)")
    parser.add_argument("--checkpoints-path", default="./checkpoints", help="checkpoint folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_parallel_arguments(parser)
    seed = parser.add_argument_group("seed-project flags")
    seed.add_argument("--seed", type=int)
    seed.add_argument("--dataset")
    seed.add_argument("--dataset-path")
    seed.add_argument("--batch-size", type=int)
    seed.add_argument("--epochs", type=int)
    seed.add_argument("--lr", type=float, help="learning rate of both nets")
    seed.add_argument("--lr-decay-steps", type=float, help="exponential decay ×0.1 per this many steps")
    seed.add_argument("--augment", type=parse_bool, help="random horizontal flips")
    seed.add_argument("--label-smoothing", type=parse_bool, help="one-sided: real label 0.9")
    seed.add_argument("--l1-weight", type=float)
    for name in CONTROL_NAMES:
        seed.add_argument(f"--desired-{name}", type=float, help=f"target {name}")
        seed.add_argument(f"--{name}-weight", type=float, help=f"λ of the {name} term")
    return parser


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """The data-parallel flags; the run itself is sweep/distributed.py's (Ray Train)."""
    group = parser.add_argument_group("data-parallel training on Ray Train workers (docs/scaling.md)")
    group.add_argument("--workers", type=int, default=None,
                       help="workers, one process each (GPU or CPU), DDP; default here: one process, no Ray")
    group.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto",
                       help="collectives: auto = NCCL on GPUs, gloo on CPUs")
    group.add_argument("--address", default=None, help="a running Ray cluster (default: a local one)")
    group.add_argument("--storage", default=None,
                       help="Ray Train's storage (default: ray_train/ in the run folder; a shared path on a cluster)")
    group.add_argument("--max-failures", type=int, default=3, help="restarts of a lost worker group")
    group.add_argument("--restart-epoch", action="store_true",
                       help="resume a mid-epoch checkpoint of another global batch at its epoch's start")


def check_parallel_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.max_failures < -1:
        parser.error(f"--max-failures must be >= -1 (-1: no limit), got {args.max_failures}")


def seed_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The seed-project flags as dotted config overrides."""
    simple = {"seed": "train.seed", "dataset": "data.dataset", "dataset_path": "data.path",
              "batch_size": "train.batch_size", "epochs": "train.epochs", "augment": "data.flip",
              "l1_weight": "loss.l1_weight"}
    out: dict[str, object] = {key: getattr(args, flag) for flag, key in simple.items()
                              if getattr(args, flag) is not None}
    if args.dataset == "cifar10":
        out["data.download"] = True          # the seed project fetched CIFAR-10 when it was absent
    if args.lr is not None:
        out["optim.lr_generator"] = out["optim.lr_discriminator"] = args.lr
    if args.lr_decay_steps is not None:
        out["optim.schedule"] = "exponential"
        out["optim.lr_decay_steps"] = int(args.lr_decay_steps)
    if args.label_smoothing is not None:
        out["loss.real_label"] = 0.9 if args.label_smoothing else 1.0
    for name in CONTROL_NAMES:
        if getattr(args, f"desired_{name}") is not None:
            out[f"loss.{name}.target"] = getattr(args, f"desired_{name}")
        if getattr(args, f"{name}_weight") is not None:
            out[f"loss.{name}.weight"] = getattr(args, f"{name}_weight")
    return out


def config_from_args(args: argparse.Namespace):
    cfg = load_config(args.config)
    cfg = apply_overrides(cfg, seed_overrides(args))
    return apply_overrides(cfg, dict(parse_assignment(o) for o in args.overrides))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_parallel_arguments(parser, args)
    if args.workers is not None:      # Ray Train's run; trainable imports no Ray, so in its own process
        given = sys.argv[1:] if argv is None else list(argv)
        return subprocess.run([sys.executable, "-m", "sweep.distributed", *given]).returncode
    try:
        cfg = config_from_args(args)
    except ConfigError as err:        # one line; the usage would bury it
        parser.exit(2, f"error: {err}\n")
    problem = folder_problem(args.checkpoints_path)
    if problem:
        parser.exit(2, f"error: --checkpoints-path {args.checkpoints_path}: {problem}\n")
    try:
        run_training(cfg, args.checkpoints_path, progress=not args.no_progress)
    except (DataError, CheckpointError, ValueError) as err:   # missing data, another config's checkpoint
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
