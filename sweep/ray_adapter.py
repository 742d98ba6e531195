"""Everything that touches Ray Tune: the trial function, the searcher, the scheduler, resources and
the driver-side callbacks. When Ray's API moves again, this file is the one that changes.

A trial builds its full config from the spec plus its searched values, restores from
`tune.get_checkpoint()` when Tune hands it one, and reports metrics with a checkpoint every
`report_every` epochs, or every `report_every: N steps` inside epochs (a `Midway`; the trainer state
then holds the position in the epoch, so a restored trial goes on at the next step). Between epoch
reports, `train.checkpoint_every` saves the trial to `interrupted/<trial_id>/`, as Ctrl+C does. ASHA counts
reports (`training_iteration`), and so does MLflow's step. The checkpoint folder holds `latest.pt`
(the trainer state; state["config"] is the trial's full config), `samples.png` (the sample grid),
`generator.pt` (the exported generator) and `report.json` ({"epoch": N, "epoch_step": K}). Both trial functions run `trainable.loop.run_epochs`
with `report_to_tune` as the sink: a plain trial on a `LocalRun`; with `pack` > 1 on a `PackedRun`, whose models
live in the pack server (sweep/pack_server.py), which it asks for epochs and reports.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
import ray
from PIL import Image
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.utils.util import unflatten_dict

from sweep.pack_server import server_name
from sweep.spec import SpecError, SweepSpec
from sweep.leases import Lease, Leases
from sweep.study import open_study, shown
from sweep.trial_progress import TrialProgress, read_progress
from trainable.checkpoint import load_checkpoint, save_checkpoint
from trainable.config import apply_overrides, flatten, from_dict, to_dict
from trainable.engine import Trainer, setup_process
from trainable.export import export_generator
from trainable.layout import GENERATOR, INTERRUPTED_DIR, LATEST, PREVIOUS, REPORT, SAMPLES
from trainable.interval import Clock, Interval
from trainable.loop import Interrupted, LocalRun, Midway, Report, checkpoints, report_midway, run_epochs

PACKED_TRIAL_CPU = 0.05


def _optuna_distribution(dist):
    if dist.kind in ("choice", "grid"):
        return optuna.distributions.CategoricalDistribution(list(dist.values))
    if dist.kind == "int":
        return optuna.distributions.IntDistribution(int(dist.low), int(dist.high), log=dist.log)
    return optuna.distributions.FloatDistribution(dist.low, dist.high, log=dist.log)


def build_sampler(spec: SweepSpec, salt: str = "") -> optuna.samplers.BaseSampler:
    """The spec's sampler. Launchers joining one study each give a `salt` (their name): with the
    same seed they would draw the same random startup trials, one after the other."""
    samplers = optuna.samplers
    if salt and spec.seed is not None:
        spec = dataclasses.replace(spec, seed=(spec.seed + zlib.crc32(salt.encode())) % 2**32)
    if spec.sampler == "grid":
        grid = {key: list(d.values) for key, d in spec.space.items()}
        return samplers.GridSampler(grid, seed=spec.seed)
    if spec.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401  Optuna's CMA-ES sampler needs it
        except ImportError:
            raise SpecError("sampler.type: cmaes needs the 'cmaes' package (pip install cmaes)") from None
        return samplers.CmaEsSampler(seed=spec.seed)
    if spec.sampler == "tpe":
        # Up to max_concurrent trials are asked before any is told: the constant liar counts the
        # running ones as bad so that parallel asks spread out (one or several objectives alike).
        return samplers.TPESampler(seed=spec.seed, constant_liar=True, multivariate=True)
    kinds = {"nsga2": samplers.NSGAIISampler, "random": samplers.RandomSampler}
    return kinds[spec.sampler](seed=spec.seed)


class EarlyStopRecorder(ASHAScheduler):
    """ASHA that remembers which trials it stopped, so the study is told PRUNED for those only (a
    trial Tune stops at Ctrl+C or the budget is resumed later, not ended)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stopped: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP:
            self.stopped.add(trial.trial_id)
        return decision


