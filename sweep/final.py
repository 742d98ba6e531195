"""`python -m sweep.final SWEEP [--rank N] [--epochs E] [--set k=v ...]`: the chosen trial's config
trained as one long run in `SWEEP/final/`, then evaluated on the test split and exported.

The trial's full config comes from its last checkpoint (the spec's base config plus its searched
values when it has none); the final run trains on all the data (`data.train_limit=0`) for more
epochs, then `--set` overrides apply. Running the same command again resumes from
`SWEEP/final/checkpoint`. The MLflow run (tags colorsweep.role=final, final=true) is a child of
the sweep's parent run and names the sweep and the trial; its id is kept in `final/final.json` so
a resumed run logs into the same run, each epoch once.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image

from analysis import tracking
from analysis.load import Sweep, SweepError, load_sweep
from analysis.rank import ranked
from trainable.checkpoint import load_checkpoint
from trainable.config import Config, ConfigError, apply_overrides, flatten, from_dict, parse_assignment, to_dict
from trainable.data import load_test_split
from trainable.export import ModelError, export_generator
from trainable.loop import read_metrics, run_training, write_text_atomic

EPOCH_FACTOR = 4      # default final length: this many times the trial's epochs
RECORD = "final.json"
SUMMARY = ("test_control_error", "test_realism_abhist", "test_pixel_acc_5", "test_psnr")


def pick_trial(sweep: Sweep, rank: int) -> pd.Series:
    table = ranked(sweep)
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
    path = directory / RECORD
    if not path.exists():
        return {}
    record = json.loads(path.read_text())
    if record["trial_id"] != trial_id:
        raise SweepError(f"{directory} holds the final run of trial {record['trial_id']}; "
                         f"move it aside to train trial {trial_id}")
    return record


def start_run(sweep: Sweep, trial: pd.Series, cfg: Config, record: dict, directory: Path) -> dict:
    tags = {"colorsweep.role": "final", "final": "true", "colorsweep.sweep": sweep.name,
            "colorsweep.sweep_path": str(sweep.path.resolve()), "colorsweep.trial_id": str(trial["trial_id"]),
            "colorsweep.trial_rank": str(trial["rank"])}
    source_run = tracking.trial_run_id(sweep.state, sweep.name, str(trial["trial_id"]))
    if source_run:
        tags["colorsweep.trial_run_id"] = source_run
    if tracking.parent_run_id(sweep.state):
        tags["mlflow.parentRunId"] = tracking.parent_run_id(sweep.state)
    run_id = tracking.start_final_run(sweep.state, sweep.name, record.get("mlflow_run_id"), tags,
                                      flatten(to_dict(cfg)))
    record = {"sweep": sweep.name, "trial_id": str(trial["trial_id"]), "rank": int(trial["rank"]),
              "mlflow_run_id": run_id}
    write_text_atomic(directory / RECORD, json.dumps(record, indent=2) + "\n")
    return record


def log_new_epochs(sweep: Sweep, run_id: str, rows: Sequence[dict]) -> None:
    """Log metrics.jsonl rows whose epoch the MLflow run does not hold yet."""
    done = tracking.logged_steps(sweep.state, run_id, "epoch")
    for row in rows:
        if row["epoch"] not in done:
            tracking.log_metrics(sweep.state, run_id, row, step=row["epoch"])


def finish(sweep: Sweep, trainer, directory: Path, run_id: str) -> dict:
    """Test-split metrics, a sample grid and the exported generator, all logged to the run."""
    test = trainer.evaluate(load_test_split(trainer.cfg.data, trainer.device))
    test = {f"test_{k.removeprefix('val_')}": v for k, v in test.items()}
    write_text_atomic(directory / "test_metrics.json", json.dumps(test, indent=2) + "\n")
    Image.fromarray(trainer.sample_grid(8)).save(directory / "samples.png")
    export_generator(trainer, directory / "generator.pt")
    tracking.log_metrics(sweep.state, run_id, test, step=trainer.epoch)
    files = [directory / n for n in ("generator.pt", "samples.png", "test_metrics.json", "config.yaml")]
    tracking.finish_final_run(sweep.state, run_id, files, {"colorsweep.epochs": str(trainer.epoch)})
    return test


def run_final(sweep_dir: Path, rank: int = 1, epochs: int | None = None, sets: Sequence[str] = ()) -> dict:
    sweep = load_sweep(sweep_dir)
    trial = pick_trial(sweep, rank)
    cfg = final_config(trial_config(sweep, trial), epochs, sets)
    directory = sweep_dir / "final"
    directory.mkdir(exist_ok=True)
    record = start_run(sweep, trial, cfg, read_record(directory, str(trial["trial_id"])), directory)
    print(f"final run of trial {trial['trial_id']} (rank {rank}) for {cfg.train.epochs} epochs in {directory}")
    log_new_epochs(sweep, record["mlflow_run_id"], read_metrics(directory / "metrics.jsonl"))
    trainer = run_training(cfg, directory,
                           on_report=lambda _, row: log_new_epochs(sweep, record["mlflow_run_id"], [row]))
    return finish(sweep, trainer, directory, record["mlflow_run_id"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweep.final", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep folder (sweeps/<name>)")
    parser.add_argument("--rank", type=int, default=1, help="which ranked trial (analysis.rank) to train")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs of the final run (default {EPOCH_FACTOR}× the trial's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied last (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rank < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error("--rank and --epochs must be >= 1")
    try:
        test = run_final(Path(args.sweep), args.rank, args.epochs, args.sets)
    except (SweepError, ConfigError, ModelError, ValueError) as err:
        print(f"sweep.final: {str(err).strip(chr(34) + chr(39))}", file=sys.stderr)
        return 2
    folder = Path(args.sweep) / "final"
    print("test split: " + "  ".join(f"{k}={v:.4g}" for k, v in test.items() if k in SUMMARY))
    print(f"exported {folder / 'generator.pt'}; try: python -m sweep.colorize {folder / 'generator.pt'} IMAGE -o OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
