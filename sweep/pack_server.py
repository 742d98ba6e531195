"""The pack server: one Ray actor per packed sweep that owns the GPU and trains its trials' models
together (`trainable.packed.PackedTrainer`), while each trial stays its own Tune trial.

Processes on one GPU time-slice it (without MPS they do not overlap); one process that steps K
trials' stacked models under `vmap` does. A packed trial (`sweep.ray_adapter.train_packed_trial`)
joins with its config and checkpoint state, asks for one epoch at a time (`advance`), and asks for
a report (metrics, the full trainer state, the sample grid) whenever it reports to Tune; it writes
its own checkpoint folder and is stopped by ASHA like any other trial. The data source
(trainable.source) is opened once per distinct data config and shared. Which trials step together
and when is `sweep.pack_scheduler`; how a group steps is `trainable.loop`'s; this file is the
asynchronous shell around them: epochs run in a worker thread so the actor keeps answering.
"""
from __future__ import annotations

import asyncio
import threading
import time

import ray
import torch

from sweep.pack_scheduler import Group, PackScheduler
from trainable.config import from_dict, to_dict
from trainable.engine import Trainer, resolve_device, resolve_memory_format, setup_process
from trainable.loop import Report, report_of, train_epoch
from trainable.source import DataSource
from trainable.sources import open_source

GATHER_S = 1.0        # a round waits this long after the last ask before checking on late trials
MAX_WAIT_S = 10.0     # … and at most this long after the first ask before it starts without them
STALE_S = 300.0       # a trial not heard from for this long is dropped (its trainer freed)
TICK_S = 0.05


def server_name(sweep_name: str) -> str:
    return f"colorsweep-pack-{sweep_name}"


def _to_cpu(value):
    """A state dict with every tensor on the CPU, for transport to the trial's process."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def trainer_report(trainer: Trainer) -> Report:
    metrics, state, grid = report_of(trainer)
    return metrics, _to_cpu(state), grid


def train_group(group: Group) -> list[dict]:
    """One epoch of a group's trials, stepped as `trainable.loop.steps_for` chose, written back."""
    return train_epoch(group.pack)


async def _answers(ref) -> None:
    await ref


