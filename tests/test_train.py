"""The train CLI: seed-project flags, config errors, resume, corrupt checkpoints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import yaml

from tests.helpers import ROOT, TINY, tiny_config, wait_until
from trainable.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainable.config import load_config, to_dict
from trainable.engine import Trainer
from trainable.train import build_parser, config_from_args, main

SEED_FLAGS = ("--seed 100 --dataset cifar10 --dataset-path ./dataset/cifar10 --checkpoints-path ./checkpoints "
              "--batch-size 128 --epochs 200 --lr 3e-4 --lr-decay-steps 1e4 --augment True "
              "--desired-saturation 1 --saturation-weight 20 --desired-hue 0.6 --hue-weight 5").split()


def test_seed_flags_parse_to_the_right_config():
    args = build_parser().parse_args(SEED_FLAGS + ["--label-smoothing", "False", "--l1-weight", "50",
                                                   "--desired-red", "0.3", "--red-weight", "2"])
    cfg = config_from_args(args)
    assert (cfg.train.seed, cfg.train.batch_size, cfg.train.epochs) == (100, 128, 200)
    assert (cfg.data.dataset, cfg.data.path, cfg.data.flip) == ("cifar10", "./dataset/cifar10", True)
    assert cfg.optim.lr_generator == cfg.optim.lr_discriminator == 3e-4
    assert (cfg.optim.schedule, cfg.optim.lr_decay_steps) == ("exponential", 10000)
    assert (cfg.loss.saturation.target, cfg.loss.saturation.weight) == (1.0, 20.0)
    assert (cfg.loss.hue.target, cfg.loss.hue.weight) == (0.6, 5.0)
    assert (cfg.loss.red.target, cfg.loss.red.weight) == (0.3, 2.0)
    assert cfg.loss.real_label == 1.0 and cfg.loss.l1_weight == 50.0
    assert args.checkpoints_path == "./checkpoints"


def test_set_overrides_win_over_seed_flags():
    args = build_parser().parse_args(["--epochs", "5", "--set", "train.epochs=7", "--set", "model.width=0.25"])
    cfg = config_from_args(args)
    assert cfg.train.epochs == 7 and cfg.model.width == 0.25


@pytest.mark.parametrize("flags, key", [(["--set", "model.widht=1"], "model.widht"),
                                        (["--set", "loss.hue.target=1.5"], "loss.hue.target"),
                                        (["--desired-saturation", "2"], "loss.saturation.target"),
                                        (["--set", "train.epochs=many"], "train.epochs"),
                                        (["--set", "train.checkpoint_every=soon"], "train.checkpoint_every")])
def test_bad_config_is_one_line_naming_the_key(flags, key, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert key in last


def test_cli_trains_then_continues_with_more_epochs(tmp_path):
    base = [f"--set={o}" for o in TINY] + ["--checkpoints-path", str(tmp_path), "--no-progress"]
    assert main(base + ["--epochs", "1"]) == 0
    assert main(base + ["--epochs", "2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert "val_pixel_acc_5" in rows[0] and "val_realism_abhist" in rows[0]
    assert (tmp_path / "config.yaml").exists()
    assert load_checkpoint(tmp_path / "checkpoint")["epoch"] == 2


def test_a_torn_last_metrics_line_does_not_block_the_resume(tmp_path):
    base = [f"--set={o}" for o in TINY] + ["--checkpoints-path", str(tmp_path), "--no-progress"]
    assert main(base + ["--epochs", "1"]) == 0
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 2, "val_l1": 0.')              # a kill during the next append
    assert main(base + ["--epochs", "2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, {"epoch": 1, "weights": torch.ones(3)})
    save_checkpoint(tmp_path, {"epoch": 2, "weights": torch.ones(3)})
    (tmp_path / "latest.pt").write_bytes(b"torn write")
    with pytest.warns(UserWarning, match="unreadable"):
        state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1
    (tmp_path / "previous.pt").write_bytes(b"also torn")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


@pytest.mark.integration
@pytest.mark.slow
def test_module_entry_point_runs(tmp_path):
    cmd = [sys.executable, "-m", "trainable.train", *[f"--set={o}" for o in TINY],
           "--set=train.epochs=1", "--checkpoints-path", str(tmp_path), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "epoch 1/1" in done.stdout


def test_config_file_then_sets_then_flags(tmp_path):
    """A YAML file is read first, --set overrides win over it, and a saved config reloads equal."""
    saved = tiny_config("loss.saturation.weight=20", "loss.saturation.target=0.7")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(to_dict(saved)))
    assert load_config(path) == saved
    cfg = config_from_args(build_parser().parse_args([str(path), "--set", "train.epochs=5", "--l1-weight", "7"]))
    assert cfg == replace(saved, train=replace(saved.train, epochs=5), loss=replace(saved.loss, l1_weight=7.0))


def test_invalid_yaml_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  width: [0.25\ntrain: {}\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}:3:") and "not valid YAML" in err[0], err
    assert "<unicode string>" not in err[0]


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured
    return lines[0]


def test_checkpoints_path_naming_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    for path in (tmp_path / "a_file", tmp_path / "a_file" / "run"):
        with pytest.raises(SystemExit) as exit_info:
            main([f"--set={o}" for o in TINY] + ["--checkpoints-path", str(path), "--no-progress"])
        assert exit_info.value.code == 2
        line = one_error_line(capsys)
        assert line.startswith(f"error: --checkpoints-path {path}: ") and "a_file is a file, not a folder" in line
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"] and (tmp_path / "a_file").read_text() == "not a folder"


def test_missing_data_folder_is_bad_input_exit_2_and_makes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["--set=data.dataset=cifar10", f"--set=data.path={tmp_path / 'no_data'}", *[f"--set={o}" for o in TINY[1:]
                 if not o.startswith("data.")], "--checkpoints-path", str(run), "--no-progress"])
    line = one_error_line(capsys)
    assert code == 2 and "no_data" in line, line
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_of_another_config_is_bad_input_exit_2(tmp_path, capsys):
    save_checkpoint(tmp_path / "checkpoint", Trainer(tiny_config()).state_dict())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code = main([f"--set={o}" for o in TINY] + ["--set=model.width=0.25", "--checkpoints-path", str(tmp_path),
                                                 "--no-progress"])
    line = one_error_line(capsys)
    assert code == 2 and "another config" in line and "model.width" in line, line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# `python -m trainable.train` with every batch's fingerprint appended to $BATCH_LOG before its step
RECORDING_TRAIN = """
import hashlib, os, runpy
from trainable import steps
step = steps.EagerStep.step
def recorded(self, batch, *args):
    with open(os.environ["BATCH_LOG"], "a") as log:
        log.write(hashlib.sha1(batch.numpy().tobytes()).hexdigest() + "\\n")
    return step(self, batch, *args)
