"""Trainer: steps, metrics, determinism of stop-and-resume, control terms that train."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import tiny_config
from trainable.engine import Trainer
from trainable.names import metric_names_of
from trainable.checkpoint import load_checkpoint, save_checkpoint
from trainable.interval import Clock, Interval
from trainable.loop import Interrupted, LocalRun, Midway, read_metrics, run_epochs, run_training, train_epoch


def _weights(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.generator.parameters()])


def test_train_epoch_reports_losses_and_steps():
    trainer = Trainer(tiny_config())
    before = _weights(trainer).clone()
    losses = train_epoch(trainer)[0]
    assert trainer.epoch == 1 and trainer.step == len(trainer.data.train) // 16
    assert {"loss_d", "loss_g", "loss_l1", "loss_control", "lr_generator"} <= set(losses)
    assert all(np.isfinite(v) for v in losses.values())
    assert not torch.equal(before, _weights(trainer))


def test_evaluate_reports_every_named_metric():
    cfg = tiny_config("loss.saturation.weight=5", "loss.hue.weight=1", "loss.hue.target=0.95")
    metrics = Trainer(cfg).evaluate()
    assert sorted(metrics) == sorted(metric_names_of(cfg))
    assert 0 <= metrics["val_realism_abhist"] <= 1
    assert 0 <= metrics["val_hue"] < 1
    assert metrics["val_control_error_hue"] <= 0.5
    expected = (metrics["val_control_error_saturation"] + metrics["val_control_error_hue"]) / 2
    assert metrics["val_control_error"] == pytest.approx(expected)


def test_sample_grid_shape():
    trainer = Trainer(tiny_config())
    grid = trainer.sample_grid(count=4)
    assert grid.dtype == np.uint8 and grid.shape == (3 * 64, 4 * 64, 3)


@pytest.mark.slow
def test_stop_and_resume_gives_the_same_weights(tmp_path):
    straight = run_training(tiny_config("train.epochs=3"), tmp_path / "straight", progress=False)
    run_training(tiny_config("train.epochs=1"), tmp_path / "split", progress=False)
    resumed = run_training(tiny_config("train.epochs=3"), tmp_path / "split", progress=False)
    assert resumed.epoch == 3 and resumed.step == straight.step
    assert torch.equal(_weights(straight), _weights(resumed))
    d_straight = torch.cat([p.flatten() for p in straight.discriminator.parameters()])
    d_resumed = torch.cat([p.flatten() for p in resumed.discriminator.parameters()])
    assert torch.equal(d_straight, d_resumed)
    assert [row["epoch"] for row in read_metrics(tmp_path / "split" / "metrics.jsonl")] == [1, 2, 3]
    straight_rows = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    split_rows = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert straight_rows[-1]["loss_g"] == split_rows[-1]["loss_g"]


def test_resume_refuses_another_model(tmp_path):
    run_training(tiny_config("train.epochs=1"), tmp_path, progress=False)
    with pytest.raises(ValueError, match="model.width"):
        run_training(tiny_config("train.epochs=2", "model.width=0.25"), tmp_path, progress=False)


def test_exponential_schedule_decays_per_step():
    trainer = Trainer(tiny_config("optim.schedule=exponential", "optim.lr_decay_steps=10"))
    train_epoch(trainer)
    expected = 2e-4 * 0.1 ** ((trainer.step - 1) / 10)
    assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(expected)


def test_plateau_schedule_divides_by_ten():
    trainer = Trainer(tiny_config("optim.plateau_patience=1"))
    trainer.schedule.end_epoch(1.0)
    trainer.schedule.end_epoch(2.0)          # no improvement for one epoch → ÷10
    assert trainer.schedule.factor(0) == pytest.approx(0.1)


@pytest.mark.slow
def test_control_term_moves_saturation_both_ways():
    """σ_S = 0.9 vs 0.1 at λ = 20: held-out saturation ends above / below the uncontrolled run."""
    achieved = {}
    for weight, target in ((0, 0.5), (20, 0.9), (20, 0.1)):
        cfg = tiny_config("train.epochs=7", "train.batch_size=8", "data.synthetic_size=320",
                          f"loss.saturation.weight={weight}", f"loss.saturation.target={target}")
        trainer = Trainer(cfg)
        for _ in range(cfg.train.epochs):
            train_epoch(trainer)
        achieved[(weight, target)] = trainer.evaluate()["val_saturation"]
    baseline, high, low = achieved[(0, 0.5)], achieved[(20, 0.9)], achieved[(20, 0.1)]
    assert high > baseline + 0.05 and low < baseline - 0.05, achieved
    assert high - low > 0.15, achieved


@pytest.mark.slow
def test_an_epoch_stopped_mid_way_resumes_at_the_next_step_with_the_same_weights(tmp_path):
    """Stopped after step 4 of epoch 2 (as a trial is when its launcher stops), saved, loaded into a
    new trainer: the rest of the epoch gives the weights and mean losses of an unbroken run."""
    straight = Trainer(tiny_config())
    train_epoch(straight)
    straight_losses = train_epoch(straight)[0]
    broken = Trainer(tiny_config())
    train_epoch(broken)
    asked = []
    with pytest.raises(Interrupted):
        train_epoch(broken, stop=lambda: len(asked) >= 3 or asked.append(1))
    assert broken.epoch == 1 and broken.epoch_step == 4
    save_checkpoint(tmp_path, broken.state_dict())
    resumed = Trainer(tiny_config())
    resumed.load_state_dict(load_checkpoint(tmp_path))
    steps = []
    losses = train_epoch(resumed, progress=lambda done, total: steps.append(done))[0]
    assert steps[0] == 5 and steps[-1] == len(steps) + 4            # began at the next step
    assert resumed.epoch == 2 and resumed.step == straight.step and resumed.epoch_step == 0
    assert torch.equal(_weights(straight), _weights(resumed))
    assert torch.equal(torch.cat([p.flatten() for p in straight.discriminator.parameters()]),
                       torch.cat([p.flatten() for p in resumed.discriminator.parameters()]))
    assert losses == straight_losses


@pytest.mark.slow
def test_midway_reports_at_multiples_of_its_steps_and_leaves_the_training_unchanged():
    """7 steps an epoch, 2 epochs, a Midway every 3 steps: pauses at 3, 6, 9, 12 (one at the end of
    the first epoch's own steps is not due); every 7 steps: at the first epoch's end, which does not
    report by itself. Weights as a run without pauses."""
    cfg = tiny_config()
    straight = Trainer(cfg)
    run_epochs(LocalRun(straight), lambda row, state, grid: None, 2)
    for every, expected in ((3, [3, 6, 9, 12]), (7, [7])):
        trainer = Trainer(cfg)
        run, paused, rows = LocalRun(trainer), [], []
        midway = Midway(Clock(Interval(steps=every), lambda: run.steps), lambda losses: paused.append(run.steps))
        run_epochs(run, lambda row, state, grid: rows.append(row), 2, every=2, midway=midway)
        assert len(trainer.data.train) // 16 == 7 and paused == expected and [r["epoch"] for r in rows] == [2]
        assert torch.equal(_weights(straight), _weights(trainer))
