"""adjust_to_targets: the identity on an image's own statistics, reachable targets met, L untouched,
hue wrapping, unreachable targets stopping inside the gamut."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainable.adjust import (adjust_to_targets, batch_targets, project_to_gamut, reachable_share, target_error,
                              unclipped_rgb, training_views)
from tests.helpers import tiny_config
from trainable.color import image_statistics, lab_normalized_to_rgb, rgb_to_lab_normalized
from trainable.config import load_config

OTHERS = ("value", "red", "green", "blue", "colorfulness")


@pytest.fixture(scope="module")
def lab() -> torch.Tensor:
    """Six smooth, moderately colored 16×16 images (blurred noise around a random mean color)."""
    generator = torch.Generator().manual_seed(0)
    base = 0.25 + 0.5 * torch.rand(6, 3, 1, 1, generator=generator)
    noise = F.avg_pool2d(torch.rand(6, 3, 20, 20, generator=generator), 5, 1) - 0.5
    return rgb_to_lab_normalized((base + 0.4 * noise).clamp(0.02, 0.98))


def own(lab: torch.Tensor, names) -> dict[str, torch.Tensor]:
    return image_statistics(lab_normalized_to_rgb(lab), tuple(names))


@pytest.mark.parametrize("names", [("saturation",), ("hue",), OTHERS, ("saturation", "hue", "red")])
def test_own_statistics_give_the_identity(lab, names):
    adjusted = adjust_to_targets(lab, own(lab, names))
    assert (adjusted - lab).abs().max() <= 1e-4


@pytest.mark.parametrize("shift", [-0.15, 0.1])
def test_saturation_is_met_and_l_kept(lab, shift):
    targets = {"saturation": own(lab, ["saturation"])["saturation"] + shift}
    adjusted = adjust_to_targets(lab, targets)
    assert target_error(adjusted, targets)["saturation"].max() <= 0.01
    assert torch.equal(adjusted[:, 0], lab[:, 0])


def test_hue_is_met_and_wraps(lab):
    targets = {"hue": torch.tensor([0.0, 0.25, 0.5, 0.75, 0.97, 0.02])}
    adjusted = adjust_to_targets(lab, targets)
    assert target_error(adjusted, targets)["hue"].max() <= 0.01
    assert torch.equal(adjusted[:, 0], lab[:, 0])
    # wrapping: a target just across 0 from the current hue is a small rotation, not most of a turn
    current = own(lab, ["hue"])["hue"]
    near = {"hue": (current + 0.03) % 1.0}
    moved = adjust_to_targets(lab, near)
    assert target_error(moved, near)["hue"].max() <= 0.01
    assert (moved - lab).abs().max() < 0.1


@pytest.mark.parametrize("name, shift", [(n, s) for n in OTHERS for s in (-0.03, 0.03)])
def test_other_statistics_are_met(lab, name, shift):
    targets = {name: own(lab, [name])[name] + shift}
    adjusted = adjust_to_targets(lab, targets)
    assert target_error(adjusted, targets)[name].max() <= 0.02
    assert torch.equal(adjusted[:, 0], lab[:, 0])


@pytest.mark.parametrize("names", [("saturation", "hue"), ("saturation", "hue", "red"),
                                   ("red", "green", "blue"), ("value", "colorfulness", "hue")])
def test_several_targets_at_once(lab, names):
    """Targets read off a reachable variant of each image (ab scaled and shifted, inside the gamut)."""
    shifted = lab[:, 1:] * 1.15 + torch.tensor([0.03, -0.04]).view(1, 2, 1, 1)
    variant = project_to_gamut(torch.cat([lab[:, :1], shifted], 1))
    targets = own(variant, names)
    assert max(float(e.max()) for e in target_error(lab, targets).values()) > 0.02
    errors = target_error(adjust_to_targets(lab, targets), targets)
    for name, error in errors.items():
        assert error.max() <= (0.01 if name in ("saturation", "hue") else 0.02), name


def test_unreachable_saturation_stops_at_the_gamut_bound(lab):
    before = own(lab, ["saturation"])["saturation"]
    adjusted = adjust_to_targets(lab, {"saturation": 1.0})
    after = own(adjusted, ["saturation"])["saturation"]
    assert (after > before + 0.1).all() and (after <= 1.0).all()
    rgb = unclipped_rgb(adjusted)
    assert rgb.min() >= -2e-3 and rgb.max() <= 1 + 2e-3


@pytest.mark.parametrize("l1_target, control_on, fraction", [("original", "generator", 0.0),
                                                              ("adjusted", "generator", 0.0),
                                                              ("original", "discriminator", 0.5),
                                                              ("adjusted", "both", 0.25)])
def test_training_views_follow_the_switches(lab, l1_target, control_on, fraction):
    cfg = load_config(None, ["loss.saturation.weight=10", "loss.saturation.target=0.6",
                             f"loss.l1_target={l1_target}", f"loss.control_on={control_on}",
                             f"data.adjust_fraction={fraction}"])
    targets = batch_targets(cfg.loss)
    assert targets == {"saturation": 0.6}
    batch, l1_ab, real_ab = training_views(lab, cfg, targets)
    adjusted = adjust_to_targets(lab, targets)
    replaced = round(fraction * len(lab))
    assert torch.equal(batch[:replaced], adjusted[:replaced]) and torch.equal(batch[replaced:], lab[replaced:])
    assert torch.equal(l1_ab, adjusted[:, 1:] if l1_target == "adjusted" else batch[:, 1:])
    assert torch.equal(real_ab, adjusted[:, 1:] if control_on != "generator" else batch[:, 1:])


@pytest.mark.parametrize("l1_target, control_on", [("original", "generator"), ("adjusted", "discriminator")])
def test_a_training_step_pulls_toward_the_adjusted_images(l1_target, control_on):
    """A new generator outputs ab = 0, so the first step's L1 is the mean |ab| of what it is pulled to."""
    from tests.helpers import tiny_config
    from trainable.engine import Trainer
    cfg = tiny_config("loss.saturation.weight=10", "loss.saturation.target=0.9", "train.precision=fp32",
                      f"loss.l1_target={l1_target}", f"loss.control_on={control_on}")
    trainer = Trainer(cfg)
    batch = trainer.data.train[:8]
    losses = trainer.scheduled_step(batch)
    pulled_to = adjust_to_targets(batch, {"saturation": 0.9}) if l1_target == "adjusted" else batch
    assert float(losses["loss_l1"]) == pytest.approx(float(pulled_to[:, 1:].abs().mean()), rel=1e-4)
    assert (float(losses["loss_control"]) == 0.0) == (control_on == "discriminator")


