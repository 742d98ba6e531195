"""Realism against a natural reference: the reference and its judged range, the artefact metric and
KID on known image sets, and the metrics in a training folder."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_config
from trainable.color import image_statistics, lab_normalized_to_rgb, rgb_to_lab_normalized
from trainable.config import ConfigError
from trainable.loop import read_metrics, run_training
from trainable.metrics import MetricAccumulator
from trainable.realism import (NaturalReference, artefact_distance, kid_unbiased, realism_points,
                               reference_shortfall)

STRENGTHS = (0.0, 0.04, 0.08, 0.16)        # normalized ab: ×110 in Lab units
KINDS = ("checkerboard", "dots", "blotches", "cast")


def smooth_set(count: int, seed: int, size: int = 32) -> torch.Tensor:
    """Normalized Lab images with smooth chroma: random 4×4 colors upsampled bicubically."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 0.6 + 0.2
    return rgb_to_lab_normalized(F.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1))


def pattern(kind: str, count: int, size: int = 32) -> torch.Tensor:
    """(count, 2, size, size) unit-strength chroma artefact of one kind, added to ab."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    opposite = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)          # a toward red, b toward blue
    if kind == "checkerboard":
        return ((x + y) % 2 * 2 - 1).float().expand(count, 2, size, size) * opposite
    if kind == "dots":                                               # one dot every 4 pixels
        return ((x % 4 == 0) & (y % 4 == 0)).float().expand(count, 2, size, size) * opposite * 2
    if kind == "blotches":                                           # 4×4-pixel chroma noise
        noise = torch.randn(count, 2, size // 4, size // 4, generator=torch.Generator().manual_seed(7))
        return F.interpolate(noise, size=(size, size), mode="nearest")
    return torch.tensor([math.cos(1.0), math.sin(1.0)]).view(1, 2, 1, 1).expand(count, 2, size, size)


def with_artefact(lab: torch.Tensor, kind: str, strength: float) -> torch.Tensor:
    return torch.cat([lab[:, :1], lab[:, 1:] + strength * pattern(kind, len(lab), lab.shape[-1])], 1)


def histogram_distances(fake: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    accumulator = MetricAccumulator({})
    accumulator.update(fake, real, lab_normalized_to_rgb(fake), lab_normalized_to_rgb(real))
    out = accumulator.finalize()
    return out["val_realism_abhist"], out["val_hue_js"]


def rising(values: list[float]) -> bool:
    return all(later > earlier for earlier, later in zip(values, values[1:]))


@pytest.mark.parametrize("kind", KINDS)
def test_artefact_rises_with_each_artefact_strength(kind):
    reference, base = smooth_set(64, 0), smooth_set(64, 1)
    scores = [artefact_distance(with_artefact(base, kind, s)[:, 1:], reference[:, 1:]) for s in STRENGTHS]
    assert rising(scores), scores
    assert scores[-1] > 4 * scores[0]


def test_histogram_distances_barely_see_a_checkerboard_the_artefact_metric_sees():
    reference, base = smooth_set(64, 0), smooth_set(64, 1)
    clean_hist, clean_hue = histogram_distances(base, reference)
    clean_artefact = artefact_distance(base[:, 1:], reference[:, 1:])
    for strength in (0.02, 0.05):          # ±2.2 and ±5.5 Lab units on every pixel
        checkered = with_artefact(base, "checkerboard", strength)
        hist, hue = histogram_distances(checkered, reference)
        assert abs(hist - clean_hist) < 0.01 and abs(hue - clean_hue) < 0.01, (strength, hist, hue)
        assert artefact_distance(checkered[:, 1:], reference[:, 1:]) > clean_artefact + 0.15   # 15× that bound


def test_artefact_ignores_desaturation_is_zero_against_itself_and_finite_for_gray():
    reference = smooth_set(16, 0)
    assert artefact_distance(reference[:, 1:], reference[:, 1:]) == 0.0
    assert artefact_distance(reference[:, 1:] * 0.5, reference[:, 1:]) == pytest.approx(0.0, abs=1e-5)
    gray = artefact_distance(torch.zeros_like(reference[:, 1:]), reference[:, 1:])   # no chroma spectrum
    assert 5 < gray < 14


@pytest.mark.slow
def test_kid_rises_with_each_artefact_strength():
    from trainable.fid import cached_network
    network = cached_network("cpu")
    reference, base = smooth_set(24, 0), smooth_set(24, 1)

    def features(lab):
        return network.pooled(lab_normalized_to_rgb(lab), 128)

    reference_features = features(reference)
    for kind in KINDS:
        scores = [kid_unbiased(features(with_artefact(base, kind, s)), reference_features) for s in STRENGTHS]
        assert rising(scores), (kind, scores)


def test_kid_is_symmetric_near_zero_for_one_distribution_and_positive_for_two():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 16, generator=generator), torch.randn(40, 16, generator=generator)
    shifted = y + 1.0
    assert kid_unbiased(x, shifted) == pytest.approx(kid_unbiased(shifted, x))
    assert abs(kid_unbiased(x, y)) < 0.1 * kid_unbiased(x, shifted)


def saturation_ladder(saturations: list[float]) -> torch.Tensor:
    """One flat image per saturation: RGB v·(1, 1 − s, 1 − s) has HSV saturation s."""
    s = torch.tensor(saturations).view(-1, 1, 1, 1)
    rgb = torch.cat([torch.ones_like(s), 1 - s, 1 - s], 1) * 0.8
    return rgb_to_lab_normalized(rgb.expand(-1, 3, 8, 8).contiguous())


def test_natural_reference_takes_the_nearest_images_within_the_band():
    saturations = [0.1 + 0.01 * i for i in range(41)]                       # 0.10 .. 0.50
    reference = NaturalReference(saturation_ladder(saturations))
    assert reference.stats["saturation"][:3].tolist() == pytest.approx(saturations[:3], abs=1e-3)
    chosen = reference.nearest({"saturation": 0.3}, 5)
    assert sorted(round(saturations[i], 2) for i in chosen) == [0.28, 0.29, 0.3, 0.31, 0.32]
    assert reference.nearest({"saturation": 0.9}, 5) is None                 # no natural reference
    low, high = reference.judged_range("saturation", 5)
    assert 0.08 <= low <= 0.1 and 0.5 <= high <= 0.52
    assert reference.judged_range("saturation", 50) is None


def test_realism_points_are_the_fixed_targets_or_the_conditioned_grid():
    fixed = tiny_config("loss.saturation.weight=5", "loss.saturation.target=0.3").loss
    assert realism_points(fixed) == [{"saturation": 0.3}]
    assert realism_points(tiny_config().loss) == [{}]
    conditioned = tiny_config("model.conditioning=film", "loss.saturation.weight=5",
                              "loss.saturation.range=[0.1,0.5]").loss
    grid = [p["saturation"] for p in realism_points(conditioned)]
    assert grid == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_shortfall_names_the_key_the_target_and_the_judged_range():
    reference = NaturalReference(saturation_ladder([0.1 + 0.01 * i for i in range(41)]))
    ok = tiny_config("loss.saturation.weight=5", "loss.saturation.target=0.3", "train.realism_images=5")
    assert reference_shortfall(ok, reference) is None
    far = tiny_config("loss.saturation.weight=5", "loss.saturation.target=0.9", "train.realism_images=5")
    line = reference_shortfall(far, reference)
    assert line.startswith("train.realism_images: saturation=0.9 has 0 validation images") and "\n" not in line
    assert "saturation judged in (0.1" in line


def test_too_few_realism_images_for_an_unbiased_kid_are_refused():
    with pytest.raises(ConfigError, match=r"^train.realism_images: must be >= 2"):
        tiny_config("train.realism_images=1")


def test_reference_statistics_match_the_images():
    images = smooth_set(8, 3)
    reference = NaturalReference(images)
    expected = image_statistics(lab_normalized_to_rgb(images), ("hue",))["hue"]
    assert torch.equal(reference.stats["hue"], expected)


@pytest.mark.slow
def test_a_short_run_carries_kid_every_k_epochs_and_fresh_at_the_last(tmp_path):
    cfg = tiny_config("train.epochs=3", "train.kid_every=5", "train.realism_images=4", "train.kid_input_size=75")
    run_training(cfg, tmp_path, progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    kids = [row["val_kid_controlled"] for row in rows]
    assert [row["epoch"] for row in rows] == [1, 2, 3] and all(math.isfinite(k) for k in kids)
    assert kids[1] == kids[0]              # epoch 2: not a KID epoch, the last value carried
    assert kids[2] != kids[1]              # epoch 3, the last: evaluated again
    assert all(row["val_realism_judged"] == 1.0 and row["val_artefact"] >= 0 for row in rows)
