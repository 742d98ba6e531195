"""A training run on several workers: Ray Train's `TorchTrainer` runs the one loop on each, data
parallel (`trainable.parallel`: DDP, each rank its slice of every global batch), NCCL on GPUs and
gloo on CPUs. `sweep.final --workers N` and `trainable.train --workers N` (through `main` here) use it.

- Rank 0 alone evaluates, draws nothing else and reports the checkpoint (the one-process format,
  `latest.pt`, marked with its world size) and the metrics row; the other ranks report neither.
  `train.checkpoint_every` reports mid-epoch checkpoints the same way (no metrics row): every rank
  pauses at the same step (`RankClock`), and the checkpoint carries the data position.
- Ray Train's controller, which runs on the driver's node, is the one writer outside the workers:
  `FolderCallback` copies each reported checkpoint and metrics.jsonl into the run folder and hands
  each new row to `on_report` (sweep.final logs it to MLflow, by epoch, so none is logged twice).
- The run's storage is `<folder>/ray_train/<name>` (`--storage` on a multi-node cluster: a path
  every node reaches). Running the same command again resumes there: Ray Train V2 restores the
  checkpoint list of the same storage_path and name, and each worker loads the latest: weights,
  optimizers, schedule, data position and generators. A worker group lost mid-run is restarted from
  that checkpoint up to `--max-failures` times (`FailureConfig`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from sweep.ray_worker import RUNTIME_ENV
from trainable.checkpoint import load_checkpoint, safe_load, save_checkpoint
from trainable.config import Config, ConfigError, apply_overrides, from_dict, to_dict
from trainable.engine import Trainer, check_resumable, resolve_device, setup_process
from trainable.files import folder_problem, write_text_atomic
from trainable.layout import CHECKPOINT_DIR, CONFIG_FILE, LATEST, METRICS_FILE
from trainable.interval import Clock, parse_interval
from trainable.loop import LocalRun, Midway, read_metrics, report_of, run_epochs
from trainable.parallel import (PositionError, RankClock, check_position, global_batch, rank_config,
                                share_partial_sums, with_world)

RUN_STORAGE = "ray_train"       # under the run folder, unless --storage
HISTORY = "metrics.jsonl"       # beside latest.pt in each reported checkpoint: every row so far
BACKENDS = ("auto", "nccl", "gloo")


class DistributedError(ValueError):
    """Bad input to a data-parallel run, found before it starts: one line."""


def plan_workers(requested: int | None, backend: str, resources: dict[str, float]) -> tuple[int, bool, str]:
    """(workers, one GPU each?, backend) for the cluster's `resources`. Without --workers: one per
    GPU where there are several, else one."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if backend == "nccl" and not gpus:
        raise DistributedError(f"--backend nccl needs GPUs; the cluster has none ({cpus} CPUs): use gloo")
    use_gpu = bool(gpus) and backend != "gloo"
    workers = requested if requested is not None else (gpus if gpus > 1 else 1)
    if requested is None and gpus > 1:
        print(f"{gpus} GPUs: {gpus} workers, one per GPU (--workers N to change)")
    unit, have = ("GPU", gpus) if use_gpu else ("CPU", cpus)
    if workers > have:
        raise DistributedError(f"--workers {workers}: the cluster can place {have} (it has {cpus} CPUs and "
                               f"{gpus} GPUs; each worker takes one {unit})")
    return workers, use_gpu, "nccl" if use_gpu else "gloo"


class RankRun(LocalRun):
    """`run_epochs`' run on one rank: its RankStep's epochs; only rank 0 evaluates and reports."""

    def __init__(self, trainer: Trainer, group, rank: int):
        super().__init__(trainer)
        self.group, self.rank = group, rank

    def report(self):
        if self.rank:
            return {}, None, None
        return report_of(self.trainer)


def _position(state: dict) -> tuple[int, int, int]:
    return state["epoch"], state["step"], state["epoch_step"]


