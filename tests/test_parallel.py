"""Data-parallel steps (trainable/parallel.py): 2 gloo processes with batch b each take, step for step,
the one-process steps with batch 2b, in float64 on the CPU, and resume a mid-epoch checkpoint exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import tiny_config
from trainable.data import ColorData, load_data
from trainable.engine import Trainer
from sweep.distributed import RankRun
from trainable.interval import Clock, Interval
from trainable.loop import Midway, run_epochs, steps_for, train_epoch
from trainable.parallel import RankClock, RankStep, share_partial_sums

LOCAL_BATCH = 8
STEPS_CHECKED = ("generator", "discriminator")
# Every term kind: BCE and L1 means, fixed-target control terms (arithmetic and circular means),
# flips and label smoothing; the conditioned case adds per-image targets, FiLM and the ratio L1.
CONTROLLED = ("loss.saturation.weight=20", "loss.saturation.target=0.6", "loss.hue.weight=5",
              "loss.hue.target=0.3")
CONDITIONED = ("model.conditioning=film", "loss.saturation.range=[0.05,0.8]", "loss.saturation.weight=30",
               "loss.condition.own_fraction=0.5")
COMMON = ("data.synthetic_size=120", "train.precision=fp32", "train.epochs=2")


def _config(extra: tuple[str, ...], batch: int):
    return tiny_config(*COMMON, *extra, f"train.batch_size={batch}")


def _trainer(cfg) -> Trainer:
    loaded = load_data(cfg.data, "cpu")
    return Trainer(cfg, ColorData(loaded.train.double(), loaded.val.double()))


def _flat(trainer: Trainer) -> torch.Tensor:
    return torch.cat([t.detach().flatten().clone() for net in STEPS_CHECKED
                      for t in [*getattr(trainer, net).parameters(), *getattr(trainer, net).buffers()]
                      if t.is_floating_point()])


def _epochs(trainer: Trainer, group, epochs: int) -> tuple[list[torch.Tensor], list[dict]]:
    """Weights after every step and the epochs' mean losses."""
    seen, results = [], []

    def record(done: int, total: int) -> None:
        seen.append(_flat(trainer))
    for _ in range(epochs):
        results.append(train_epoch(group, record)[0])
    return seen, results


def _rank(rank: int, size: int, extra: tuple[str, ...], folder: str) -> None:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=size)
    try:
        trainer = _trainer(_config(extra, LOCAL_BATCH))
        seen, results = _epochs(trainer, RankStep(trainer, LOCAL_BATCH * size), 2)
        torch.save({"steps": seen, "results": results, "state": trainer.state_dict()},
                   Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("extra", [CONTROLLED, CONDITIONED], ids=["controlled", "conditioned"])
def test_two_ranks_take_the_one_process_steps(extra, tmp_path, float64):
    """Two epochs: every step's G and D weights (and BatchNorm running statistics) within 1e-9 of
    the one-process run with the doubled batch; the epochs' mean losses and the schedule too."""
    mp.spawn(_rank, args=(2, extra, str(tmp_path)), nprocs=2, join=True)
    single = _trainer(_config(extra, 2 * LOCAL_BATCH))
    expected, expected_results = _epochs(single, steps_for([single]), 2)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert len(got["steps"]) == len(expected) > 4
        for step, (a, b) in enumerate(zip(expected, got["steps"])):
            assert (a - b).abs().max() < 1e-9, f"rank {rank}, step {step + 1}"
        for a, b in zip(expected_results, got["results"]):
            assert a.keys() == b.keys()
            for key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
        assert got["state"]["step"] == single.step
        assert torch.equal(got["state"]["rng"], single.rng.get_state())


def _rank_without_sync(rank: int, size: int, folder: str) -> None:
    """The same run with plain BatchNorm and per-rank control means: what the exact terms buy."""
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=size)
    try:
        trainer = _trainer(_config(CONTROLLED, LOCAL_BATCH))
        group = RankStep(trainer, LOCAL_BATCH * size, exact=False)
        seen, _ = _epochs(trainer, group, 1)
        torch.save({"steps": seen}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.integration
def test_without_the_exact_terms_the_steps_differ(tmp_path, float64):
    """The known answer can fail: local BatchNorm statistics and per-rank control means move the
    weights away from the one-process run at the first step."""
    mp.spawn(_rank_without_sync, args=(2, str(tmp_path)), nprocs=2, join=True)
    single = _trainer(_config(CONTROLLED, 2 * LOCAL_BATCH))
    expected, _ = _epochs(single, steps_for([single]), 1)
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert (expected[0] - got["steps"][0]).abs().max() > 1e-6


class _Killed(Exception):
    """Stands for a SIGKILL right after a mid-epoch checkpoint."""


def _rank_midway(rank: int, size: int, folder: str, phase: str) -> None:
    """2 epochs of 2 ranks checkpointing every 3 steps as sweep.distributed does: `whole` runs
    through, `killed` stops after the first mid-epoch checkpoint, `resumed` goes on from it."""
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous-{phase}", rank=rank, world_size=size)
    try:
        trainer = _trainer(_config(CONTROLLED, LOCAL_BATCH))
        if phase == "resumed":
            trainer.load_state_dict(torch.load(Path(folder) / "midway.pt", weights_only=False))
        run = RankRun(trainer, RankStep(trainer, LOCAL_BATCH * size), rank)
        rows = []

        def checkpoint(losses: dict) -> None:
            share_partial_sums(trainer)
            if rank == 0 and phase == "killed":
                torch.save(trainer.state_dict(), Path(folder) / "midway.pt")
            if phase == "killed":
                raise _Killed
        midway = Midway(RankClock(Clock(Interval(steps=3), lambda: run.steps), trainer.device), checkpoint)
        try:
            run_epochs(run, lambda row, state, grid: rows.append(row), 2, midway=midway)
        except _Killed:
            return
        torch.save({"weights": _flat(trainer), "rows": rows, "step": trainer.step}, Path(folder) / f"{phase}{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.integration
def test_two_ranks_resume_a_mid_epoch_checkpoint_exactly(tmp_path, float64):
    """Killed after step 3 of epoch 1 and resumed from rank 0's checkpoint, two ranks end with the
    weights, step count and per-epoch mean losses of an uninterrupted two-rank run."""
    for phase in ("whole", "killed", "resumed"):
        mp.spawn(_rank_midway, args=(2, str(tmp_path), phase), nprocs=2, join=True)
    saved = torch.load(tmp_path / "midway.pt", weights_only=False)
    assert (saved["epoch"], saved["epoch_step"]) == (0, 3)
    whole = torch.load(tmp_path / "whole0.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed0.pt", weights_only=False)
    assert resumed["step"] == whole["step"] > 6
    assert (resumed["weights"] - whole["weights"]).abs().max() < 1e-9
    assert [row["epoch"] for row in resumed["rows"]] == [1, 2] == [row["epoch"] for row in whole["rows"]]
    for got, expected in zip(resumed["rows"], whole["rows"]):
        for key in ("loss_d", "loss_g", "loss_l1", "loss_control"):
            assert got[key] == pytest.approx(expected[key], rel=1e-9), key
