"""Everything that touches Ray Tune: the trial function, the searcher, the scheduler, resources and
the driver-side callbacks. When Ray's API moves again, this file is the one that changes.

A trial builds its full config from the spec plus its searched values, restores from
`tune.get_checkpoint()` when Tune hands it one, and reports metrics with a checkpoint every
`report_every` epochs. The checkpoint folder holds `latest.pt` (the trainer state; state["config"]
is the trial's full config), `samples.png` (the sample grid), `generator.pt` (the exported
generator) and `report.json` ({"epoch": N}). With `pack` > 1 the trial's models live in the pack
server (sweep/pack_server.py) and `train_packed_trial` asks it for epochs and reports instead.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sweep.space import SpecError
from sweep.spec import SweepSpec
from trainable.config import flatten, to_dict
from trainable.layout import GENERATOR, REPORT, SAMPLES

PACKED_TRIAL_CPU = 0.05


def _optuna_distribution(dist):
    if dist.kind in ("choice", "grid"):
        return optuna.distributions.CategoricalDistribution(list(dist.values))
    if dist.kind == "int":
        return optuna.distributions.IntDistribution(int(dist.low), int(dist.high), log=dist.log)
    return optuna.distributions.FloatDistribution(dist.low, dist.high, log=dist.log)


def _sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    samplers = optuna.samplers
    if spec.sampler == "grid":
        grid = {key: list(d.values) for key, d in spec.space.items()}
        return samplers.GridSampler(grid, seed=spec.seed)
    if spec.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401  Optuna's CMA-ES sampler needs it
        except ImportError:
            raise SpecError("sampler.type: cmaes needs the 'cmaes' package (pip install cmaes)") from None
        return samplers.CmaEsSampler(seed=spec.seed)
    kinds = {"tpe": samplers.TPESampler, "nsga2": samplers.NSGAIISampler, "random": samplers.RandomSampler}
    return kinds[spec.sampler](seed=spec.seed)


def build_searcher(spec: SweepSpec) -> OptunaSearch:
    """Optuna through Tune; several objectives make a multi-objective study."""
    space = {key: _optuna_distribution(d) for key, d in spec.space.items()}
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    single = len(metrics) == 1
    return OptunaSearch(space=space, metric=metrics[0] if single else metrics,
                        mode=modes[0] if single else modes, sampler=_sampler(spec))


def build_scheduler(spec: SweepSpec) -> ASHAScheduler | None:
    """ASHA on the first objective, counted in reports (training_iteration)."""
    if spec.scheduler == "none":
        return None
    first = spec.objectives[0]
    return ASHAScheduler(metric=first.metric, mode=first.mode, time_attr="training_iteration",
                         max_t=spec.num_reports(), grace_period=min(spec.grace_period, spec.num_reports()))


def trial_resources(spec: SweepSpec, cluster: dict[str, float]) -> dict[str, float]:
    """Split the cluster so `max_concurrent` trials fit at once: fractional CPUs (ten trials on a
    2-vCPU Colab) and, with GPUs, 1/max_concurrent of one each (at most a whole card)."""
    def share(total: float) -> float:
        return math.floor(total / spec.max_concurrent * 1000) / 1000
    resources = {"cpu": max(0.001, share(cluster.get("CPU", 1.0)))}
    if cluster.get("GPU", 0) > 0:
        resources["gpu"] = min(1.0, max(0.001, share(cluster["GPU"])))
    return resources


class _SavedTrainer:
    """What `export_generator` reads from a trainer, taken from a state dict (a packed trial's
    trainer lives in the pack server; its state comes here)."""

    def __init__(self, state: dict):
        from trainable.config import from_dict
        self.cfg, self.epoch, self._weights = from_dict(state["config"]), state["epoch"], state["generator"]
        self.generator = self

    def state_dict(self) -> dict:
        return self._weights


def _write_checkpoint(folder: Path, state: dict, grid, exported) -> None:
    from PIL import Image

    from trainable.checkpoint import save_checkpoint
    from trainable.export import export_generator
    save_checkpoint(folder, state)
    Image.fromarray(grid).save(folder / SAMPLES)
    export_generator(exported, folder / GENERATOR)
    (folder / REPORT).write_text(json.dumps({"epoch": state["epoch"]}))


def _report(metrics: dict, state: dict, grid, exported) -> None:
    """Metrics plus a checkpoint folder (latest.pt, samples.png, generator.pt, report.json) to Tune."""
    folder = Path(tempfile.mkdtemp(prefix="colorsweep-ckpt-"))
    try:
        _write_checkpoint(folder, state, grid, exported)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _restored_state() -> dict | None:
    from trainable.checkpoint import load_checkpoint
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_checkpoint(folder)


def _next_report(epoch: int, epochs: int, every: int) -> int:
    return min(epochs, (epoch // every + 1) * every)


def train_trial(config: dict, spec: SweepSpec, threads: int) -> None:
    """Tune's function trainable: one trial from its searched values to its last epoch."""
    import torch

    from trainable.config import apply_overrides
    from trainable.engine import Trainer
    torch.set_num_threads(threads)
    cfg = spec.trial_config(config)
    if cfg.train.threads == 0:
        cfg = apply_overrides(cfg, {"train.threads": threads})
    trainer = Trainer(cfg)
    state = _restored_state()
    if state is not None:
        trainer.load_state_dict(state)
    train_metrics, reported = {}, False
    # A trial restored at its last epoch still reports once: Tune marks a trial done only on a
    # report, and one that returns silently after a restore is left unfinished.
    while trainer.epoch < cfg.train.epochs or not reported:
        next_report = _next_report(trainer.epoch, cfg.train.epochs, spec.report_every)
        while trainer.epoch < next_report:
            train_metrics = trainer.train_epoch()
        reported = True
        metrics = {"epoch": trainer.epoch, **train_metrics, **trainer.evaluate()}
        _report(metrics, trainer.state_dict(), trainer.sample_grid(count=8), trainer)