def build_scheduler(spec: SweepSpec, train_images: int | None = None) -> EarlyStopRecorder | None:
    """ASHA on the first objective, counted in reports (training_iteration), also when reports come
    every so many steps; `train_images` sizes a trial's reports then (SweepSpec.num_reports)."""
    if spec.scheduler == "none":
        return None
    first, reports = spec.objectives[0], spec.num_reports(train_images)
    return EarlyStopRecorder(metric=first.metric, mode=first.mode, time_attr="training_iteration",
                             max_t=reports, grace_period=min(spec.grace_period, reports))


def finished_all_epochs(result: dict, config: dict, spec: SweepSpec) -> bool:
    """Whether a trial's last result is its last epoch (else something stopped it early)."""
    return int(result.get("epoch", 0)) >= int(config.get("train.epochs", spec.config.train.epochs))


class StudySearcher(Searcher):
    """Optuna's ask and tell, driven from Tune, on the study in colorsweep's storage (sweep/study.py),
    which several launchers may share. Ray's OptunaSearch is not used: it tells a trial ASHA stopped
    COMPLETE with its truncated value, reports no intermediate value of a multi-objective study,
    and pickles its study's trials with Tune's state, so after a SIGKILL the trials asked since the
    last save stay RUNNING in the database (docs/study.md).

    Here the database is the record: a Tune trial id maps to an Optuna trial (also written as the
    trial's `tune_trial_id` attribute); a trial ends COMPLETE when it ran every epoch, PRUNED when
    ASHA stopped it, FAIL when it failed; one Tune stopped at Ctrl+C or the budget stays RUNNING and
    is resumed. Every running trial holds a lease (sweep/leases.py) renewed at each report and by
    the launcher's heartbeat thread. Before a new ask, a RUNNING trial Tune's restored state does
    not know is taken if its lease lapsed or is this launcher's own (asked before a kill): it is
    handed to the next Tune trial with the same params and, when the checkpoint its holder saved
    can be read here (a shared --storage), resumed from that. The study has enough trials when
    `num_samples` have finished (COMPLETE, PRUNED or FAIL, whichever launcher ran them): then
    `suggest` answers FINISHED; while the rest still run elsewhere it answers None (ask later)."""
    WAIT_S = 1.0     # while waiting on other launchers, how often Tune's asks look at the database

    def __init__(self, spec: SweepSpec, url: str, scheduler: EarlyStopRecorder | None,
                 launcher: str, sweep_dir: Path, salt: str = ""):
        first = spec.objectives[0]
        super().__init__(metric=first.metric, mode=first.mode)
        self.spec, self.url, self.scheduler = spec, url, scheduler
        self.launcher, self.sweep_dir, self.salt = launcher, str(sweep_dir), salt
        self.space = {key: _optuna_distribution(d) for key, d in spec.space.items()}
        self.trials: dict[str, int] = {}       # Tune trial id -> Optuna's storage trial id
        self.offsets: dict[str, int] = {}      # Tune trial id -> reports its holder made before a takeover
        self._study: optuna.Study | None = None
        self._leases: Leases | None = None
        self._waited = 0.0

    def __getstate__(self) -> dict:
        """Tune pickles the searcher into the sweep folder (tuner.pkl): without the study (it holds a
        database engine) and without the URL's password; `build_tuner` gives a restored one its URL."""
        return {**self.__dict__, "url": shown(self.url), "_study": None, "_leases": None, "_waited": 0.0}

    def __setstate__(self, state: dict) -> None:
        """Searchers pickled before leases existed lack their fields (`build_tuner` sets the rest)."""
        self.__dict__.update({"offsets": {}, "salt": "", "_study": None, "_leases": None, "_waited": 0.0, **state})

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = open_study(self.url, self.spec, build_sampler(self.spec, self.salt))
            asked = len(self._study.get_trials(deepcopy=False))
            if asked:     # a relaunch: a sampler seeded as at the start would draw the first params again
                self._study.sampler = build_sampler(self.spec, f"{self.salt}#{asked}")
            self._leases = Leases(self.url, self.launcher, self.sweep_dir, self.spec.lease_s, shared=bool(self.salt))
            self._leases.keep_alive()
        return self._study

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if trial_id not in self.trials:
            if time.monotonic() - self._waited < self.WAIT_S:
                return None
            trials = self.study.get_trials(deepcopy=False)
            if sum(t.state.is_finished() for t in trials) >= self.spec.num_samples:
                return Searcher.FINISHED
            number = self._take_over(trial_id, [t for t in trials if t.state == TrialState.RUNNING])
            if number is None and len(trials) >= self.spec.num_samples:
                self._waited = time.monotonic()      # the rest run elsewhere: finish, or lapse
                return None
            if number is None:
                trial = self.study.ask(fixed_distributions=self.space)
                self._leases.take(trial._trial_id, trial_id)
                self.trials[trial_id] = trial._trial_id
            self.study._storage.set_trial_user_attr(self.trials[trial_id], "tune_trial_id", trial_id)
        return unflatten_dict(self.study._storage.get_trial(self.trials[trial_id]).params)

    def _take_over(self, trial_id: str, running: list) -> int | None:
        """A RUNNING trial Tune does not know whose lease lapsed (or is ours), now this Tune
        trial's, its checkpoint copied where `train_trial` resumes from → its number, else None."""
        known = set(self.trials.values())
        candidates = [t for t in running if t._trial_id not in known]
        leases = self._leases.held([t._trial_id for t in candidates])
        for trial in candidates:
            lease = leases.get(trial._trial_id)
            started = trial.datetime_start.timestamp() if trial.datetime_start else None
            if self._leases.lapsed(lease, started) and self._leases.claim(trial._trial_id, lease, trial_id):
                self.trials[trial_id] = trial._trial_id
                self._fill_params(trial)
                resumed = None if lease is None else self._copy_checkpoint(lease, trial_id)
                if lease is not None and lease.launcher != self.launcher:
                    where = f"resumed at epoch {resumed}" if resumed else "started again (no checkpoint here)"
                    print(f"study: took over trial {trial.number} from launcher {lease.launcher} "
                          f"(lease lapsed): {where}", flush=True)
                return trial.number
        return None

    def _fill_params(self, frozen: optuna.trial.FrozenTrial) -> None:
        """A launcher killed inside `ask` leaves a RUNNING trial without (all) its params: the
        sampler draws the missing ones now, as that ask would have."""
        missing = {name: dist for name, dist in self.space.items() if name not in frozen.params}
        trial = optuna.trial.Trial(self.study, frozen._trial_id)
        for name, distribution in missing.items():
            trial._suggest(name, distribution)

    def _copy_checkpoint(self, lease: Lease, trial_id: str) -> int | None:
        """The two newest checkpoints the lapsed holder saved (in its sweep folder, when this machine
        can read it) copied to `interrupted/<trial_id>` of this sweep as latest.pt and previous.pt
        (a kill during Tune's copy can leave the newest torn: `load_checkpoint` then takes the
        other); the reports made by the newest become this trial's offset → its epoch, or None."""
        found = lapsed_checkpoints(Path(lease.folder), lease.tune_trial_id, self.spec.report_every)
        if not found:
            return None
        target = Path(self.sweep_dir) / INTERRUPTED_DIR / trial_id
        temp = target.with_name(f".{trial_id}.tmp")
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
        for (folder, _epoch, _reports), name in zip(found, (LATEST, PREVIOUS)):
            shutil.copyfile(folder / LATEST, temp / name)
        temp.rename(target)
        _folder, epoch, self.offsets[trial_id] = found[0]
        return epoch

    def study_trial(self, trial_id: str) -> int | None:
        """The Optuna trial number of a Tune trial (the key of its MLflow run), None if not asked here."""
        if trial_id not in self.trials:
            return None
        return self.study._storage.get_trial(self.trials[trial_id]).number

    def done(self) -> bool:
        """Whether the study holds `num_samples` finished trials."""
        return sum(t.state.is_finished() for t in self.study.get_trials(deepcopy=False)) >= self.spec.num_samples

    def _open(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        """The Optuna trial while it is still RUNNING (a rerun after a kill may end one twice)."""
        if trial_id not in self.trials:
            return None
        frozen = self.study._storage.get_trial(self.trials[trial_id])
        return None if frozen.state.is_finished() else frozen

    def report_index(self, trial_id: str, result: dict) -> int:
        """Which report of the trial this is, counting those of a launcher it was taken over from
        (Tune's training_iteration starts again at 1 after a takeover)."""
        return int(result["training_iteration"]) + self.offsets.get(trial_id, 0)

    def _report(self, trial_id: str, frozen: optuna.trial.FrozenTrial, result: dict | None) -> None:
        """The first objective's value per report (what ASHA compares), also in a multi-objective
        study, where Trial.report refuses: the dashboard draws it as the learning curve. The step
        counts the trial's reports, those of a launcher it was taken over from included."""
        if result and self.metric in result:
            step = self.report_index(trial_id, result)
            self.study._storage.set_trial_intermediate_value(frozen._trial_id, step, float(result[self.metric]))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        frozen = self._open(trial_id)
        if frozen is not None:
            self._leases.beat(frozen._trial_id)
            self._report(trial_id, frozen, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        frozen = self._open(trial_id)
        if frozen is None:
            return
        self._report(trial_id, frozen, result)   # Tune passes a trial's last report here, not to on_trial_result
        if error:
            self._tell(frozen, state=TrialState.FAIL)
            return
        values = [result.get(o.metric) for o in self.spec.objectives] if result else [None]
        if None in values:
            return                      # stopped before its first report: resumed later
        if finished_all_epochs(result, frozen.params, self.spec):
            self._tell(frozen, values=values)
        elif self.scheduler is not None and trial_id in self.scheduler.stopped:
            self._tell(frozen, state=TrialState.PRUNED)

    def _tell(self, frozen: optuna.trial.FrozenTrial, **verdict) -> None:
        self.study.tell(frozen.number, **verdict)
        self._leases.release(frozen._trial_id)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"trials": self.trials, "offsets": self.offsets}))

    def restore(self, checkpoint_path: str) -> None:
        saved = json.loads(Path(checkpoint_path).read_text())
        # a sweep saved before takeovers existed holds the map alone
        self.trials, self.offsets = (saved["trials"], saved["offsets"]) if "trials" in saved else (saved, {})
        self._study = None


