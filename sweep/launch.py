"""`python -m sweep.launch SPEC`: run, resume or report a sweep.

Before anything is made (sweep folder, MLflow store, Ray) the spec is checked, its paths are made
absolute and the data is found or downloaded once. Running the same command again resumes an
unfinished sweep (Optuna state included; running trials continue from their last checkpoints).
Exit status: 0 finished, 1 trials failed or Ray could not be reached, 2 bad spec, flags or data,
3 stopped at the time budget (state saved, run again to continue), 4 Tune ended with trials it
could not run (nothing a rerun would change; the line says which), 130 interrupted by Ctrl+C.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shlex
import socket
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from trainable import layout as sweep_state
from analysis.store import StoreError, resolve_tracking_uri, without_password
from sweep.ray_worker import RUNTIME_ENV
from sweep.spec import SpecError, SweepSpec, comparable, incompatibility, load_spec, resolved
from sweep.study import check_scheme, check_study, is_remote, move_study_aside, shown, study_url as study_url_for
from sweep.trial_progress import clear_progress, saved_trials
from trainable.config import ConfigError
from trainable.download import DataError
from trainable.files import folder_problem, write_text_atomic

EXIT_FINISHED, EXIT_FAILED, EXIT_USAGE, EXIT_BUDGET, EXIT_STUCK, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
# Ray's own lines that tell a user of this launcher nothing (our summary says it, or names this
# command instead of `Tuner.restore`); every other warning and error still shows.
RAY_CHATTER = ("Token authentication is enabled", "Resume experiment with", "Stop signal received",
               "Trials did not complete", "Failed to fetch metrics")   # the last: trials not yet started


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
    parser.add_argument("--study-storage", default=None, metavar="URL",
                        help="the Optuna study's database, e.g. postgresql://user:pass@host:5432/db "
                             "(default: study.db in the sweep folder)")
    parser.add_argument("--launcher", default=None, metavar="NAME",
                        help="with a shared --study-storage: this launcher's folder in the sweep "
                             "(default: the host name); the same name takes its own trials back at once")
    parser.add_argument("--lease", default=None, metavar="DURATION",
                        help="a running trial without a heartbeat this long (10m, 45s) is taken over "
                             "by another launcher (the spec's `lease`, default 10m)")
    parser.add_argument("--fresh", action="store_true", help="start over; old results are moved aside")
    return parser


def rerun_command(argv: Sequence[str]) -> str:
    """The command that continues this sweep: the one given, less --fresh (which would start over)
    and less --set time_budget=... (a budget for that one run; the next run gets the spec's)."""
    kept: list[str] = []
    for arg in argv:
        if arg == "--fresh" or arg.startswith("--set=time_budget="):
            continue
        if arg.startswith("time_budget=") and kept[-1:] == ["--set"]:
            kept.pop()
            continue
        kept.append(arg)
    return shlex.join(["python", "-m", "sweep.launch", *kept])


def sweep_folder(args, spec: SweepSpec) -> Path:
    """The folder this launcher's Tune trials and files go to: `<storage>/<name>` with the sweep's
    own study.db; with a shared study (a database server) `<storage>/<name>/<launcher>`, one per
    launcher, so launchers sharing a --storage never write each other's files. A relative --storage
    with a shared study is refused: another machine could not find its checkpoints."""
    sweep_dir = Path(args.storage).resolve() / spec.name
    if args.study_storage is None:
        if args.launcher is not None:
            raise SpecError("--launcher: only with a shared --study-storage (several launchers on one study)")
        return sweep_dir
    check_scheme(args.study_storage)
    if not is_remote(args.study_storage):
        return sweep_dir
    if not Path(args.storage).is_absolute():
        raise SpecError(f"--storage {args.storage}: a relative path; with a shared --study-storage the "
                        f"launchers take over each other's trials from their checkpoints, so give the "
                        f"folder every machine sees at the same absolute path (e.g. /content/drive/MyDrive/sweeps)")
    name = args.launcher or launcher_name()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SpecError(f"--launcher {name!r}: expected a folder-safe name (letters, digits, _ . -)")
    return sweep_dir / name


def launcher_name() -> str:
    """The default launcher name: this machine's host name, folder-safe."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "launcher"


def _move_aside(sweep_dir: Path, study_url: str, name: str) -> None:
    """--fresh: the old sweep folder, MLflow experiment and study are renamed, never deleted."""
    from analysis.tracking import move_experiment_aside
    try:
        old = sweep_state.read_state(sweep_dir)
    except ConfigError:    # a damaged state file must not stop a fresh start: the folder moves aside
        old = None
    if sweep_dir.exists():
        new_name = sweep_state.aside_name(sweep_dir)
        print(f"--fresh: moved the old sweep to {sweep_state.move_aside(sweep_dir, new_name)}")
        if old and move_experiment_aside(old.tracking_uri, old.experiment_name, new_name):
            print(f"--fresh: renamed the old MLflow experiment to '{new_name}'")
    new_name = sweep_state.aside_name(Path(name))
    if move_study_aside(study_url, name, new_name):
        print(f"--fresh: renamed the old study in {shown(study_url)} to '{new_name}'")


def _check_resume(spec: SweepSpec, sweep_dir: Path, args, study_url: str):
    """A resume must match the saved spec (paths compared resolved), its MLflow store and study
    database, and the study's own spec; the database must answer → the saved state. Reads only."""
    if args.fresh:
        check_study(study_url, spec, compare=False)
        return None
    old = sweep_state.read_state(sweep_dir)
    saved = sweep_state.read_spec(sweep_dir)
    if saved is not None:
        changed = incompatibility(comparable(saved), resolved(spec))
        if changed:
            raise SpecError(f"{changed} since this sweep started in {sweep_dir}; "
                            f"use the old spec to resume it, or --fresh to start over")
    if old and args.mlflow_uri and without_password(resolve_tracking_uri(args.mlflow_uri)) != old.tracking_uri:
        raise SpecError(f"--mlflow-uri: this sweep logs to {old.tracking_uri}; resume it there or use --fresh")
    if old and _study_record(args) != old.study_storage:
        where = old.study_storage or f"{sweep_state.STUDY_DB} in the sweep folder (no --study-storage)"
        raise SpecError(f"--study-storage: this sweep's study is in {where}; resume it there or use --fresh")
    check_study(study_url, spec, compare=True)
    return old


def _study_record(args) -> str:
    """What the state file keeps of --study-storage: the URL without its password, "" by default
    (the sweep folder's own study.db, which moves with the folder)."""
    return shown(args.study_storage) if args.study_storage else ""


def _auth_env_for_cluster() -> None:
    """Ray 2.60 clusters started with `ray start --head` require their token from every driver."""
    if os.environ.get("RAY_AUTH_MODE") == "disabled":
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not os.environ.get("RAY_AUTH_TOKEN") and not token_file.exists():
        raise LaunchError("--address: the cluster's token is missing: set RAY_AUTH_TOKEN to the contents of "
                          "the head node's ~/.ray/auth_token (or copy that file here); see docs/scaling.md")
    os.environ.setdefault("RAY_AUTH_MODE", "token")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in RAY_CHATTER)


