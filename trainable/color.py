"""All color math of colorsweep: normalized Lab and the per-image RGB statistics the controls use.

Normalized Lab is (L/50 − 1, a/110, b/110), so L and roughly ab lie in [−1, 1] (Nazeri et al. 2018).
Everything is differentiable and built on kornia, so the control losses can push gradients through
Lab → RGB → statistic. Hue is an angle: it is reported in turns in [0, 1), averaged on the circle and
compared by the shortest arc.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import kornia.color
import numpy as np
import torch

from trainable.config import CONTROL_NAMES

L_SCALE = 50.0
AB_SCALE = 110.0
EPS = 1e-8  # keeps sqrt and atan2 gradients finite on gray images


def l_to_normalized(lightness: torch.Tensor) -> torch.Tensor:
    """L in [0, 100] → [−1, 1]."""
    return lightness / L_SCALE - 1.0


def l_from_normalized(lightness: torch.Tensor) -> torch.Tensor:
    """Normalized L in [−1, 1] → L in [0, 100]."""
    return (lightness + 1.0) * L_SCALE


def rgb_to_lab_normalized(rgb: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) RGB in [0,1] → (N,3,H,W) normalized Lab (L/50 − 1, a/110, b/110)."""
    lab = kornia.color.rgb_to_lab(rgb)
    lightness, ab = lab[:, :1], lab[:, 1:]
    return torch.cat([l_to_normalized(lightness), ab / AB_SCALE], dim=1)


def lab_normalized_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) normalized Lab → (N,3,H,W) RGB clamped to [0,1]."""
    lightness, ab = lab[:, :1], lab[:, 1:]
    lab_raw = torch.cat([l_from_normalized(lightness), ab * AB_SCALE], dim=1)
    return kornia.color.lab_to_rgb(lab_raw, clip=True)


def lab_normalized_to_uint8(lab: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) normalized Lab → (N,H,W,3) uint8 RGB on the CPU, the form images are saved in."""
    rgb = lab_normalized_to_rgb(lab.float()).clamp(0, 1)
    return (rgb * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt that is exactly 0 at 0 and has a bounded gradient there."""
    return torch.sqrt(x + EPS) - math.sqrt(EPS)


def _angle_in_turns(sin_part: torch.Tensor, cos_part: torch.Tensor) -> torch.Tensor:
    """atan2(sin, cos) in turns [0, 1); 0 with zero gradient where both parts vanish."""
    degenerate = (sin_part * sin_part + cos_part * cos_part) < EPS * EPS
    # atan2's gradient (−y, x)/(x² + y²) is 0/0 at the origin; evaluate it at (0, 1) there instead.
    safe_sin = torch.where(degenerate, torch.zeros_like(sin_part), sin_part)
    safe_cos = torch.where(degenerate, torch.ones_like(cos_part), cos_part)
    turns = torch.atan2(safe_sin, safe_cos) / (2.0 * math.pi) % 1.0
    # A tiny negative angle rounds to exactly 1.0 in float32; fold it back to 0.
    return torch.where(turns >= 1.0, turns - 1.0, turns)


def _hue(hsv: torch.Tensor) -> torch.Tensor:
    """Saturation-weighted circular mean hue per image, in turns."""
    angle, saturation = hsv[:, 0], hsv[:, 1]
    sin_part = (saturation * torch.sin(angle)).mean(dim=(1, 2))
    cos_part = (saturation * torch.cos(angle)).mean(dim=(1, 2))
    return _angle_in_turns(sin_part, cos_part)


def _colorfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler & Süsstrunk (2003) colorfulness on 0..1 RGB, per image.

    rg = R − G, yb = (R + G)/2 − B; M = sqrt(σ_rg² + σ_yb²) + 0.3·sqrt(μ_rg² + μ_yb²).
    """
    red, green, blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    red_green = (red - green).flatten(1)
    yellow_blue = (0.5 * (red + green) - blue).flatten(1)
    spread = red_green.var(dim=1, correction=0) + yellow_blue.var(dim=1, correction=0)
    offset = red_green.mean(dim=1) ** 2 + yellow_blue.mean(dim=1) ** 2
    return _safe_sqrt(spread) + 0.3 * _safe_sqrt(offset)


def image_statistics(rgb: torch.Tensor, names: Sequence[str] = CONTROL_NAMES) -> dict[str, torch.Tensor]:
    """Per-image statistics of an (N,3,H,W) RGB batch in [0,1]: {name: Tensor(N)}.

    saturation / value: mean HSV S / V; hue: saturation-weighted circular mean in turns [0, 1);
    red / green / blue: channel means; colorfulness: Hasler–Süsstrunk. Only the names asked for
    are computed.
    """
    unknown = [name for name in names if name not in CONTROL_NAMES]
    if unknown:
        raise ValueError(f"unknown statistic(s) {unknown}; known: {', '.join(CONTROL_NAMES)}")
    needs_hsv = any(name in ("saturation", "value", "hue") for name in names)
    hsv = kornia.color.rgb_to_hsv(rgb) if needs_hsv else None
    stats: dict[str, torch.Tensor] = {}
    for name in names:
        if name == "saturation":
            stats[name] = hsv[:, 1].mean(dim=(1, 2))
        elif name == "value":
            stats[name] = hsv[:, 2].mean(dim=(1, 2))
        elif name == "hue":
            stats[name] = _hue(hsv)
        elif name == "colorfulness":
            stats[name] = _colorfulness(rgb)
        else:
            channel = ("red", "green", "blue").index(name)
            stats[name] = rgb[:, channel].mean(dim=(1, 2))
    return stats


def saturation_from_linear(linear_rgb: torch.Tensor) -> torch.Tensor:
    """(N,) image_statistics' saturation of the image whose unclipped linear RGB is (N,3,H,W): HSV
    S = (max − min) / max of the clipped sRGB. The sRGB curve and the clip are monotonic, so they
    are applied to each pixel's largest and smallest channel only, and no hue is computed: a
    cheaper path for the search that measures saturation many times (trainable.adjust)."""
    def srgb(channel: torch.Tensor) -> torch.Tensor:      # kornia's linear_rgb_to_rgb, then the clip
        curve = 1.055 * torch.pow(channel.clamp(min=0.0031308), 1 / 2.4) - 0.055
        return torch.where(channel > 0.0031308, curve, 12.92 * channel).clamp(0.0, 1.0)
    top, bottom = srgb(linear_rgb.amax(dim=1)), srgb(linear_rgb.amin(dim=1))
    return ((top - bottom) / torch.where(top == 0, torch.ones_like(top), top + EPS)).mean(dim=(1, 2))


def batch_mean(name: str, per_image: torch.Tensor) -> torch.Tensor:
    """Batch mean of one statistic: arithmetic, or the circular mean (turns in, turns out) for hue."""
    if name != "hue":
        return per_image.mean()
    angle = per_image * (2.0 * math.pi)
    return _angle_in_turns(torch.sin(angle).mean(), torch.cos(angle).mean())


def distance(name: str, achieved: torch.Tensor | float, target: torch.Tensor | float) -> torch.Tensor:
    """|achieved − target|; for hue the shortest arc in turns (always ≤ 0.5)."""
    if not isinstance(achieved, torch.Tensor):
        achieved = torch.tensor(achieved, dtype=torch.float64)
    gap = achieved - target
    if name != "hue":
        return gap.abs()
    around = gap % 1.0
    return torch.minimum(around, 1.0 - around)