def lapsed_checkpoints(folder: Path, tune_trial_id: str, report_every: Interval) -> list[tuple[Path, int, int]]:
    """The checkpoints of Tune trial `tune_trial_id` in another launcher's sweep folder, newest first
    → (its folder, its epoch, the reports the trial had made by then); none when that folder is not
    on this machine or the trial never saved one. The reports come from Tune's result.json, or, when
    the holder died before its driver wrote that report there, from the epoch (one report every
    `report_every` epochs, each with its checkpoint; with reports counted in steps such a checkpoint
    is passed over, as its report count is not known)."""
    found = []
    for trial_dir in folder.glob(f"*_{tune_trial_id}_*"):
        reports = _reports(trial_dir)
        for checkpoint in trial_dir.glob("checkpoint_*"):
            try:
                epoch = int(json.loads((checkpoint / REPORT).read_text())["epoch"])
            except (OSError, ValueError, KeyError):
                continue
            counted = reports.get(checkpoint.name)
            if counted is None and report_every.epochs:
                counted = math.ceil(epoch / report_every.epochs)
            if counted is not None and (checkpoint / LATEST).exists():
                found.append((checkpoint, epoch, counted))
    return sorted(found, key=lambda f: (f[1], f[2]), reverse=True)


def _reports(trial_dir: Path) -> dict[str, int]:
    """Checkpoint folder name → the training_iteration of the report that saved it (result.json)."""
    counted = {}
    try:
        lines = (trial_dir / "result.json").read_text().splitlines()
    except OSError:
        return counted
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:          # the last line, cut by a kill
            continue
        if row.get("checkpoint_dir_name"):
            counted[row["checkpoint_dir_name"]] = int(row["training_iteration"])
    return counted