def latest_state(initial: dict | None, initial_history: list[dict]) -> tuple[dict | None, list[dict], str]:
    """(state, metrics rows so far, where from): the newer of Ray Train's latest checkpoint of this
    run and the run folder's state the driver passed."""
    import ray.train
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restored, rows = load_checkpoint(folder), read_metrics(Path(folder) / HISTORY)
        if initial is None or _position(restored) >= _position(initial):
            return restored, rows, f"Ray Train's checkpoint {checkpoint.path}"
    return initial, initial_history, "the run folder's checkpoint"


def train_worker(config: dict) -> None:
    """One rank of the run (Ray Train calls it on each worker; the process group is set up)."""
    import ray.train
    import ray.train.torch
    from trainable.parallel import RankStep
    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    cfg = apply_overrides(from_dict(config["config"]), {"train.device": str(ray.train.torch.get_device())})
    setup_process(cfg)
    trainer = Trainer(cfg)
    state, history, source = latest_state(config["initial_state"], config["initial_history"])
    if state is not None:
        trainer.load_state_dict(check_position(state, workers, config["global_batch"], config["restart_epoch"]))
        if rank == 0:
            inside = f", step {trainer.epoch_step} of epoch {trainer.epoch + 1}," if trainer.epoch_step else ""
            print(f"resumed at epoch {trainer.epoch}{inside} from {source}", flush=True)
    group = RankStep(trainer, config["global_batch"])
    run = RankRun(trainer, group, rank)

    def report(row: dict, state: dict | None) -> None:
        """Every rank reports (Ray Train waits for all); rank 0's carries the checkpoint."""
        if rank:
            ray.train.report({}, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(folder, with_world(state, workers, config["global_batch"]))
            write_text_atomic(Path(folder) / HISTORY, "".join(json.dumps(r) + "\n" for r in history))
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(folder))

    def sink(row: dict, state: dict | None, grid) -> None:
        if not rank:
            history[:] = [r for r in history if r["epoch"] < row["epoch"]] + [row]   # a finished run reports again
        report(row, state)

    def checkpoint(losses: dict[str, float]) -> None:
        share_partial_sums(trainer)
        report({"epoch": trainer.epoch, "epoch_step": trainer.epoch_step}, None if rank else trainer.state_dict())
    interval = parse_interval(cfg.train.checkpoint_every, ("steps",), durations=True)
    midway = Midway(RankClock(Clock(interval, lambda: run.steps), trainer.device), checkpoint) if interval else None
    run_epochs(run, sink, cfg.train.epochs, midway=midway)


def folder_callback(directory: Path, on_report: Callable[[dict], None] | None):
    """Ray Train's UserCallback, built here so that this module imports Ray only when it runs."""
    from ray.train import UserCallback

    class FolderCallback(UserCallback):
        """On the driver's node, after each report: the run folder gets the checkpoint and every
        row so far (atomically), then `on_report` each row (it skips what it already holds)."""

        def after_report(self, run_context, metrics, checkpoint) -> None:
            if checkpoint is None:
                return
            with checkpoint.as_directory() as folder:
                state = safe_load(Path(folder) / LATEST)
                rows = (Path(folder) / HISTORY).read_text()
            save_checkpoint(directory / CHECKPOINT_DIR, state)
            write_text_atomic(directory / METRICS_FILE, rows)
            where = f"step {state['epoch_step']} of epoch {state['epoch'] + 1}" if state["epoch_step"] else f"epoch {state['epoch']}"
            print(f"{where} reported; checkpoint in {directory / CHECKPOINT_DIR}", flush=True)
            if on_report is not None:
                for line in rows.splitlines():
                    on_report(json.loads(line))
    return FolderCallback()