def train_packed_trial(config: dict, spec: SweepSpec, server: str) -> None:
    """`train_trial` for a packed sweep: the pack server (sweep/pack_server.py) trains this trial's
    models together with other trials'; this process reports, checkpoints and is stopped as usual."""
    import ray

    cfg = spec.trial_config(config)
    pack, trial_id = ray.get_actor(server), tune.get_context().get_trial_id()
    alive_probe = ray.get_runtime_context().current_actor   # lets the server see that we died
    epoch = ray.get(pack.join.remote(trial_id, to_dict(cfg), _restored_state(), alive_probe))
    try:
        train_metrics, reported = {}, False
        while epoch < cfg.train.epochs or not reported:      # see train_trial
            next_report = _next_report(epoch, cfg.train.epochs, spec.report_every)
            while epoch < next_report:
                train_metrics = ray.get(pack.train_epoch.remote(trial_id))
                epoch += 1
            reported = True
            metrics, state, grid = ray.get(pack.report.remote(trial_id))
            _report({"epoch": epoch, **train_metrics, **metrics}, state, grid, _SavedTrainer(state))
    finally:
        pack.leave.remote(trial_id)


def trainable_for(spec: SweepSpec, cluster: dict[str, float]):
    resources = trial_resources(spec, cluster)
    if spec.pack > 1:   # the pack server holds the GPU and does the work; a trial only reports
        from sweep.pack_server import server_name
        trial = tune.with_parameters(train_packed_trial, spec=spec, server=server_name(spec.name))
        return tune.with_resources(trial, {"cpu": min(resources["cpu"], PACKED_TRIAL_CPU)})
    threads = max(1, math.floor(resources["cpu"]))
    return tune.with_resources(tune.with_parameters(train_trial, spec=spec, threads=threads), resources)


class TrackingCallback(tune.Callback):
    """Forwards Tune's driver-side events to the MLflow `SweepTracker` (the only MLflow writer)."""

    def __init__(self, tracker, spec: SweepSpec):
        self.tracker = tracker
        self.spec = spec
        self._reconciled = False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reconciled": False}

    def on_step_begin(self, iteration, trials, **info):
        if not self._reconciled:  # first step: the restored trials are all known now
            self._reconciled = True
            lost = self.tracker.archive_lost_trials({t.trial_id for t in trials})
            if lost:
                print(f"MLflow: archived {lost} run(s) of trials lost before the last state save")

    def _run(self, trial) -> None:
        params = flatten(to_dict(self.spec.trial_config(trial.config)))
        self.tracker.trial_run(trial.trial_id, str(trial), params)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._run(trial)
        tags = {"node_ip": str(result.get("node_ip", ""))}
        self.tracker.log_result(trial.trial_id, result, int(result["epoch"]), tags)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._run(trial)
        with checkpoint.as_directory() as folder:
            epoch = json.loads(Path(folder, REPORT).read_text())["epoch"]
            self.tracker.log_file(trial.trial_id, Path(folder, SAMPLES), "samples", f"epoch_{epoch:04d}.png")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._run(trial)
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                self.tracker.log_file(trial.trial_id, Path(folder, GENERATOR), "generator", GENERATOR)
        self.tracker.end_trial(trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.end_trial(trial.trial_id, "FAILED")


def trial_row(trial_id: str, status: str, iteration: int, result: dict, config: dict) -> dict:
    return {"trial": trial_id, "status": status, "iteration": iteration, "node": str(result.get("node_ip", "-")),
            "metrics": {k: v for k, v in result.items() if isinstance(v, (int, float))}, "config": config}


def result_rows(grid) -> list[dict]:
    """Rows for the summary from a ResultGrid (finished, errored or interrupted trials)."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        status = "ERROR" if result.error else ("TERMINATED" if metrics.get("done") else "PAUSED")
        rows.append(trial_row(str(metrics.get("trial_id", "-")), status,
                              int(metrics.get("training_iteration", 0)), metrics, result.config or {}))
    return rows


class ProgressCallback(tune.Callback):
    """A rich table of every trial, at most every `interval_s` seconds and at the end."""

    def __init__(self, spec: SweepSpec, interval_s: float):
        self.spec, self.interval_s = spec, interval_s
        self._started = self._shown = None

    def _show(self, trials) -> None:
        from sweep.progress import show_progress
        rows = [trial_row(t.trial_id, t.status, int(t.last_result.get("training_iteration", 0)),
                          t.last_result, t.config) for t in trials]
        show_progress(rows, self.spec, time.monotonic() - self._started)
        self._shown = time.monotonic()

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if self._started is None:
            self._started = self._shown = now
        if now - self._shown >= self.interval_s:
            self._show(trials)