def trial_resources(spec: SweepSpec, cluster: dict[str, float]) -> dict[str, float]:
    """Split the cluster so `max_concurrent` trials fit at once: fractional CPUs (ten trials on a
    2-vCPU Colab) and, with GPUs, 1/max_concurrent of one each (at most a whole card)."""
    def share(total: float) -> float:
        return math.floor(total / spec.max_concurrent * 1000) / 1000
    resources = {"cpu": max(0.001, share(cluster.get("CPU", 1.0)))}
    if cluster.get("GPU", 0) > 0:
        resources["gpu"] = min(1.0, max(0.001, share(cluster["GPU"])))
    return resources


def report_to_tune(row: dict, state: dict, grid: np.ndarray) -> None:
    """The trials' sink: the metrics plus a checkpoint folder (latest.pt, samples.png, generator.pt,
    report.json), written to a temp folder that Tune copies into the trial's folder."""
    folder = Path(tempfile.mkdtemp(prefix="colorsweep-ckpt-"))
    try:
        save_checkpoint(folder, state)
        Image.fromarray(grid).save(folder / SAMPLES)
        export_generator(state["generator"], from_dict(state["config"]), state["epoch"], folder / GENERATOR)
        (folder / REPORT).write_text(json.dumps({"epoch": state["epoch"], "epoch_step": state["epoch_step"]}))
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _restored_state() -> dict | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_checkpoint(folder)