def _quiet_environment(local: bool) -> None:
    """Set before Ray is imported: its constants are read at import time."""
    if local:  # Ray binds to the host's routable address unless told it is not a cluster node
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # Snapshot the experiment state every second (Tune's default: every 10 s or more), so that after
    # a SIGKILL it points at a trial checkpoint that still exists (two are kept) and little is lost.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Stop's SIGINT handler asks Tune to stop (by SIGUSR1) and knows why Tune stopped.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Tune's legacy reporter prints nothing at verbose=0; the new one prints a header, a TensorBoard
    # hint and every trial error whatever the verbosity. Our display and summary replace both.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A failed trial is one line in our output; its traceback stays in the trial's error.txt.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # MLflow draws a download bar for every table it appends to the parent run at the end.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("ray._private.authentication.authentication_token_setup", "ray.tune.tune",
                 "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(name).addFilter(_DropChatter())
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _start_ray(address: str | None) -> dict[str, float]:
    """Join `address`, or start a local Ray on loopback only; → the cluster's resources."""
    if address is not None:
        _auth_env_for_cluster()
    import ray
    try:
        # "local": never join a cluster an earlier `ray start` left in /tmp/ray/ray_current_cluster
        # Workers log at WARNING: no per-report "Checkpoint successfully created" lines.
        ray.init(address=address or "local", include_dashboard=False if address is None else None,
                 log_to_driver=True, configure_logging=True, logging_level="warning",
                 logging_config=ray.LoggingConfig(log_level="WARNING"), runtime_env=RUNTIME_ENV)
    except Exception as err:  # auth errors and unreachable clusters arrive as assorted types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LaunchError(f"--address {address}: cannot join the Ray cluster: {first}") from None
    return {k: float(v) for k, v in ray.cluster_resources().items()}