def start_ray(address: str | None) -> dict[str, float]:
    """Join `address` (or RAY_ADDRESS), else start a local Ray on loopback; → the cluster's resources."""
    import ray
    if not ray.is_initialized():
        if address is None and "RAY_ADDRESS" not in os.environ:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"      # loopback only, as sweep.launch
        # a local cluster's token notice, which would be the line before an error's one line
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address=address, include_dashboard=False, logging_level="warning", log_to_driver=True,
                 runtime_env=RUNTIME_ENV)
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def local_state(directory: Path, cfg: Config, workers: int, batch: int,
                restart_epoch: bool) -> tuple[dict | None, list[dict]]:
    """The run folder's checkpoint (a one-process run's, or the copy of the last distributed one),
    checked against this world before anything starts, and its metrics rows."""
    state = load_checkpoint(directory / CHECKPOINT_DIR)
    if state is None:
        return None, []
    check_resumable(state, cfg)                    # another config's checkpoint: one line, here
    rows = [row for row in read_metrics(directory / METRICS_FILE) if row["epoch"] <= state["epoch"]]
    return check_position(state, workers, batch, restart_epoch), rows


def run_distributed(cfg: Config, directory: str | Path, workers: int | None = None, backend: str = "auto",
                    address: str | None = None, storage: str | None = None, max_failures: int = 3,
                    restart_epoch: bool = False, on_report: Callable[[dict], None] | None = None) -> Trainer:
    """Train `cfg` in `directory` on `workers` Ray Train workers, resuming what is there; → a trainer
    on the driver holding the last checkpoint (for the test metrics and the export)."""
    directory = Path(directory).resolve()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    resources = start_ray(address)
    workers, use_gpu, backend = plan_workers(workers, backend, resources)
    batch = global_batch(cfg, workers)
    train_cfg = rank_config(cfg, workers)
    directory.mkdir(parents=True, exist_ok=True)
    initial, rows = local_state(directory, train_cfg, workers, batch, restart_epoch)
    write_text_atomic(directory / CONFIG_FILE, yaml.safe_dump(to_dict(train_cfg), sort_keys=False))
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    print(f"{workers} workers ({backend}), global batch {batch} ({batch // workers} per worker); "
          f"storage {Path(storage or directory / RUN_STORAGE) / directory.name}", flush=True)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": to_dict(train_cfg), "global_batch": batch, "initial_state": initial,
                           "initial_history": rows, "restart_epoch": restart_epoch},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=str(storage or directory / RUN_STORAGE), name=directory.name,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=[folder_callback(directory, on_report)]))
    from ray.train import TrainingFailedError
    try:
        result = trainer.fit()
    except TrainingFailedError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RuntimeError(f"the workers failed ({first}); their logs are above, and the same command "
                           "resumes from the last checkpoint") from None
    with result.checkpoint.as_directory() as folder:
        state = safe_load(Path(folder) / LATEST)
    final = Trainer(apply_overrides(train_cfg, {"train.device": str(resolve_device("auto"))}))
    final.load_state_dict(state)
    print(f"done: {final.epoch} epochs on {workers} workers; checkpoint, config and metrics.jsonl in {directory}")
    return final


def distributed_options(args: argparse.Namespace) -> dict:
    """The data-parallel flags (trainable.train.add_parallel_arguments) as run_distributed's keywords."""
    return {"workers": args.workers, "backend": args.backend, "address": args.address, "storage": args.storage,
            "max_failures": args.max_failures, "restart_epoch": args.restart_epoch}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sweep.distributed`: `trainable.train`'s command, always on Ray Train workers."""
    from trainable.train import build_parser, check_parallel_arguments, config_from_args
    parser = build_parser()
    parser.prog = "python -m sweep.distributed"
    args = parser.parse_args(argv)
    check_parallel_arguments(parser, args)
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    problem = folder_problem(args.checkpoints_path)
    if problem:
        parser.exit(2, f"error: --checkpoints-path {args.checkpoints_path}: {problem}\n")
    try:
        run_distributed(cfg, args.checkpoints_path, **distributed_options(args))
    except (DistributedError, PositionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