def _position(state: dict | None) -> tuple[int, int]:
    return (-1, -1) if state is None else (state["epoch"], state.get("epoch_step", 0))


def train_trial(config: dict, spec: SweepSpec, threads: int, sweep_dir: str) -> None:
    """Tune's function trainable: one trial from its searched values to its last epoch; its
    in-epoch progress goes to a small file the driver's display reads (sweep/trial_progress.py).
    When the launcher stops (Ctrl+C, the time budget) it asks through STOP_FILE: the trial saves
    where it is in its epoch and waits for Tune to end it; a rerun starts at the next step."""
    cfg = spec.trial_config(config)
    if cfg.train.threads == 0:
        cfg = apply_overrides(cfg, {"train.threads": threads})
    setup_process(cfg)
    trainer = Trainer(cfg)
    trial_id = tune.get_context().get_trial_id()
    saved_here = Path(sweep_dir) / INTERRUPTED_DIR / trial_id
    state = max(_restored_state(), load_checkpoint(saved_here), key=_position)
    if state is not None:
        trainer.load_state_dict(state)
    run = LocalRun(trainer)
    progress = TrialProgress(sweep_dir, trial_id, run, cfg.train.epochs)
    every = spec.report_every           # epochs, or steps: then only the last epoch's end reports as an epoch
    # reports inside epochs, else train.checkpoint_every's saves beside the ones Ctrl+C makes
    midway = Midway(Clock(every, lambda: run.steps), report_midway(run, report_to_tune)) if every.steps \
        else checkpoints(run, saved_here)
    try:
        run_epochs(run, report_to_tune, cfg.train.epochs, every.epochs or cfg.train.epochs, progress,
                   stop=progress.stop_asked, midway=midway)
    except Interrupted:
        save_checkpoint(saved_here, trainer.state_dict())
        progress.saved()
        threading.Event().wait()     # Tune ends this trial now; returning would mark it finished


class PackedRun:
    """A packed trial's trainer, which lives in the pack server: epochs and reports are asked of it."""

    def __init__(self, server, trial_id: str, epoch: int):
        self.server, self.trial_id, self.epoch = server, trial_id, epoch

    def advance(self, progress=None, stop=None) -> dict[str, float]:
        """One epoch in the pack server; packed trials stop at epoch ends (they step together)."""
        losses = ray.get(self.server.advance.remote(self.trial_id))
        self.epoch += 1
        return losses

    def report(self) -> Report:
        return ray.get(self.server.report.remote(self.trial_id))


def train_packed_trial(config: dict, spec: SweepSpec, server: str) -> None:
    """`train_trial` for a packed sweep: the pack server trains this trial's models together with
    other trials'; this process reports, checkpoints and is stopped as usual."""
    cfg = spec.trial_config(config)
    pack, trial_id = ray.get_actor(server), tune.get_context().get_trial_id()
    alive_probe = ray.get_runtime_context().current_actor   # lets the server see that we died
    epoch = ray.get(pack.join.remote(trial_id, to_dict(cfg), _restored_state(), alive_probe))
    try:
        run_epochs(PackedRun(pack, trial_id, epoch), report_to_tune, cfg.train.epochs, spec.report_every.epochs)
    finally:
        pack.leave.remote(trial_id)