def test_batch_targets_of_a_conditioned_batch_keep_hidden_statistics_own():
    from trainable.condition import Targets
    requested = Targets(("saturation", "hue"), torch.tensor([[0.7, 0.2], [0.1, 0.9]]),
                        torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2))
    own = Targets(("saturation", "hue"), torch.tensor([[0.3, 0.5], [0.4, 0.6]]), torch.ones(2, 2), torch.ones(2))
    targets = batch_targets(load_config(None, ["loss.saturation.weight=5"]).loss, requested, own)
    assert torch.equal(targets["saturation"], torch.tensor([0.7, 0.4]))
    assert torch.equal(targets["hue"], torch.tensor([0.5, 0.9]))


def test_reals_replaced_by_adjusted_versions_carry_the_asked_statistics():
    """data.adjust_fraction's rows are shown to D adjusted to the asked targets, so D's condition for
    them is the asked one even where the other reals carry their own (loss.control_on=generator)."""
    from trainable.adjust import real_targets
    from trainable.condition import Targets
    asked = Targets(("saturation",), torch.full((4, 1), 0.9), torch.ones(4, 1), torch.zeros(4))
    own = Targets(("saturation",), torch.full((4, 1), 0.2), torch.ones(4, 1), torch.ones(4))
    half = tiny_config("data.adjust_fraction=0.5")
    assert real_targets(half, asked, own).values.flatten().tolist() == pytest.approx([0.9, 0.9, 0.2, 0.2])
    assert real_targets(tiny_config(), asked, own) is own
    assert real_targets(tiny_config("loss.control_on=both"), asked, own) is asked


def test_reachable_share_counts_the_targets_met(lab):
    """Each image's own saturation is reached; a gray image has no chroma to scale up."""
    own_values = own(lab, ["saturation"])["saturation"]
    assert reachable_share(lab[:1], "saturation", own_values[:1].tolist()) == 1.0
    gray = torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], 1)
    both = torch.cat([lab[:1], gray[:1]])
    assert reachable_share(both, "saturation", [float(own_values[0])]) == 0.5
    assert reachable_share(gray, "saturation", [0.3, 0.5]) == 0.0
