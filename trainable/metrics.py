"""Validation metrics of a colorization: pixel accuracy, PSNR, realism and achieved statistics.

Everything here takes normalized-Lab tensors (see trainable.color) and returns numbers; the trainer
accumulates per-batch pieces with `MetricAccumulator` and reads them once at the end.

Realism (`val_realism_abhist`, lower is better): the Jensen–Shannon divergence, in bits (0..1),
between the 2-D histograms of (a, b) over all pixels of the colorized and of the real images,
with AB_BINS × AB_BINS bins spanning a, b ∈ [−110, 110]. 0 = identical color distributions,
1 = disjoint. A gray output against colored photos scores high.

Hue realism (`val_hue_js`, lower is better): the same divergence between the HSV-saturation-weighted
histograms of HSV hue (HUE_BINS bins) over all pixels; it sees a one-hue collapse (everything cyan)
that the ab histogram blurs. An all-gray colorization has no hue mass and scores 0.5.
"""
from __future__ import annotations

from collections.abc import Mapping

import kornia.color
import torch

from trainable.color import AB_SCALE, CONTROL_NAMES, batch_mean, distance, image_statistics
from trainable.config import ControlConfig
from trainable.names import PIXEL_ACC_THRESHOLDS

PIXEL_ACC_UNIT = 2.2        # Nazeri et al.: |Δa|, |Δb| ≤ 2.2·t in Lab units counts as correct
AB_BINS = 32
HUE_BINS = 36


def ab_histogram(ab: torch.Tensor) -> torch.Tensor:
    """Counts of normalized (a, b) pairs, (N,2,H,W) → (AB_BINS·AB_BINS,), bins over [−1, 1]²."""
    bins = ((ab.float().clamp(-1, 1) + 1) / 2 * AB_BINS).long().clamp_(max=AB_BINS - 1)
    flat = (bins[:, 0] * AB_BINS + bins[:, 1]).flatten()
    return torch.bincount(flat, minlength=AB_BINS * AB_BINS).float()


def hue_histogram(rgb: torch.Tensor) -> torch.Tensor:
    """Saturation-weighted counts of HSV hue, (N,3,H,W) RGB in [0,1] → (HUE_BINS,)."""
    hsv = kornia.color.rgb_to_hsv(rgb.float())
    bins = (hsv[:, 0] / (2 * torch.pi) * HUE_BINS).long().clamp_(0, HUE_BINS - 1)
    return torch.bincount(bins.flatten(), weights=hsv[:, 1].flatten(), minlength=HUE_BINS).float()


def jensen_shannon(p_counts: torch.Tensor, q_counts: torch.Tensor) -> float:
    """JS divergence in bits between two histograms given as counts."""
    p = p_counts / p_counts.sum().clamp_min(1)
    q = q_counts / q_counts.sum().clamp_min(1)
    m = (p + q) / 2

    def kl(x: torch.Tensor) -> torch.Tensor:
        mask = x > 0
        return (x[mask] * torch.log2(x[mask] / m[mask])).sum()

    return float(((kl(p) + kl(q)) / 2).clamp(0, 1))


class MetricAccumulator:
    """Sums per-batch metric pieces on the device; `finalize` reads them back once."""

    def __init__(self, controlled: Mapping[str, ControlConfig]):
        self.controlled = dict(controlled)
        self.sums: dict[str, torch.Tensor] = {}
        self.per_image: dict[str, list[torch.Tensor]] = {name: [] for name in CONTROL_NAMES}
        self.real_colorfulness: list[torch.Tensor] = []
        self.count = 0

    def _add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def update(self, fake_lab: torch.Tensor, real_lab: torch.Tensor,
               fake_rgb: torch.Tensor, real_rgb: torch.Tensor) -> None:
        fake_ab, real_ab = fake_lab[:, 1:].float(), real_lab[:, 1:].float()
        error = (fake_ab - real_ab).abs() * AB_SCALE
        worst = error.amax(dim=1)                         # both a and b must be within the threshold
        for t in PIXEL_ACC_THRESHOLDS:
            self._add(f"acc_{t}", (worst <= PIXEL_ACC_UNIT * t).float().mean(dim=(1, 2)).sum())
        mse = (fake_rgb - real_rgb).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        self._add("psnr", (10 * torch.log10(1 / mse)).sum())
        self._add("l1", (fake_ab - real_ab).abs().mean(dim=(1, 2, 3)).sum())
        self._add("hist_fake", ab_histogram(fake_ab))
        self._add("hist_real", ab_histogram(real_ab))
        self._add("hue_fake", hue_histogram(fake_rgb))
        self._add("hue_real", hue_histogram(real_rgb))
        for name, values in image_statistics(fake_rgb).items():
            self.per_image[name].append(values.float())
        self.real_colorfulness.append(image_statistics(real_rgb, ("colorfulness",))["colorfulness"])
        self.count += fake_lab.shape[0]

    def finalize(self) -> dict[str, float]:
        n = max(self.count, 1)
        out: dict[str, float] = {}
        achieved = {name: batch_mean(name, torch.cat(v)) for name, v in self.per_image.items()}
        for name, value in achieved.items():
            out[f"val_{name}"] = float(value)
        errors = [float(distance(name, achieved[name], c.target)) for name, c in self.controlled.items()]
        for name, error in zip(self.controlled, errors):
            out[f"val_control_error_{name}"] = error
        out["val_control_error"] = sum(errors) / len(errors) if errors else 0.0
        for t in PIXEL_ACC_THRESHOLDS:
            out[f"val_pixel_acc_{t}"] = float(self.sums[f"acc_{t}"]) / n
        out["val_psnr"] = float(self.sums["psnr"]) / n
        out["val_l1"] = float(self.sums["l1"]) / n
        out["val_realism_abhist"] = jensen_shannon(self.sums["hist_fake"], self.sums["hist_real"])
        out["val_hue_js"] = jensen_shannon(self.sums["hue_fake"], self.sums["hue_real"])
        real_colorfulness = float(torch.cat(self.real_colorfulness).mean())
        out["val_colorfulness_ratio"] = out["val_colorfulness"] / max(real_colorfulness, 1e-8)
        return out
