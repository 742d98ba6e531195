"""`python -m sweep.launch SPEC`: run, resume or report a sweep.

Running the same command again resumes an unfinished sweep (Optuna state included; running trials
continue from their last checkpoints). Exit status: 0 finished, 1 trials failed or Ray could not be
reached, 2 bad spec or flags, 3 stopped at the time budget (state saved, run again to continue),
130 interrupted by Ctrl+C (state saved).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from trainable import layout as sweep_state
from sweep.spec import SpecError, SweepSpec, incompatibility, load_spec, resolved

EXIT_FAILED, EXIT_USAGE, EXIT_BUDGET, EXIT_INTERRUPTED = 1, 2, 3, 130
PROGRESS_EVERY_S = 20.0


class LaunchError(RuntimeError):
    """A problem outside the spec (Ray unreachable, token missing); one line for the user."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweep.launch", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a search space, e.g. search_spaces/saturation.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key (num_samples=4) or a config key (model.width=0.25)")
    parser.add_argument("--storage", default="sweeps", help="folder that holds <name>/ (default ./sweeps)")
    parser.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: MLflow's own)")
    parser.add_argument("--address", default=None, help="join a running Ray cluster (ray start --head ...)")
    parser.add_argument("--fresh", action="store_true", help="start over; old results are moved aside")
    return parser


def _prepare_folder(spec: SweepSpec, sweep_dir: Path, fresh: bool, tracking_uri: str | None):
    """--fresh moves old results aside; a resume must match the saved spec → the saved state."""
    from analysis.tracking import move_experiment_aside, resolve_tracking_uri
    old = sweep_state.read_state(sweep_dir)
    if fresh and sweep_dir.exists():
        new_name = sweep_state.aside_name(sweep_dir)
        print(f"--fresh: moved the old sweep to {sweep_state.move_aside(sweep_dir, new_name)}")
        if old and move_experiment_aside(old.tracking_uri, old.experiment_name, new_name):
            print(f"--fresh: renamed the old MLflow experiment to '{new_name}'")
        return None
    saved = sweep_state.read_spec(sweep_dir)
    if saved is not None:
        changed = incompatibility(saved, resolved(spec))
        if changed:
            raise SpecError(f"{changed} since this sweep started in {sweep_dir}; "
                            f"use the old spec to resume it, or --fresh to start over")
    if old and tracking_uri and resolve_tracking_uri(tracking_uri) != old.tracking_uri:
        raise SpecError(f"--mlflow-uri: this sweep logs to {old.tracking_uri}; resume it there or use --fresh")
    return old


def _auth_env_for_cluster() -> None:
    """Ray 2.60 clusters started with `ray start --head` require their token from every driver."""
    if os.environ.get("RAY_AUTH_MODE") == "disabled":
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not os.environ.get("RAY_AUTH_TOKEN") and not token_file.exists():
        raise LaunchError("--address: the cluster's token is missing: set RAY_AUTH_TOKEN to the contents of "
                          "the head node's ~/.ray/auth_token (or copy that file here); see README 'Scaling out'")
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def _quiet_environment(local: bool) -> None:
    """Set before Ray is imported: its constants are read at import time."""
    if local:  # Ray binds to the host's routable address unless told it is not a cluster node
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # Snapshot the experiment state every second (Tune's default: every 10 s or more), so that after
    # a SIGKILL it points at a trial checkpoint that still exists (two are kept) and little is lost.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _start_ray(address: str | None) -> dict[str, float]:
    """Join `address`, or start a local Ray on loopback only; → the cluster's resources."""
    if address is not None:
        _auth_env_for_cluster()
    import ray
    try:
        # "local": never join a cluster an earlier `ray start` left in /tmp/ray/ray_current_cluster
        ray.init(address=address or "local", include_dashboard=False if address is None else None,
                 log_to_driver=True, configure_logging=True, logging_level="warning")
    except Exception as err:  # auth errors and unreachable clusters arrive as assorted types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LaunchError(f"--address {address}: cannot join the Ray cluster: {first}") from None
    return {k: float(v) for k, v in ray.cluster_resources().items()}