def trainable_for(spec: SweepSpec, cluster: dict[str, float], sweep_dir: Path):
    resources = trial_resources(spec, cluster)
    if spec.pack > 1:   # the pack server holds the GPU and does the work; a trial only reports
        trial = tune.with_parameters(train_packed_trial, spec=spec, server=server_name(spec.name))
        return tune.with_resources(trial, {"cpu": min(resources["cpu"], PACKED_TRIAL_CPU)})
    threads = max(1, math.floor(resources["cpu"]))
    trial = tune.with_parameters(train_trial, spec=spec, threads=threads, sweep_dir=str(sweep_dir))
    return tune.with_resources(trial, resources)


def build_tuner(spec: SweepSpec, sweep_dir: Path, cluster: dict, callbacks: list, study_url: str,
                launcher: str, salt: str,
                train_images: int | None = None) -> tuple[tune.Tuner, StudySearcher, bool]:
    """(the sweep's Tuner, its searcher, whether it was restored): restored from `sweep_dir` when
    Tune saved one there, else new. A restored Tuner gets this run's callbacks, not the ones pickled
    at the start; its searcher goes on with the study at `study_url` (the resume check made sure it
    is the same). Tune's own count of trials is unbounded: the searcher says when the study, which
    other launchers may share, has enough."""
    trainable = trainable_for(spec, cluster, sweep_dir)
    if tune.Tuner.can_restore(str(sweep_dir)):
        tuner = tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True, resume_errored=True)
        # Tune would use the callbacks pickled when the sweep began (no display, an old MLflow
        # client); this run's replace them. No public setter: ray-project/ray#41364.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        searcher = tuner._local_tuner._tune_config.search_alg
        searcher.url = study_url     # pickled without its password
        searcher.launcher, searcher.sweep_dir = launcher, str(sweep_dir)
        _bind(callbacks, searcher)
        return tuner, searcher, True
    scheduler = build_scheduler(spec, train_images)
    searcher = StudySearcher(spec, study_url, scheduler, launcher, sweep_dir, salt)
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                  num_samples=-1, max_concurrent_trials=spec.max_concurrent)
    run_config = tune.RunConfig(name=sweep_dir.name, storage_path=str(sweep_dir.parent), callbacks=callbacks,
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                failure_config=tune.FailureConfig(max_failures=1), verbose=0)
    _bind(callbacks, searcher)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), searcher, False


def _bind(callbacks: list, searcher: StudySearcher) -> None:
    """MLflow runs are per study trial: the tracking callback asks the searcher which one."""
    for callback in callbacks:
        if isinstance(callback, TrackingCallback):
            callback.searcher = searcher