class PackServer:
    def __init__(self, pack: int):
        self.scheduler = PackScheduler(pack, MAX_WAIT_S, STALE_S)
        self.datasets: dict[str, DataSource] = {}
        self.data_lock = threading.Lock()        # trials joining at once load their data once
        self.set_up = False
        self.answers: dict[str, asyncio.Future] = {}
        self.rounds: asyncio.Task | None = None
        self.last_probe = 0.0
        self.probes: dict[str, asyncio.Future] = {}     # trial id → its pending liveness probe
        self.packed_steps = self.trial_epochs = 0

    async def ping(self) -> bool:
        return True

    async def stats(self) -> tuple[int, int]:
        """(packed epochs run, trial epochs they trained): their ratio is the mean pack size."""
        return self.packed_steps, self.trial_epochs

    def _build(self, cfg, state: dict | None) -> Trainer:
        device = resolve_device(cfg.train.device)
        memory_format = resolve_memory_format(cfg, device)
        key = repr((sorted(to_dict(cfg)["data"].items()), str(device), str(memory_format)))
        with self.data_lock:
            if key not in self.datasets:
                self.datasets[key] = open_source(cfg.data, device, memory_format)
        trainer = Trainer(cfg, self.datasets[key])
        if state is not None:
            trainer.load_state_dict(state)
        return trainer

    async def join(self, trial_id: str, config: dict, state: dict | None, probe=None) -> int:
        """Add a trial (replacing an earlier join of the same id); → the epoch it starts from."""
        cfg = from_dict(config)
        if not self.set_up:        # before any trainer is built: the first join's process settings
            setup_process(cfg)
            self.set_up = True
        trainer = await asyncio.to_thread(self._build, cfg, state)
        self._forget(trial_id)
        self.scheduler.join(trial_id, trainer, probe)
        return trainer.epoch

    async def advance(self, trial_id: str) -> dict:
        """One epoch of this trial, stepped with the other trials of its round; → its losses."""
        self.scheduler.ask(trial_id)
        future = asyncio.get_running_loop().create_future()
        self.answers[trial_id] = future
        if self.rounds is None or self.rounds.done():
            self.rounds = asyncio.create_task(self._run_rounds())
        return await future

    async def report(self, trial_id: str) -> Report:
        """(validation metrics, full trainer state on the CPU, sample grid) of this trial."""
        trainer = self.scheduler.member(trial_id).trainer
        return await asyncio.to_thread(trainer_report, trainer)

    async def leave(self, trial_id: str) -> None:
        self._forget(trial_id)

    def _forget(self, trial_id: str, why: Exception | None = None) -> None:
        self.scheduler.leave(trial_id)
        future = self.answers.pop(trial_id, None)
        if future is not None and not future.done():
            future.set_exception(why or RuntimeError(f"trial {trial_id} left or rejoined the pack"))

    async def _run_rounds(self) -> None:
        try:
            await self._rounds()
        except Exception as err:       # never leave a trial waiting on an answer that cannot come
            for trial_id in list(self.answers):
                self._forget(trial_id, err)
            raise

    async def _rounds(self) -> None:
        while self.scheduler.waiting:
            self.scheduler.drop_stale()
            if not self.scheduler.ready():
                await self._drop_dead()
                await asyncio.sleep(TICK_S)
                continue
            for group in self.scheduler.take_groups():
                answers = {t: self.answers.pop(t) for t in group.trial_ids if t in self.answers}
                try:
                    results = await asyncio.to_thread(train_group, group)
                    self.scheduler.trained(group.trial_ids)
                    self.packed_steps, self.trial_epochs = self.packed_steps + 1, self.trial_epochs + len(results)
                except Exception as err:   # the pack's state is unknown now: its trials rejoin
                    for trial_id in group.trial_ids:
                        self.scheduler.leave(trial_id)
                    results = [err] * len(group.trial_ids)
                for trial_id, result in zip(group.trial_ids, results):
                    future = answers.get(trial_id)
                    if future is not None and not future.done():
                        (future.set_exception if isinstance(result, Exception) else future.set_result)(result)

    async def _drop_dead(self) -> None:
        """Trials ASHA stopped die without leaving: ask the late ones' processes if they are alive
        (a live trial is busy in Tune's train() and does not answer yet). The probes are polled,
        never awaited: a round must not wait on a process that may never answer."""
        now = time.monotonic()
        if now - self.last_probe < GATHER_S or now - max(self.scheduler.waiting.values()) < GATHER_S:
            return
        self.last_probe = now
        for trial_id in self.scheduler.missing():
            probe = self.scheduler.members[trial_id].probe
            if probe is not None and trial_id not in self.probes:
                self.probes[trial_id] = asyncio.ensure_future(_answers(probe.__ray_ready__.remote()))
        for trial_id, answer in list(self.probes.items()):
            if answer.done():
                del self.probes[trial_id]
                if isinstance(answer.exception(), ray.exceptions.RayActorError):
                    self._forget(trial_id)


def start_pack_server(sweep_name: str, pack: int, max_concurrent: int, cluster: dict[str, float]):
    """The sweep's pack server (holding a whole GPU when there is one); keep the handle for as long
    as the sweep runs: the actor lives while a handle does."""
    options = {"name": server_name(sweep_name), "get_if_exists": True, "num_cpus": 0,
               "num_gpus": 1 if cluster.get("GPU", 0) > 0 else 0, "max_concurrency": max_concurrent + 4}
    server = ray.remote(PackServer).options(**options).remote(pack)
    ray.get(server.ping.remote())
    return server
