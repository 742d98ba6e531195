"""`python -m sweep.final SWEEP`: train the best (or --rank N) trial of a sweep as one long run
in SWEEP/final/, evaluate it on the test split and export it.

The trial's full config comes from its last checkpoint (the spec's base config plus its searched
values when it has none); the final run trains on all the data (`data.train_limit=0`) for more
epochs, then `--set` overrides apply. Data without a test split (npz, folder, synthetic) is
evaluated on its whole validation split instead, and says so. Running the same command again
resumes from `SWEEP/final/checkpoint`. The MLflow run (tags colorsweep.role=final, final=true) is a
child of the sweep's parent run and names the sweep and the trial; its id is kept in
`final/final.json` so a resumed run logs into the same run, each epoch and the test metrics once.
`--workers N` trains data-parallel on Ray Train workers (sweep/distributed.py, docs/scaling.md); by
default where this machine has several GPUs, one worker per GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from analysis import tracking
from analysis.load import load_sweep
from analysis.sweep_table import Sweep, SweepError
from analysis.store import StoreError
from analysis.rank import ranked
from trainable.files import write_png
from sweep.distributed import distributed_options
from sweep.register import register
from trainable.checkpoint import load_checkpoint
from trainable.config import Config, ConfigError, apply_overrides, flatten, from_dict, parse_assignment, to_dict
from trainable.datasets import has_test_split
from trainable.sources import held_out_images
from trainable.export import ModelError, export_generator
from trainable.fid import FidError
from trainable.files import write_text_atomic
from trainable.layout import (CONFIG_FILE, FINAL_DIR, FINAL_RECORD, GENERATOR, METRICS_FILE, SAMPLES,
                              TEST_METRICS)
from trainable.loop import read_metrics, run_training
from trainable.train import add_parallel_arguments, check_parallel_arguments

EPOCH_FACTOR = 4      # default final length: this many times the trial's epochs
SUMMARY = ("test_control_error", "test_realism_abhist", "test_pixel_acc_5", "test_psnr", "test_fid")


def pick_trial(sweep: Sweep, rank: int) -> pd.Series:
    table = ranked(sweep) if all(o.metric in sweep.table for o in sweep.objectives) else None
    if table is None or table["rank"].isna().all():
        counts = sweep.table["status"].value_counts() if len(sweep.table) else {}
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none started"
        raise SweepError(f"no finished trial to train: the sweep has {len(sweep.table)} trials ({states})")
    chosen = table[table["rank"] == rank]
    if chosen.empty:
        count = int(table["rank"].notna().sum())
        raise SweepError(f"--rank {rank}: the sweep has {count} ranked (finished) trials")
    return chosen.iloc[0]


def trial_config(sweep: Sweep, trial: pd.Series) -> Config:
    """The trial's full config: from its checkpoint, else the spec's base config + its params."""
    if trial["checkpoint"]:
        state = load_checkpoint(Path(trial["checkpoint"]))
        if state is not None:
            return from_dict(state["config"])
    if not sweep.spec:
        raise SweepError(f"trial {trial['trial_id']}: no checkpoint and no colorsweep_spec.yaml")
    return apply_overrides(from_dict(sweep.spec["config"]), {p: trial[p] for p in sweep.params})


def final_config(base: Config, epochs: int | None, sets: Sequence[str]) -> Config:
    # the whole device: all the data, and torch's own thread count rather than the trial's CPU share
    longer = {"data.train_limit": 0, "train.threads": 0,
              "train.epochs": epochs or EPOCH_FACTOR * base.train.epochs}
    cfg = apply_overrides(base, longer)
    return apply_overrides(cfg, dict(parse_assignment(s) for s in sets))


def read_record(directory: Path, trial_id: str) -> dict:
    """final/final.json; refuses a folder that holds another trial's final run."""
    path = directory / FINAL_RECORD
    if not path.exists():
        return {}
    record = json.loads(path.read_text())
    if record["trial_id"] != trial_id:
        raise SweepError(f"{directory} holds the final run of trial {record['trial_id']}; "
                         f"move it aside to train trial {trial_id}")
    return record


def start_run(sweep: Sweep, trial: pd.Series, cfg: Config, record: dict, directory: Path) -> dict:
    run_id = tracking.start_final_run(sweep.state, sweep, str(trial["trial_id"]), int(trial["rank"]),
                                      record.get("mlflow_run_id"), flatten(to_dict(cfg)))
    record = {**record, "sweep": sweep.name, "trial_id": str(trial["trial_id"]), "rank": int(trial["rank"]),
              "mlflow_run_id": run_id}                      # a rerun keeps the epoch it was tested at
    write_record(directory, record)
    return record


def write_record(directory: Path, record: dict) -> None:
    write_text_atomic(directory / FINAL_RECORD, json.dumps(record, indent=2) + "\n")


def log_new_epochs(sweep: Sweep, run_id: str, rows: Sequence[dict]) -> None:
    """Log metrics.jsonl rows whose epoch the MLflow run does not hold yet."""
    log_new_rows(sweep.state, run_id, rows)