class Stop:
    """Why Tune's run was stopped, if it was: Ctrl+C or the time budget. Either one first lets the
    running trials save where they are in their epoch (STOP_FILE; each answers through its progress
    folder, waited for at most `COLORSWEEP_STOP_GRACE_S`, 10 s), then asks Tune to stop through
    SIGUSR1, its documented stop signal (Tune's own SIGINT handler is off), so the launcher knows
    which happened. The wait runs beside Tune's loop, never in it: a trial in the middle of a report
    waits for the driver to take it before it reaches the step where it saves. A second Ctrl+C
    raises KeyboardInterrupt as usual."""

    def __init__(self, budget_s: float | None, sweep_dir: Path, running: Callable[[], set[str]]):
        self.reason: str | None = None
        self._sweep_dir, self._running = sweep_dir, running
        (sweep_dir / sweep_state.STOP_FILE).unlink(missing_ok=True)    # a stop file a kill left behind
        clear_progress(sweep_dir)
        self._presses = 0
        self._previous = signal.signal(signal.SIGINT, self._ctrl_c)
        self._timer = None if budget_s is None else threading.Timer(max(1.0, budget_s), self._ask, ("budget",))
        if self._timer:
            self._timer.daemon = True
            self._timer.start()

    def _ask(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._let_trials_save()
            os.kill(os.getpid(), signal.SIGUSR1)

    def _let_trials_save(self) -> None:
        """Until every trial still running has saved (one that finishes meanwhile need not)."""
        if not self._running():
            return
        write_text_atomic(self._sweep_dir / sweep_state.STOP_FILE, "")
        deadline = time.monotonic() + float(os.environ.get("COLORSWEEP_STOP_GRACE_S", "10"))
        while not self._running() <= saved_trials(self._sweep_dir) and time.monotonic() < deadline:
            time.sleep(0.1)

    def _ctrl_c(self, signum, frame) -> None:
        self._presses += 1
        if self._presses > 1:
            raise KeyboardInterrupt
        threading.Thread(target=self._ask, args=("ctrl_c",), daemon=True).start()

    def close(self) -> None:
        if self._timer:
            self._timer.cancel()
        signal.signal(signal.SIGINT, self._previous)
        (self._sweep_dir / sweep_state.STOP_FILE).unlink(missing_ok=True)


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


def _open_tracking(spec: SweepSpec, old, mlflow_uri: str | None, study_url: str):
    """The sweep's MLflow experiment and parent run: one parent per study and tracking store,
    recorded in the study's database, so every launcher of the sweep logs under the same one."""
    import optuna
    from mlflow.exceptions import MlflowException
    from analysis.tracking import SweepTracker, save_trials_view, start_sweep_run
    from sweep.leases import parent_run, recorded_parent
    from sweep.study import open_study
    # the state file keeps the URI without its password: a database store needs --mlflow-uri again
    uri = old.tracking_uri if old and not mlflow_uri else resolve_tracking_uri(mlflow_uri)
    study_id = open_study(study_url, spec, optuna.samplers.RandomSampler())._study_id
    known = recorded_parent(study_url, study_id, uri) or (old.parent_run_id if old else None)
    try:
        experiment_id, parent = start_sweep_run(uri, spec.name, known,
                                                lambda run_id: parent_run(study_url, study_id, uri, run_id))
        save_trials_view(uri, experiment_id, list(spec.space), spec.objectives)
    except MlflowException as err:
        raise LaunchError(f"MLflow store {uri}: {err.message}") from None
    return SweepTracker(uri, experiment_id, parent), sweep_state.SweepState(False, without_password(uri), spec.name, parent)


def _run(spec: SweepSpec, sweep_dir: Path, args, started: float, rerun: str) -> int:
    problem = folder_problem(sweep_dir)     # before Ray and MLflow: a bad --storage leaves nothing
    if problem:
        raise SpecError(f"--storage {args.storage}: {problem}")
    study_url = study_url_for(args.study_storage, sweep_dir)
    old = _check_resume(spec, sweep_dir, args, study_url)
    if old and old.finished:
        print(f"sweep {spec.name} is finished: results in {sweep_dir}, "
              f"MLflow: mlflow ui --backend-store-uri {old.tracking_uri}")
        return EXIT_FINISHED
    from sweep.prepare import check_realism_reference, cpu_estimate, prepare_data, train_split_size
    images = prepare_data(spec.config.data)   # before anything is made: a DataError leaves nothing
    check_realism_reference(spec, images)
    if args.fresh:
        _move_aside(sweep_dir, study_url, spec.name)
    _quiet_environment(local=args.address is None)
    from sweep.progress import SweepDisplay
    from sweep.ray_adapter import OutcomeCallback, ProgressCallback, TrackingCallback, build_sampler, build_tuner
    build_sampler(spec)  # sampler problems (cmaes without its package) before Ray starts
    cluster = _start_ray(args.address)
    print(f"Ray: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
          f"{spec.num_samples} trials, {min(spec.max_concurrent, spec.num_samples)} at a time", flush=True)
    pace = None                      # the display's first ETA, when the launcher measured one
    if not cluster.get("GPU") and old is None:
        print("no GPU: ", end="", flush=True)          # the rest of the line once a few steps are timed
        try:
            line, pace = cpu_estimate(spec, images, cluster.get("CPU", 1.0))
            print(line, flush=True)
        except Exception as err:  # an estimate is a courtesy: the trials report their own errors
            print(f"the trials train on the CPU (could not time a step here: {err})", flush=True)
    train_images = train_split_size(spec.config, images)     # sizes reports counted in steps
    del images
    sweep_dir.mkdir(parents=True, exist_ok=True)      # the default study.db is opened there next
    tracker, record = _open_tracking(spec, old, args.mlflow_uri, study_url)
    sweep_state.write_spec(sweep_dir, resolved(spec))
    record = dataclasses.replace(record, study_storage=_study_record(args))
    sweep_state.write_state(sweep_dir, record)
    display = SweepDisplay(spec, start=pace)
    ended = OutcomeCallback(spec)
    callbacks = [TrackingCallback(tracker, spec), ProgressCallback(spec, sweep_dir, display), ended]
    # joined launchers (one folder each under the sweep's) draw their own random startup trials
    salt = sweep_dir.name if is_remote(study_url) else ""
    tuner, searcher, restored = build_tuner(spec, sweep_dir, cluster, callbacks, study_url, str(sweep_dir), salt,
                                             train_images)
    if restored:
        print(f"resuming {spec.name} from {sweep_dir}")
    pack_server = _start_pack_server(spec, cluster)   # held until the sweep ends: it lives while we do
    remaining = None if spec.time_budget_s is None else spec.time_budget_s - (time.monotonic() - started)
    # packed trials step together in the pack server and stop at epoch ends: none is waited for
    running = (lambda: set()) if spec.pack > 1 else ended.running
    stop = Stop(remaining, sweep_dir, running)
    try:
        tuner.fit()
    finally:
        display.close()
        stop.close()
    _show_packing(pack_server)
    # a study other launchers share may have finished trials this one never ran
    expected = len(ended.rows) if searcher.done() else spec.num_samples
    return _finish(spec, sweep_dir, ended.rows, expected, record, tracker, stop.reason, rerun)


def outcome(statuses: Sequence[str], num_samples: int, stopped: str | None, rerun: str) -> tuple[str, int]:
    """(the closing line, the exit status) from the trials' Tune statuses and why Tune was stopped
    (`Stop.reason`): by the budget (3) or by Ctrl+C (130, failed trials or not). Open trials that
    nothing stopped are trials Tune could not run: 4, never a loop of reruns."""
    done, failed = statuses.count("TERMINATED"), statuses.count("ERROR")
    still_open = num_samples - done - failed
    if not still_open and not failed:
        return f"sweep finished: {done} trials", EXIT_FINISHED
    if stopped == "budget" and still_open:
        return (f"time budget reached: {done}/{num_samples} trials done, state saved; "
                f"to continue: {rerun}"), EXIT_BUDGET
    if stopped == "ctrl_c" and still_open:
        return f"interrupted, state saved; to continue: {rerun}", EXIT_INTERRUPTED
    if still_open:
        stuck = ", ".join(sorted({s for s in statuses if s not in ("TERMINATED", "ERROR")})) or "never created"
        return (f"Tune ended with {still_open} trial(s) it did not run ({stuck}) and nothing stopped it; "
                f"a rerun would do the same: report this with the sweep folder"), EXIT_STUCK
    return f"{failed} trial(s) failed (see above); to retry them: {rerun}", EXIT_FAILED


def _finish(spec, sweep_dir: Path, rows: list[dict], expected: int, record, tracker, stopped: str | None,
            rerun: str) -> int:
    from sweep.progress import show_summary
    line, code = outcome([r["status"] for r in rows], expected, stopped, rerun)
    finished = code == EXIT_FINISHED
    tracker.end_sweep(finished, spec.objectives)
    sweep_state.write_state(sweep_dir, dataclasses.replace(record, finished=finished))
    # A database URL is shown with its password hidden (***): the user has it, the logs need not.
    study = shlex.quote(record.study_storage) if record.study_storage else str(sweep_dir)
    show_summary(rows, spec, str(sweep_dir), record.tracking_uri, line, tracker.experiment_id,
                 tracker.parent_run_id, study)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.spec, args.set + ([f"lease={args.lease}"] if args.lease else []))
        return _run(spec, sweep_folder(args, spec), args, started, rerun_command(argv))
    except (SpecError, ConfigError, DataError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"interrupted; to continue: {rerun_command(argv)}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
