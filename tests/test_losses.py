"""Losses on hand-made tensors, and proof that the control terms change the generator's gradients
and move the controlled statistic in the asked direction."""
import math

import pytest
import torch

from trainable.color import image_statistics, lab_normalized_to_rgb
from trainable.config import ControlConfig, LossConfig
from trainable.losses import control_loss, discriminator_loss, generator_loss

torch.set_num_threads(1)


def bce(logit, label):
    p = 1 / (1 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def solid(red, green, blue, size=2):
    return torch.tensor([red, green, blue]).view(1, 3, 1, 1).expand(1, 3, size, size)


def colored_lab(seed=0):
    """A small mid-gray-L Lab batch with moderate random ab (inside sRGB: no clamping)."""
    generator = torch.Generator().manual_seed(seed)
    ab = (torch.rand(2, 2, 4, 4, generator=generator) - 0.5) * 0.3
    return torch.zeros(2, 1, 4, 4), ab


def test_discriminator_loss_known_values():
    real, fake = torch.full((2, 1, 4, 4), 2.0), torch.full((2, 1, 4, 4), -1.0)
    losses = discriminator_loss(real, fake, real_label=0.9)
    assert losses["loss_d_real"].item() == pytest.approx(bce(2.0, 0.9), rel=1e-5)
    assert losses["loss_d_fake"].item() == pytest.approx(bce(-1.0, 0.0), rel=1e-5)
    assert losses["loss_d"].item() == pytest.approx(bce(2.0, 0.9) + bce(-1.0, 0.0), rel=1e-5)
    unsmoothed = discriminator_loss(real, fake, real_label=1.0)
    assert unsmoothed["loss_d_real"].item() == pytest.approx(bce(2.0, 1.0), rel=1e-5)


def test_control_loss_exact_value():
    red = solid(1.0, 0.0, 0.0)
    controls = {"saturation": ControlConfig(weight=20.0, target=0.25),
                "red": ControlConfig(weight=2.0, target=0.5)}
    losses = control_loss(red, controls)
    assert losses["loss_control"].item() == pytest.approx(20 * 0.75 + 2 * 0.5, rel=1e-5)
    assert losses["control_saturation"].item() == pytest.approx(1.0, abs=1e-6)
    assert losses["control_red"].item() == pytest.approx(1.0)
    assert not losses["control_red"].requires_grad


def test_control_loss_hue_uses_the_shortest_arc():
    red = solid(1.0, 0.0, 0.0)  # hue 0
    losses = control_loss(red, {"hue": ControlConfig(weight=5.0, target=0.9)})
    assert losses["loss_control"].item() == pytest.approx(5 * 0.1, rel=1e-4)


def test_control_loss_without_controls_is_zero():
    losses = control_loss(solid(1.0, 0.0, 0.0), {})
    assert losses == {"loss_control": torch.tensor(0.0)}
    assert losses["loss_control"].dim() == 0


def test_generator_loss_parts():
    fake_logits = torch.full((2, 1, 4, 4), 0.5)
    real_ab = torch.zeros(2, 2, 4, 4)
    fake_ab = torch.full((2, 2, 4, 4), 0.1)
    fake_rgb = solid(0.0, 0.0, 1.0, size=4).expand(2, 3, 4, 4)
    cfg = LossConfig(l1_weight=100.0, blue=ControlConfig(weight=3.0, target=0.5))
    losses = generator_loss(fake_logits, fake_ab, real_ab, fake_rgb, cfg)
    assert losses["loss_g_adv"].item() == pytest.approx(bce(0.5, 1.0), rel=1e-5)
    assert losses["loss_l1"].item() == pytest.approx(0.1, rel=1e-5)
    assert losses["loss_control"].item() == pytest.approx(1.5, rel=1e-5)
    assert losses["control_blue"].item() == pytest.approx(1.0)
    assert losses["loss_g"].item() == pytest.approx(bce(0.5, 1.0) + 10.0 + 1.5, rel=1e-5)
    assert set(losses) == {"loss_g", "loss_g_adv", "loss_l1", "loss_control", "control_blue"}


@pytest.mark.parametrize("control_on, adversarial_weight", [("generator", 0.0), ("discriminator", 2.0),
                                                        ("both", 1.0)])
def test_generator_loss_switches(control_on, adversarial_weight):
    """adversarial_weight scales the BCE (0 = plain U-Net); control_on=discriminator drops G's λ terms."""
    fake_logits, real_ab = torch.full((2, 1, 4, 4), 0.5), torch.zeros(2, 2, 4, 4)
    fake_ab, fake_rgb = torch.full((2, 2, 4, 4), 0.1), solid(0.0, 0.0, 1.0, size=4).expand(2, 3, 4, 4)
    cfg = LossConfig(l1_weight=100.0, blue=ControlConfig(weight=3.0, target=0.5),
                     adversarial_weight=adversarial_weight, control_on=control_on)
    losses = generator_loss(fake_logits, fake_ab, real_ab, fake_rgb, cfg)
    control = 0.0 if control_on == "discriminator" else 1.5
    assert losses["loss_control"].item() == pytest.approx(control, rel=1e-5)
    expected = adversarial_weight * bce(0.5, 1.0) + 10.0 + control
    assert losses["loss_g"].item() == pytest.approx(expected, rel=1e-5)


def generator_grad(lightness, ab, cfg):
    ab = ab.clone().requires_grad_(True)
    fake_rgb = lab_normalized_to_rgb(torch.cat([lightness, ab], dim=1))
    losses = generator_loss(torch.zeros(2, 1, 4, 4), ab, torch.zeros_like(ab), fake_rgb, cfg)
    losses["loss_g"].backward()
    return ab.grad


def test_control_term_changes_the_gradient():
    lightness, ab = colored_lab()
    plain = generator_grad(lightness, ab, LossConfig(l1_weight=1.0))
    controlled = generator_grad(lightness, ab, LossConfig(l1_weight=1.0,
                                                          saturation=ControlConfig(20.0, 0.9)))
    assert (controlled - plain).abs().max().item() > 1e-3


def saturation_after_step(target):
    lightness, ab = colored_lab(seed=1)
    ab.requires_grad_(True)
    rgb = lab_normalized_to_rgb(torch.cat([lightness, ab], dim=1))
    before = image_statistics(rgb, ("saturation",))["saturation"].mean().item()
    control_loss(rgb, {"saturation": ControlConfig(1.0, target)})["loss_control"].backward()
    with torch.no_grad():
        stepped = ab - 0.05 * ab.grad / ab.grad.abs().max()
        rgb = lab_normalized_to_rgb(torch.cat([lightness, stepped], dim=1))
        after = image_statistics(rgb, ("saturation",))["saturation"].mean().item()
    return before, after


@pytest.mark.parametrize("target, direction", [(0.9, 1), (0.1, -1)])
def test_a_gradient_step_moves_saturation_toward_the_target(target, direction):
    before, after = saturation_after_step(target)
    assert 0.1 < before < 0.9
    assert direction * (after - before) > 0.01


def test_gradients_are_finite_for_gray_input_with_a_hue_term():
    lightness, ab = torch.zeros(2, 1, 4, 4), torch.zeros(2, 2, 4, 4)
    cfg = LossConfig(hue=ControlConfig(5.0, 0.6), colorfulness=ControlConfig(1.0, 0.3),
                     saturation=ControlConfig(1.0, 0.5))
    grad = generator_grad(lightness, ab, cfg)
    assert torch.isfinite(grad).all()


def test_gradients_are_finite_for_an_exactly_gray_rgb_image():
    gray = solid(0.5, 0.5, 0.5, size=4).expand(2, 3, 4, 4).clone().requires_grad_(True)
    controls = {"hue": ControlConfig(5.0, 0.6), "colorfulness": ControlConfig(1.0, 0.3)}
    control_loss(gray, controls)["loss_control"].backward()
    assert torch.isfinite(gray.grad).all()