def log_new_rows(state, run_id: str, rows: Sequence[dict]) -> None:
    tracking.log_new_steps(state, run_id, {row["epoch"]: row for row in rows}, "epoch")


def log_reported_row(state, run_id: str, row: dict) -> None:
    """A data-parallel run's report, on the driver's node (sweep/distributed.py); picklable."""
    log_new_rows(state, run_id, [row])


def parallel(args: argparse.Namespace) -> bool:
    """Data parallel when --workers is given, or by default where the driver sees several GPUs."""
    import torch
    return args.workers is not None or torch.cuda.device_count() > 1


def finish(sweep: Sweep, trainer, directory: Path, record: dict) -> dict:
    """Test-split metrics (the validation split's when the data has no test split), a sample grid
    and the exported generator, all logged to the run once."""
    # the model first: a failure while measuring it must not cost the trained generator
    export_generator(trainer.generator.state_dict(), trainer.cfg, trainer.epoch, directory / GENERATOR)
    write_png(trainer.sample_grid(8), directory / SAMPLES)
    run_id = record["mlflow_run_id"]
    if record.get("tested_epoch") == trainer.epoch and (directory / TEST_METRICS).exists():
        test = json.loads((directory / TEST_METRICS).read_text())   # a rerun: FID costs minutes on a CPU
    else:
        images = held_out_images(trainer.cfg.data, trainer.device)
        test = trainer.evaluate(images, fid=True)
        test = {f"test_{k.removeprefix('val_')}": v for k, v in test.items()}
        write_text_atomic(directory / TEST_METRICS, json.dumps(test, indent=2) + "\n")
        write_record(directory, {**record, "tested_epoch": trainer.epoch})
    tracking.log_new_steps(sweep.state, run_id, {trainer.epoch: test}, next(iter(test)))
    files = [directory / n for n in (GENERATOR, SAMPLES, TEST_METRICS, CONFIG_FILE)]
    tags = {"colorsweep.epochs": str(trainer.epoch), "colorsweep.evaluated_on": split_name(trainer.cfg)}
    _, model_uri = register(directory / GENERATOR, sweep.name, tracking.client_for(sweep.state).tracking_uri, run_id)
    print(f"registered {model_uri}; serve it: mlflow models serve -m {model_uri} --env-manager local")
    tracking.finish_final_run(sweep.state, run_id, files, tags)
    return test


def split_name(cfg: Config) -> str:
    return "test split" if has_test_split(cfg.data) else f"validation split ({cfg.data.dataset} has no test split)"


def run_final(sweep_dir: Path, rank: int = 1, epochs: int | None = None,
              sets: Sequence[str] = (), distributed: dict | None = None) -> tuple[dict, str]:
    """→ (the test metrics, the split they were measured on). `distributed`: run_distributed's
    keywords, for a data-parallel run on Ray Train workers."""
    sweep = load_sweep(sweep_dir)
    trial = pick_trial(sweep, rank)
    cfg = final_config(trial_config(sweep, trial), epochs, sets)
    directory = sweep_dir / FINAL_DIR
    directory.mkdir(exist_ok=True)
    record = start_run(sweep, trial, cfg, read_record(directory, str(trial["trial_id"])), directory)
    print(f"final run of trial {trial['trial_id']} (rank {rank}) for {cfg.train.epochs} epochs in {directory}")
    log_new_epochs(sweep, record["mlflow_run_id"], read_metrics(directory / METRICS_FILE))
    if distributed is not None:
        from sweep.distributed import run_distributed
        trainer = run_distributed(cfg, directory, **distributed,
                                  on_report=partial(log_reported_row, sweep.state, record["mlflow_run_id"]))
    else:
        trainer = run_training(cfg, directory,
                               on_report=lambda _, row: log_new_epochs(sweep, record["mlflow_run_id"], [row]))
    return finish(sweep, trainer, directory, record), split_name(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweep.final", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep folder (sweeps/<name>)")
    parser.add_argument("--rank", type=int, default=1, help="which ranked trial (analysis.rank) to train")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs of the final run (default {EPOCH_FACTOR}× the trial's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied last (repeatable)")
    add_parallel_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rank < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error("--rank and --epochs must be >= 1")
    check_parallel_arguments(parser, args)
    try:
        distributed = distributed_options(args) if parallel(args) else None
        test, split = run_final(Path(args.sweep), args.rank, args.epochs, args.sets, distributed)
    except (SweepError, ConfigError, ModelError, ValueError, StoreError, FidError, MlflowException) as err:
        print(f"sweep.final: {str(err).strip(chr(34) + chr(39))}", file=sys.stderr)
        return 2
    exported = Path(args.sweep) / FINAL_DIR / GENERATOR
    print(f"{split}: " + "  ".join(f"{k}={v:.4g}" for k, v in test.items() if k in SUMMARY))
    print(f"exported {exported}; try: python -m sweep.colorize {exported} IMAGE -o OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
