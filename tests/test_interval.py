"""Intervals: train.checkpoint_every and a sweep's report_every, read and refused; when a Clock is due."""
from __future__ import annotations

import pytest

from trainable.config import ConfigError, load_config
from trainable.interval import Clock, Interval, duration_seconds, parse_interval


@pytest.mark.parametrize("value, interval", [
    (0, Interval()), (50, Interval(steps=50)), ("500 steps", Interval(steps=500)), ("1step", Interval(steps=1)),
    ("10m", Interval(seconds=600.0)), ("90s", Interval(seconds=90.0)), ("1h30m", Interval(seconds=5400.0))])
def test_checkpoint_every_reads_steps_and_durations(value, interval):
    assert parse_interval(load_config(None, [f"train.checkpoint_every={value}"]).train.checkpoint_every,
                          ("steps",), durations=True) == interval


@pytest.mark.parametrize("value", ["soon", "-3", "2 epochs", "10 minutes", "1.5", "true"])
def test_a_bad_checkpoint_every_is_one_line_naming_the_key(value):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"train.checkpoint_every={value}"])
    assert str(err.value).startswith("train.checkpoint_every: ") and "\n" not in str(err.value)


def test_report_every_counts_epochs_unless_steps_are_named():
    assert parse_interval(3, ("epochs", "steps"), durations=False) == Interval(epochs=3)
    assert parse_interval("200 steps", ("epochs", "steps"), durations=False) == Interval(steps=200)
    with pytest.raises(ValueError, match="'N epochs' or 'N steps'"):
        parse_interval("10m", ("epochs", "steps"), durations=False)
    assert duration_seconds("45s") == 45.0 and duration_seconds("45") is None


def test_a_step_clock_is_due_at_multiples_of_its_interval_whatever_its_start():
    position = [7]
    clock = Clock(Interval(steps=5), lambda: position[0])
    due = []
    for step in range(8, 21):
        position[0] = step
        if clock.due():
            due.append(step)
            clock.reset()
    assert due == [10, 15, 20]
