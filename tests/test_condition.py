"""Conditioned generator pieces: FiLM / projection start as the unconditioned nets, the condition
vector, per-image targets and the per-image control loss (hue across the wrap)."""
from __future__ import annotations

import math

import kornia.color
import pytest
import torch

from trainable.color import image_statistics
from trainable.condition import (CONDITION_SIZE, Targets, condition_noise, condition_vector, draw_targets,
                                 fixed_targets, per_image_control_loss, range_tensors)
from trainable.config import ConfigError, load_config
from trainable.models import build_models

CONDITIONED = ["model.width=0.25", "model.conditioning=film", "loss.saturation.range=[0.1,0.9]",
               "loss.hue.range=[0,1]", "model.d_conditioning=projection"]


def test_film_and_projection_at_initialization_are_the_unconditioned_nets():
    torch.manual_seed(0)
    plain_g, plain_d = build_models(load_config(None, ["model.width=0.25"]))
    torch.manual_seed(0)
    film_g, film_d = build_models(load_config(None, CONDITIONED))
    for generator in (plain_g, film_g):      # the head starts at zero; give it weights to compare
        torch.nn.init.normal_(generator.head[0].weight, generator=torch.Generator().manual_seed(3))
    lightness = torch.rand(4, 1, 32, 32) * 2 - 1
    condition = condition_vector(fixed_targets({"saturation": 0.8, "hue": 0.3}, 4))
    with torch.no_grad():
        expected = plain_g(lightness)
        assert expected.abs().max() > 0.1
        assert torch.equal(film_g(lightness, condition), expected)
        lab = torch.cat([lightness, expected], 1)
        assert torch.equal(film_d(lab, condition), plain_d(lab))
    film_g.film.body[-1].bias.data.fill_(0.5)      # and the condition does act once trained
    with torch.no_grad():
        assert not torch.equal(film_g(lightness, condition), expected)


def test_condition_vector_layout():
    c = condition_vector(fixed_targets({"saturation": 0.7, "hue": 0.25, "red": None}, 2))
    assert c.shape == (2, CONDITION_SIZE)
    # saturation (2·0.7 − 1, 1), value absent, hue (cos, sin, 1) of a quarter turn, red absent
    assert torch.allclose(c[0, :7], torch.tensor([0.4, 1, 0, 0, 0, 1, 1.0]), atol=1e-6)
    assert c[:, 7:].abs().sum() == 0


def test_config_ranges_parse_and_bad_ones_name_the_key():
    cfg = load_config(None, CONDITIONED)
    assert cfg.loss.saturation.range == (0.1, 0.9) and list(cfg.loss.conditioned()) == ["saturation", "hue"]
    with pytest.raises(ConfigError, match=r"^loss\.saturation\.range: a range conditions"):
        load_config(None, ["loss.saturation.range=[0.1,0.9]"])
    with pytest.raises(ConfigError, match=r"^loss\.value\.range: must be \[low, high\]"):
        load_config(None, [*CONDITIONED, "loss.value.range=[0.9,0.1]"])
    with pytest.raises(ConfigError, match=r"^model\.conditioning: film needs"):
        load_config(None, ["model.conditioning=film"])


def test_draw_targets_own_drawn_and_dropped():
    cfg = load_config(None, [*CONDITIONED, "loss.condition.own_fraction=0.3", "loss.condition.drop=0.2"])
    noise = condition_noise(1, 4000, cfg.loss, torch.Generator().manual_seed(0))[0]
    low, high, _ = range_tensors(cfg.loss, "cpu")
    own_stats = torch.full((4000, 2), 0.05)          # outside both ranges: marks the own images
    targets = draw_targets(noise, own_stats, ("saturation", "hue"), low, high, 0.3, 0.2)
    own = targets.own > 0
    assert abs(own.float().mean() - 0.3) < 0.03
    assert torch.equal(targets.values[own], own_stats[own])
    drawn = targets.values[~own]
    assert drawn[:, 0].min() >= 0.1 and drawn[:, 0].max() <= 0.9 and abs(drawn[:, 0].mean() - 0.5) < 0.02
    assert drawn[:, 1].min() >= 0 and drawn[:, 1].max() < 1
    assert abs(targets.present.mean() - 0.8) < 0.02


def _rgb_with_hue(turns: float) -> torch.Tensor:
    """A saturated image whose hue is `turns` (HSV → RGB)."""
    hue = torch.full((1, 1, 4, 4), turns * 2 * math.pi)
    return kornia.color.hsv_to_rgb(torch.cat([hue, torch.ones_like(hue), torch.ones_like(hue)], 1))


def test_per_image_loss_wraps_hue_and_skips_absent():
    rgb = torch.cat([_rgb_with_hue(0.98), _rgb_with_hue(0.5)])
    assert torch.allclose(image_statistics(rgb, ("hue",))["hue"], torch.tensor([0.98, 0.5]), atol=1e-3)
    targets = Targets(("hue",), torch.tensor([[0.03], [0.0]]), torch.tensor([[1.0], [0.0]]), torch.zeros(2))
    out = per_image_control_loss(rgb, targets, torch.tensor([2.0]))
    assert out["control_error_hue"].item() == pytest.approx(0.05, abs=2e-3)     # across the wrap, not 0.95
    assert out["loss_control"].item() == pytest.approx(0.10, abs=4e-3)          # image 2 is absent
    both = Targets(("hue",), torch.tensor([[0.03], [0.0]]), torch.ones(2, 1), torch.zeros(2))
    assert per_image_control_loss(rgb, both, torch.tensor([1.0]))["control_error_hue"].item() == \
        pytest.approx((0.05 + 0.5) / 2, abs=2e-3)
