"""Data-parallel runs on Ray Train (sweep/distributed.py): the final run of the smoke sweep on two
gloo workers survives a SIGKILL of its driver, and bad input gets one line and exit 2."""
from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from sweep import distributed, final
from tests.helpers import TINY, launch_env, tiny_config, wait_until
from trainable import train
from trainable.checkpoint import save_checkpoint
from trainable.config import load_config, to_dict
from trainable.colorizer import colorize_array, load_model
from trainable.engine import Trainer
from trainable.parallel import PositionError, check_position, global_batch, rank_config, with_world

EPOCHS = 6
LONG = 10        # epochs of the worker-loss run: time to kill a worker before it ends


def final_command(sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "sweep.final", str(sweep_dir), "--epochs", str(EPOCHS), "--workers", "2",
            "--set", "train.threads=1", "--set", "train.batch_size=8", "--set", "train.checkpoint_every=1"]


def storage_checkpoints(sweep_dir: Path) -> list[Path]:
    """Checkpoints Ray Train has persisted on the run's storage (each a folder with latest.pt)."""
    return sorted((sweep_dir / "final" / distributed.RUN_STORAGE / "final").glob("checkpoint_*/latest.pt"))


def epochs_logged(sweep_dir: Path) -> list[int]:
    lines = (sweep_dir / "final" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


def final_run_ids(client: MlflowClient) -> set[str]:
    experiment = client.get_experiment_by_name("smoke")
    return {r.info.run_id for r in client.search_runs([experiment.experiment_id], "tags.final = 'true'")}


@pytest.mark.slow
@pytest.mark.integration
def test_final_on_two_workers_resumes_after_sigkill(smoke_sweep_dir, tmp_path):
    """SIGKILL the driver once a mid-epoch checkpoint (one every step) is on storage, run
    the same command again: it resumes from Ray Train's checkpoint and ends with every step taken
    once, all epochs once in metrics.jsonl and in one MLflow run, and an export the colorizer takes."""
    sweep_dir = smoke_sweep_dir
    shutil.rmtree(sweep_dir / "final", ignore_errors=True)
    client = MlflowClient(json.loads((sweep_dir / "colorsweep_state.json").read_text())["tracking_uri"])
    runs_before = final_run_ids(client)
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        process = subprocess.Popen(final_command(sweep_dir), env=launch_env(), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    # registered: on storage, and copied to the run folder by the controller after Ray Train took it
    copied = sweep_dir / "final" / "checkpoint" / "latest.pt"
    registered = lambda: (bool(storage_checkpoints(sweep_dir)) and copied.exists()
                          and torch.load(copied, weights_only=False)["epoch_step"] > 0)
    assert wait_until(registered, process), log.read_text()[-3000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (sweep_dir / "final" / "generator.pt").exists()

    rerun = subprocess.run(final_command(sweep_dir), env=launch_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "2 workers (gloo), global batch" in rerun.stdout
    resumed = re.search(r"resumed at epoch (\d+)(?:, step (\d+) of epoch \d+,)? from Ray Train's checkpoint",
                        rerun.stdout + rerun.stderr)
    assert resumed and (int(resumed.group(1)), int(resumed.group(2) or 0)) >= (0, 1), rerun.stdout[-3000:]
    assert epochs_logged(sweep_dir) == list(range(1, EPOCHS + 1))
    record = json.loads((sweep_dir / "final" / "final.json").read_text())
    assert final_run_ids(client) - runs_before == {record["mlflow_run_id"]}      # one run across the kill
    steps = [m.step for m in client.get_metric_history(record["mlflow_run_id"], "val_control_error")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))                             # each epoch once
    state = torch.load(sweep_dir / "final" / "checkpoint" / "latest.pt", weights_only=True)
    assert (state["epoch"], state["epoch_step"], state["world_size"]) == (EPOCHS, 0, 2)
    cfg = load_config(sweep_dir / "final" / "config.yaml")
    assert state["step"] == EPOCHS * (Trainer(cfg).data.train_count // 16) > EPOCHS    # each step once
    model = load_model(sweep_dir / "final" / "generator.pt")
    gray = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    assert colorize_array(model, gray).shape == (32, 32, 3)


def test_workers_must_be_positive(capsys):
    for main in (final.main, train.main):
        with pytest.raises(SystemExit) as exited:
            main(["somewhere", "--workers", "0"])
        assert exited.value.code == 2
        assert "--workers must be >= 1, got 0" in capsys.readouterr().err


def test_a_mid_epoch_checkpoint_of_another_global_batch_is_refused_or_restarted():
    state = {"config": to_dict(tiny_config()), "epoch": 0, "rng": torch.zeros(4), "epoch_step": 3,
             "epoch_rng": torch.ones(4)}
    state = with_world(state, 2, 32)
    assert check_position(state, 4, 32, restart_epoch=False) is state       # same global batch: maps
    with pytest.raises(PositionError, match="step 3 of epoch 1 with a global batch of 32 .2 worker.s..; 3"):
        check_position(state, 3, 48, restart_epoch=False)
    restarted = check_position(state, 3, 48, restart_epoch=True)
    assert restarted["epoch_step"] == 0 and torch.equal(restarted["rng"], torch.ones(4))
    assert check_position({**state, "epoch_step": 0}, 3, 48, restart_epoch=False)["epoch_step"] == 0


def test_global_batch_and_lr_scaling():
    cfg = tiny_config("train.batch_size=16", "optim.lr_generator=1e-4")
    assert global_batch(cfg, 3) == 48 and rank_config(cfg, 3) is cfg               # scale_lr is off by default
    scaled = rank_config(tiny_config("train.batch_size=16", "train.batch_size_total=64",
                                     "optim.lr_generator=1e-4", "train.scale_lr=true"), 2)
    assert scaled.optim.lr_generator == pytest.approx(4e-4)
    with pytest.raises(ValueError, match="does not split into 3"):
        global_batch(tiny_config("train.batch_size_total=64"), 3)


@pytest.mark.slow
@pytest.mark.integration
def test_bad_input_needing_the_cluster_gets_one_line(tmp_path, capsys):
    """More workers than the cluster places, NCCL without GPUs, another world's mid-epoch checkpoint:
    exit 2, one line, nothing written."""
    import ray
    folder = tmp_path / "run"
    flags = ["--checkpoints-path", str(folder), *[arg for item in TINY for arg in ("--set", item)]]
    try:
        assert distributed.main([*flags, "--workers", "64"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--workers 64: the cluster can place" in err[0] and "CPUs" in err[0]
        assert distributed.main([*flags, "--workers", "1", "--backend", "nccl"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--backend nccl needs GPUs" in err[0]
        assert not folder.exists()
        cfg = tiny_config()
        state = {**Trainer(cfg).state_dict(), "epoch_step": 2, "epoch_rng": torch.get_rng_state()}
        save_checkpoint(folder / "checkpoint", with_world(state, 1, cfg.train.batch_size))
        assert distributed.main([*flags, "--workers", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot be mapped: rerun with --restart-epoch" in err[0]
        assert distributed.main([*flags, "--workers", "1", "--set", "model.width=0.25"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another config (model.width: 0.125 → 0.25)" in err[0]
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoint"]
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.integration
def test_a_lost_worker_is_restarted_from_the_last_checkpoint(tmp_path):
    """SIGKILL rank 1 once Ray Train has registered a checkpoint (the controller has copied it to the
    run folder; one only on storage is not yet the run's): FailureConfig restarts the worker group
    from it and `trainable.train --workers 2` ends with every epoch once."""
    folder = tmp_path / "run"
    log = tmp_path / "run.log"
    command = [sys.executable, "-m", "trainable.train", "--workers", "2", "--max-failures", "1",
               "--checkpoints-path", str(folder), *[arg for item in TINY for arg in ("--set", item)],
               "--set", f"train.epochs={LONG}"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=launch_env(), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        stored = lambda: (folder / "checkpoint" / "latest.pt").exists()
        rank1 = lambda: re.search(r"pid=(\d+)\) world_rank=1", log.read_text())     # Ray Train's worker list
        assert wait_until(lambda: stored() and rank1() is not None, process), log.read_text()[-3000:]
        os.kill(int(rank1().group(1)), signal.SIGKILL)
        assert process.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    resumed = re.search(r"resumed at epoch (\d+) from Ray Train's checkpoint", text)
    assert resumed and 1 <= int(resumed.group(1)) < LONG, text[-3000:]
    rows = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, LONG + 1))
