"""The one estimate (sweep.estimate): the launcher's no-GPU line, its CPU-sized sweep and the live
display's first ETA come from the same measured step time through the same formula."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from sweep.estimate import Pace, Timing, clock, cpu_sized, no_gpu_line
from sweep.progress import SweepDisplay, eta_seconds, headline
from sweep.spec import load_spec, probe_config
from trainable.config import apply_overrides

MAIN_JOB = Path(__file__).resolve().parents[1] / "search_spaces" / "saturation.yaml"
TRAIN, VAL = 45000, 5000          # CIFAR-10's training images as a trial splits them


def main_job(*overrides: str):
    spec = load_spec(MAIN_JOB, list(overrides))
    return spec, apply_overrides(probe_config(spec.config, spec.space), {"train.threads": 1})


@pytest.mark.parametrize("cpus, step_s", [(2, 0.4), (2, 0.05), (8, 0.4)])
def test_launcher_hours_equal_the_displays_first_eta(cpus, step_s):
    spec, cfg = main_job()
    timing = Timing(step_s, 0.002, cfg.train.batch_size, VAL)
    line, pace = no_gpu_line(spec, cfg, cpus, 1, timing, TRAIN, timing)
    epoch_s = step_s * (TRAIN // cfg.train.batch_size) + 0.002 * VAL
    expected = spec.num_samples * cfg.train.epochs * epoch_s / min(cpus, spec.max_concurrent)
    printed = re.search(r"takes up to (\S+) on", line).group(1)
    shown = re.search(r"ETA <=(\S+)", headline([], spec, 0.0, time.time(), pace)).group(1)
    assert printed == shown == clock(expected), (line, shown)
    assert eta_seconds([], spec, time.time(), pace) == pytest.approx(expected)
    assert eta_seconds([], spec, time.time()) is None              # without the launcher's pace: unknown


def test_the_display_starts_from_the_launchers_pace():
    spec, _ = main_job()
    display = SweepDisplay(spec, start=Pace(60.0, 2))
    assert f"ETA <={clock(40 * 30 * 60.0 / 2)}" in headline([], spec, 0.0, time.time(), display.start)


@pytest.mark.parametrize("step_s, samples, limit", [(2.0, 2, 7000), (0.4, 2, 38000), (0.08, 8, 45000),
                                                       (0.0001, 40, 45000)])
def test_cpu_sized_sweep_is_one_set_of_keys_and_about_an_hour(step_s, samples, limit):
    spec, cfg = main_job()
    timing = Timing(step_s, 0.0001, cfg.train.batch_size, VAL)
    found = cpu_sized(timing, 2, TRAIN, cfg.train.epochs, spec.num_samples)
    assert found[:2] == (samples, limit)
    assert found[2] <= 3600 and found[2] == pytest.approx(
        Pace(timing.epoch_s(limit), 2).seconds_for(samples * cfg.train.epochs))
    line, _ = no_gpu_line(spec, cfg, 2, 1, timing, TRAIN, timing)
    assert line.endswith(f": --set model.width=0.25 --set num_samples={samples} --set data.train_limit={limit}")
    assert f"a CPU-sized sweep, up to {clock(found[2])}:" in line


def test_a_sweep_that_fits_is_cpu_sized_already():
    spec, cfg = main_job("model.width=0.25", "num_samples=2")
    timing = Timing(0.0001, 0.0001, cfg.train.batch_size, VAL)
    assert no_gpu_line(spec, cfg, 2, 1, timing, TRAIN, timing)[0].endswith("; it is CPU-sized already")