class TrackingCallback(tune.Callback):
    """Forwards Tune's driver-side events to the MLflow `SweepTracker` (the only MLflow writer). A
    trial's run is found by its study trial (`build_tuner` binds the searcher), so a trial another
    launcher took over, or one Tune asked again after a kill, logs to the run it already has."""

    def __init__(self, tracker, spec: SweepSpec):
        self.tracker = tracker
        self.spec = spec
        self.searcher: StudySearcher | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "searcher": None}

    def _run(self, trial) -> None:
        from analysis.mlflow_view import trial_run_name   # driver only: trial workers never import MLflow
        params = flatten(to_dict(self.spec.trial_config(trial.config)))
        self.tracker.trial_run(trial.trial_id, trial_run_name(trial.trial_id, trial.config), params,
                               self.searcher.study_trial(trial.trial_id))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._run(trial)
        tags = {"node_ip": str(result.get("node_ip", ""))}
        # the report's index is MLflow's step: unique and rising, also for reports inside an epoch
        self.tracker.log_result(trial.trial_id, result, self.searcher.report_index(trial.trial_id, result), tags)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._run(trial)
        with checkpoint.as_directory() as folder:
            report = json.loads(Path(folder, REPORT).read_text())
            inside = f"_step_{report['epoch_step']:06d}" if report.get("epoch_step") else ""
            self.tracker.log_file(trial.trial_id, Path(folder, SAMPLES), "samples",
                                  f"epoch_{report['epoch']:04d}{inside}.png")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._run(trial)
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                self.tracker.log_file(trial.trial_id, Path(folder, GENERATOR), "generator", GENERATOR)
        self.tracker.end_trial(trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.end_trial(trial.trial_id, "FAILED")


def _error_line(trial) -> str:
    """The last line of a failed trial's error and where its whole traceback is (the driver's copy
    is written first; the one in the sweep folder follows with the next sync)."""
    stored = Path(trial.path, trial.run_metadata.error_filename or "error.txt")
    lines = []
    for path in (trial.error_file, stored):
        try:
            lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
            break
        except (OSError, TypeError):
            continue
    return f"{lines[-1] if lines else 'no error text'} (traceback: {stored})"


def trial_row(trial_id: str, status: str, result: dict, config: dict, spec: SweepSpec,
              live: dict | None = None) -> dict:
    """One trial as the plain row sweep/progress.py draws."""
    return {"trial": trial_id, "status": status, "epoch": int(result.get("epoch", 0)),
            "epochs": int(config.get("train.epochs", spec.config.train.epochs)), "config": config,
            "metrics": {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "live": live}


class OutcomeCallback(tune.Callback):
    """Each trial's row with Tune's own status as the last step of the run left it. Not from a
    trial's last result: one restored TERMINATED after a kill comes back with the `done` flag of its
    last report, False (Tune sets it after saving the trial). Not at experiment end either: Tune's
    cleanup after Ctrl+C marks the trials it stops TERMINATED."""

    def __init__(self, spec: SweepSpec):
        self.spec, self.rows, self._stepped = spec, [], False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "rows": [], "_stepped": False}

    def _record(self, trials) -> None:
        self.rows = [trial_row(t.trial_id, t.status, t.last_result, t.config, self.spec) for t in trials]

    def on_step_end(self, iteration, trials, **info):
        self._stepped = True
        self._record(trials)

    def running(self) -> set[str]:
        return {row["trial"] for row in self.rows if row["status"] == "RUNNING"}

    def on_experiment_end(self, trials, **info):
        if not self._stepped:      # a restored sweep with nothing left to run: cleanup stopped nothing
            self._record(trials)


class ProgressCallback(tune.Callback):
    """Feeds the sweep display (sweep/progress.py) Tune's trials plus each trial's in-epoch progress
    file, at most every REFRESH_S; one line when a trial ends, is stopped or fails."""
    REFRESH_S = 0.5

    def __init__(self, spec: SweepSpec, sweep_dir: Path, display):
        self.spec, self.sweep_dir, self.display = spec, Path(sweep_dir), display
        self._shown = 0.0

    def __getstate__(self) -> dict:   # Tune pickles its callbacks; a live display does not pickle
        return {**self.__dict__, "display": None}

    def _update(self, trials, ended: tuple[str, str] | None = None) -> None:
        """Redraw; `ended` = (trial id, status) of a trial Tune marks ended only after the callback."""
        self._shown = time.monotonic()
        live, ended = read_progress(self.sweep_dir), dict([ended] if ended else [])
        self.display.update([trial_row(t.trial_id, ended.get(t.trial_id, t.status), t.last_result, t.config,
                                       self.spec, live.get(t.trial_id)) for t in trials])

    def on_step_end(self, iteration, trials, **info):
        if self.display is not None and time.monotonic() - self._shown >= self.REFRESH_S:
            self._update(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.display is None:
            return
        row = trial_row(trial.trial_id, "TERMINATED", trial.last_result, trial.config, self.spec)
        values = ", ".join(f"{o.metric} {row['metrics'][o.metric]:.4g}" for o in self.spec.objectives
                           if o.metric in row["metrics"])
        inside = trial.last_result.get("epoch_step")       # a report inside an epoch (report_every: N steps)
        where = f"at step {inside} of epoch {row['epoch'] + 1}" if inside else f"after epoch {row['epoch']}"
        how = "finished" if finished_all_epochs(trial.last_result, trial.config, self.spec) \
            else f"stopped early (ASHA) {where}"
        self.display.event(f"trial {trial.trial_id} {how}: {values}")
        self._update(trials, (trial.trial_id, "TERMINATED"))     # the table agrees with the line at once

    def on_trial_recover(self, iteration, trials, trial, **info):
        if self.display is not None:
            self.display.event(f"trial {trial.trial_id} failed, retrying once: {_error_line(trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.display is not None:
            self.display.event(f"trial {trial.trial_id} failed: {_error_line(trial)}")
            self._update(trials, (trial.trial_id, "ERROR"))
