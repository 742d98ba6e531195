"""Color math: Lab normalization round trip against kornia, each statistic on hand-made images,
circular hue, and finite gradients on gray images."""
import math

import kornia.color
import numpy as np
import pytest
import torch

from trainable.adjust import unclipped_rgb
from trainable.color import (AB_SCALE, L_SCALE, batch_mean, distance, image_statistics,
                             lab_normalized_to_rgb, lab_normalized_to_uint8, rgb_to_lab_normalized,
                             saturation_from_linear)

torch.set_num_threads(1)


def solid(red, green, blue, size=4):
    """A (1,3,size,size) image of one RGB color."""
    return torch.tensor([red, green, blue], dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size)


def test_normalization_constants_match_kornia():
    assert (L_SCALE, AB_SCALE) == (50.0, 110.0)
    rgb = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    lab = kornia.color.rgb_to_lab(rgb)
    normalized = rgb_to_lab_normalized(rgb)
    torch.testing.assert_close(normalized[:, 0], lab[:, 0] / 50 - 1)
    torch.testing.assert_close(normalized[:, 1:], lab[:, 1:] / 110)


def test_white_and_black_map_to_the_ends_of_l():
    lab = rgb_to_lab_normalized(torch.cat([solid(1, 1, 1), solid(0, 0, 0)]))
    assert lab[0, 0].mean().item() == pytest.approx(1.0, abs=1e-3)
    assert lab[1, 0].mean().item() == pytest.approx(-1.0, abs=1e-3)
    assert lab[:, 1:].abs().max().item() < 1e-3


def test_round_trip_rgb_lab_rgb():
    rgb = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    back = lab_normalized_to_rgb(rgb_to_lab_normalized(rgb))
    assert (back - rgb).abs().max().item() < 1e-3
    assert torch.allclose(back, kornia.color.lab_to_rgb(kornia.color.rgb_to_lab(rgb)), atol=1e-5)


