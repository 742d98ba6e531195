"""Validation metrics: the hue-histogram Jensen–Shannon divergence and the names finalize reports."""
from __future__ import annotations

import torch

from trainable.color import lab_normalized_to_rgb, rgb_to_lab_normalized
from trainable.config import ControlConfig
from trainable.metrics import MetricAccumulator, hue_histogram, jensen_shannon
from trainable.names import REALISM_METRICS, metric_names


def varied_rgb(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(4, 3, 16, 16, generator=generator)


def hue_js(fake_rgb: torch.Tensor, real_rgb: torch.Tensor) -> float:
    return jensen_shannon(hue_histogram(fake_rgb), hue_histogram(real_rgb))


def test_hue_histogram_weights_by_saturation():
    pure_red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    pale_green = torch.tensor([0.5, 1.0, 0.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2)   # S = 0.5
    histogram = hue_histogram(torch.cat([pure_red, pale_green]))
    assert histogram[0] == 4.0                       # hue 0, saturation 1, four pixels
    assert histogram[12] == 2.0                      # hue 1/3 turn → bin 12, saturation 0.5
    assert histogram.sum() == 6.0


def test_hue_js_sees_a_one_hue_collapse():
    real = varied_rgb()
    cyan = torch.tensor([0.1, 0.8, 0.8]).view(1, 3, 1, 1).expand_as(real)
    assert hue_js(real, real) == 0.0
    assert hue_js(cyan, real) > 0.5
    assert hue_js(varied_rgb(1), real) < 0.1         # other random colors: nearly the same hues
    assert abs(hue_js(torch.full_like(real, 0.5), real) - 0.5) < 1e-6   # gray: no hue mass


def test_finalize_reports_exactly_the_metric_names():
    controls = {"saturation": ControlConfig(weight=1.0, target=0.4)}
    accumulator = MetricAccumulator(controls)
    real = rgb_to_lab_normalized(varied_rgb())
    fake = torch.cat([real[:, :1], real[:, 1:].flip(0)], 1)
    accumulator.update(fake, real, lab_normalized_to_rgb(fake), lab_normalized_to_rgb(real))
    out = accumulator.finalize()
    assert set(out) == set(metric_names(controls)) - set(REALISM_METRICS)   # those: Trainer.evaluate
    assert 0 < out["val_hue_js"] < 1