steps.EagerStep.step = recorded
runpy.run_module("trainable.train", run_name="__main__")
"""
MID_EPOCH = ["data.synthetic_size=640", "train.epochs=2", "train.checkpoint_every=5", "train.precision=fp32"]


def _recording_train(folder, log, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-c", RECORDING_TRAIN, *[f"--set={o}" for o in [*TINY, *MID_EPOCH]],
               "--checkpoints-path", str(folder), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BATCH_LOG": str(log)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _in_second_epoch(folder) -> bool:
    """A mid-epoch checkpoint of the second epoch is on disk (latest.pt is renamed into place whole)."""
    path = folder / "checkpoint" / "latest.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return False
    return state["epoch"] == 1 and state["epoch_step"] > 0


@pytest.mark.integration
@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_ends_with_identical_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = _recording_train(straight, tmp_path / "straight.log")
    assert done.wait(timeout=600) == 0, done.stdout.read()
    first = _recording_train(killed, tmp_path / "first.log")
    assert wait_until(lambda: _in_second_epoch(killed), first), first.stdout.read()
    first.kill()                                              # SIGKILL, mid-epoch
    first.wait()
    saved = load_checkpoint(killed / "checkpoint")
    assert saved["epoch"] == 1 and saved["epoch_step"] > 0     # the kill came before the epoch ended
    again = _recording_train(killed, tmp_path / "again.log")
    assert again.wait(timeout=600) == 0, again.stdout.read()
    batches = (tmp_path / "straight.log").read_text().split()
    per_epoch = len(batches) // 2
    resumed_at = per_epoch * saved["epoch"] + saved["epoch_step"]
    before_kill = (tmp_path / "first.log").read_text().split()[:resumed_at]
    assert len(before_kill) == resumed_at and len(batches) == 2 * per_epoch
    assert before_kill + (tmp_path / "again.log").read_text().split() == batches   # same batches, same order
    assert f"step {saved['epoch_step']} of epoch 2" in again.stdout.read()
    a, b = load_checkpoint(straight / "checkpoint"), load_checkpoint(killed / "checkpoint")
    assert a["step"] == b["step"] == len(batches) and a["epoch_step"] == b["epoch_step"] == 0
    for part in ("generator", "discriminator"):
        assert all(torch.equal(a[part][key], b[part][key]) for key in a[part]), part
    assert all(torch.equal(x, y) for x, y in zip(a["opt_g"]["state"][0].values(), b["opt_g"]["state"][0].values()))