def test_uint8_images_survive_lab_and_back():
    pixels = torch.randint(0, 256, (2, 5, 7, 3), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    back = lab_normalized_to_uint8(rgb_to_lab_normalized(pixels.permute(0, 3, 1, 2).float() / 255))
    assert back.dtype == np.uint8 and back.shape == (2, 5, 7, 3)
    assert np.abs(back.astype(int) - pixels.numpy().astype(int)).max() <= 1


def test_lab_to_rgb_is_clamped():
    lab = torch.tensor([0.0, 1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)  # far outside sRGB
    rgb = lab_normalized_to_rgb(lab)
    assert rgb.min().item() >= 0.0 and rgb.max().item() <= 1.0


def test_pure_red():
    stats = image_statistics(solid(1, 0, 0))
    assert stats["red"].item() == pytest.approx(1.0)
    assert stats["green"].item() == pytest.approx(0.0)
    assert stats["blue"].item() == pytest.approx(0.0)
    assert stats["saturation"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["value"].item() == pytest.approx(1.0)
    assert stats["hue"].item() == pytest.approx(0.0, abs=1e-6)
    # rg = 1, yb = 0.5, no spread: 0.3·sqrt(1 + 0.25)
    assert stats["colorfulness"].item() == pytest.approx(0.3 * 1.25**0.5, abs=1e-3)


def test_pure_blue_and_green_hues():
    assert image_statistics(solid(0, 0, 1), ("hue",))["hue"].item() == pytest.approx(2 / 3, abs=1e-5)
    assert image_statistics(solid(0, 1, 0), ("hue",))["hue"].item() == pytest.approx(1 / 3, abs=1e-5)


def test_gray_image_has_no_saturation_or_colorfulness():
    stats = image_statistics(solid(0.4, 0.4, 0.4))
    assert stats["saturation"].item() == pytest.approx(0.0, abs=1e-6)
    assert stats["colorfulness"].item() == pytest.approx(0.0, abs=1e-6)
    assert stats["value"].item() == pytest.approx(0.4)


def test_hue_is_weighted_by_saturation():
    image = solid(1, 0, 0).clone()  # left half saturated red, right half a pale blue (S = 0.1)
    image[..., 2:] = torch.tensor([0.9, 0.9, 1.0]).view(1, 3, 1, 1)
    hue = image_statistics(image, ("hue",))["hue"].item()
    # mean S·sin θ = 0.5·0.1·sin 240°, mean S·cos θ = 0.5 + 0.5·0.1·cos 240°
    expected = math.atan2(0.05 * math.sin(4 * math.pi / 3), 0.5 + 0.05 * math.cos(4 * math.pi / 3))
    assert hue == pytest.approx(1 + expected / (2 * math.pi), abs=1e-4)  # ≈ 0.9855, not 1/3 (unweighted)


def test_colorfulness_of_a_two_color_image():
    image = solid(1, 0, 0).clone()
    image[..., 2:] = 0.0  # half red, half black: rg ∈ {1, 0}, yb ∈ {0.5, 0}
    expected = (0.25 + 0.0625) ** 0.5 + 0.3 * (0.25 + 0.0625) ** 0.5
    assert image_statistics(image, ("colorfulness",))["colorfulness"].item() == pytest.approx(expected, abs=1e-3)


def test_only_requested_statistics_and_unknown_names():
    assert set(image_statistics(solid(1, 0, 0), ("red", "hue"))) == {"red", "hue"}
    with pytest.raises(ValueError, match="sharpness"):
        image_statistics(solid(1, 0, 0), ("sharpness",))


def test_per_image_shapes():
    stats = image_statistics(torch.rand(5, 3, 4, 4))
    assert all(value.shape == (5,) for value in stats.values())


def test_hue_distance_is_the_shortest_arc():
    assert distance("hue", 0.95, 0.05).item() == pytest.approx(0.1)
    assert distance("hue", 0.05, 0.95).item() == pytest.approx(0.1)
    assert distance("hue", 0.0, 0.5).item() == pytest.approx(0.5)
    assert distance("saturation", 0.95, 0.05).item() == pytest.approx(0.9)
    achieved = torch.tensor([0.1, 0.7, 0.99])
    assert torch.allclose(distance("hue", achieved, 0.2), torch.tensor([0.1, 0.5, 0.21]))


def test_batch_mean_of_hue_is_circular():
    mean = batch_mean("hue", torch.tensor([0.95, 0.05])).item()
    assert distance("hue", mean, 0.0).item() < 1e-5
    assert 0.0 <= mean < 1.0
    assert batch_mean("hue", torch.tensor([0.2, 0.4])).item() == pytest.approx(0.3, abs=1e-5)
    assert batch_mean("saturation", torch.tensor([0.95, 0.05])).item() == pytest.approx(0.5)


def test_gradients_are_finite_on_gray_and_black_images():
    images = torch.cat([solid(0.5, 0.5, 0.5), solid(0, 0, 0)]).clone().requires_grad_(True)
    stats = image_statistics(images)
    total = sum(batch_mean(name, value) for name, value in stats.items())
    total.backward()
    assert torch.isfinite(images.grad).all()


def test_statistics_are_differentiable_through_lab():
    lab = torch.zeros(1, 3, 4, 4)
    lab[:, 1] = 0.3
    lab.requires_grad_(True)
    saturation = image_statistics(lab_normalized_to_rgb(lab), ("saturation",))["saturation"].mean()
    saturation.backward()
    assert lab.grad[:, 1].abs().sum().item() > 0


def test_saturation_from_linear_rgb_is_the_statistic_of_the_clipped_image():
    """Lab well outside the gamut too (ab up to ±1.5), black and white L included."""
    generator = torch.Generator().manual_seed(0)
    lab = torch.cat([torch.rand(4, 1, 8, 8, generator=generator) * 2 - 1,
                     (torch.rand(4, 2, 8, 8, generator=generator) - 0.5) * 3], 1)
    lab[0, 0], lab[1, 1:] = -1.0, 0.0
    linear = kornia.color.rgb_to_linear_rgb(unclipped_rgb(lab))
    expected = image_statistics(lab_normalized_to_rgb(lab), ("saturation",))["saturation"]
    torch.testing.assert_close(saturation_from_linear(linear), expected, atol=1e-5, rtol=0)