class BudgetTimer:
    """SIGINT to ourselves at the budget: Tune then stops the trials, saves state and returns."""

    def __init__(self, seconds: float):
        self.fired = threading.Event()
        self._timer = threading.Timer(max(1.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        os.kill(os.getpid(), signal.SIGINT)

    def cancel(self) -> None:
        self._timer.cancel()


def _tuner(spec: SweepSpec, sweep_dir: Path, cluster: dict, callbacks: list):
    from ray import tune

    from sweep.ray_adapter import build_scheduler, build_searcher, trainable_for
    trainable = trainable_for(spec, cluster)
    if tune.Tuner.can_restore(str(sweep_dir)):
        print(f"resuming {spec.name} from {sweep_dir}")
        return tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True, resume_errored=True)
    tune_config = tune.TuneConfig(search_alg=build_searcher(spec), scheduler=build_scheduler(spec),
                                  num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent)
    run_config = tune.RunConfig(name=spec.name, storage_path=str(sweep_dir.parent), callbacks=callbacks,
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                failure_config=tune.FailureConfig(max_failures=1), verbose=0)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def _start_pack_server(spec: SweepSpec, cluster: dict):
    """With `pack` > 1 one actor owns the GPU and trains the trials' models together."""
    if spec.pack == 1:
        return None
    from sweep.pack_server import start_pack_server
    print(f"packing: up to {spec.pack} trials step together in one process")
    return start_pack_server(spec.name, spec.pack, spec.max_concurrent, cluster)


def _show_packing(server) -> None:
    if server is None:
        return
    import ray
    packed_steps, trial_epochs = ray.get(server.stats.remote())
    if packed_steps:
        print(f"packing: {trial_epochs} trial epochs in {packed_steps} packed epochs "
              f"(mean pack {trial_epochs / packed_steps:.1f})")


def _open_tracking(spec: SweepSpec, old, mlflow_uri: str | None):
    from analysis.tracking import SweepTracker, resolve_tracking_uri, start_sweep_run
    uri = old.tracking_uri if old else resolve_tracking_uri(mlflow_uri)
    experiment_id, parent = start_sweep_run(uri, spec.name, old.parent_run_id if old else None)
    return SweepTracker(uri, experiment_id, parent), sweep_state.SweepState(False, uri, spec.name, parent)


def _run(spec: SweepSpec, sweep_dir: Path, args, started: float) -> int:
    old = _prepare_folder(spec, sweep_dir, args.fresh, args.mlflow_uri)
    if old and old.finished:
        print(f"sweep {spec.name} is finished: results in {sweep_dir}, "
              f"MLflow: mlflow ui --backend-store-uri {old.tracking_uri}")
        return 0
    _quiet_environment(local=args.address is None)
    from sweep.ray_adapter import ProgressCallback, TrackingCallback, build_searcher
    build_searcher(spec)  # sampler problems (cmaes without its package) before Ray starts
    cluster = _start_ray(args.address)
    print(f"Ray: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
          f"{spec.num_samples} trials, {spec.max_concurrent} at a time")
    tracker, record = _open_tracking(spec, old, args.mlflow_uri)
    sweep_state.write_spec(sweep_dir, resolved(spec))
    sweep_state.write_state(sweep_dir, record)
    callbacks = [TrackingCallback(tracker, spec), ProgressCallback(spec, PROGRESS_EVERY_S)]
    tuner = _tuner(spec, sweep_dir, cluster, callbacks)
    pack_server = _start_pack_server(spec, cluster)   # held until the sweep ends: it lives while we do
    remaining = None if spec.time_budget_s is None else spec.time_budget_s - (time.monotonic() - started)
    timer = None if remaining is None else BudgetTimer(remaining)
    grid = tuner.fit()
    if timer:
        timer.cancel()
    _show_packing(pack_server)
    return _finish(spec, sweep_dir, grid, record, tracker, budget_hit=bool(timer and timer.fired.is_set()))


def _finish(spec, sweep_dir: Path, grid, record, tracker, budget_hit: bool) -> int:
    from sweep.progress import show_summary
    from sweep.ray_adapter import result_rows
    rows = result_rows(grid)
    done = [r for r in rows if r["status"] == "TERMINATED"]
    failed = [r for r in rows if r["status"] == "ERROR"]
    finished = len(done) == spec.num_samples
    if finished:
        outcome, code = f"sweep finished: {len(done)} trials", 0
    elif budget_hit:
        outcome, code = (f"time budget reached: {len(done)}/{spec.num_samples} trials done, state saved; "
                         f"run the same command to continue"), EXIT_BUDGET
    elif failed:
        outcome, code = f"{len(failed)} trial(s) failed; run the same command to retry them", EXIT_FAILED
    else:
        outcome, code = "interrupted, state saved; run the same command to continue", EXIT_INTERRUPTED
    tracker.end_sweep(finished, spec.objectives)
    sweep_state.write_state(sweep_dir, sweep_state.SweepState(finished, record.tracking_uri,
                                                              record.experiment_name, record.parent_run_id))
    show_summary(rows, spec, str(sweep_dir), record.tracking_uri, outcome, tracker.experiment_id)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.spec, args.set)
        return _run(spec, Path(args.storage).resolve() / spec.name, args, started)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
