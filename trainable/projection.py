"""`model.output=projected`: the generator's last layer moves its ab onto the asked targets.

The move is `trainable.adjust.adjust_to_targets`, onto each image's requested targets for a
conditioned generator (read back from its condition vector c) and onto the fixed targets
otherwise. A statistic that is free for an image (absent from c) is not projected: its target is
the output's own value, which the adjustment leaves as it is. Training (D sees the projected fakes),
validation, export, colorize and serving all call the generator, so all of them see the projection.

The forward is the adjustment exactly. The backward holds the move fixed as a per-pixel similarity:
each pixel's adjusted ab equals z·ab for one complex number z (a scale and a rotation, which is
what the saturation and hue adjustments are), and the gradient flows through z·ab with z constant.
Where ab is about 0 (no direction to scale) the gradient passes straight through.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from trainable.adjust import adjust_to_targets
from trainable.color import image_statistics, lab_normalized_to_rgb
from trainable.condition import SLOTS
from trainable.config import CONTROL_NAMES, LossConfig

HALF = (torch.float16, torch.bfloat16)
NEAR_GRAY = 1e-8        # |ab|² below this: no direction, the gradient passes straight through


def requested_targets(condition: torch.Tensor, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (B, S), present (B, S)) of `names` read back from c (trainable.condition's layout)."""
    values, present = [], []
    offset = 0
    for name in CONTROL_NAMES:
        width = SLOTS[name]
        if name in names:
            part = condition[:, offset:offset + width].float()
            if name == "hue":
                turns = torch.atan2(part[:, 1], part[:, 0]) / (2 * math.pi) % 1.0
                values.append(torch.where(turns >= 1.0, turns - 1.0, turns))
            else:
                values.append((part[:, 0] + 1) / 2)
            present.append(part[:, -1])
        offset += width
    order = [n for n in CONTROL_NAMES if n in names]
    index = [order.index(n) for n in names]
    return torch.stack(values, 1)[:, index], torch.stack(present, 1)[:, index]


def similarity_through(ab: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """`moved` (detached) as z·ab per pixel with z held constant, so gradients reach ab."""
    a, b = ab[:, :1], ab[:, 1:]
    ma, mb = moved[:, :1], moved[:, 1:]
    norm = (a * a + b * b).detach()
    safe = norm.clamp_min(NEAR_GRAY)
    z_re = ((ma * a + mb * b) / safe).detach()
    z_im = ((mb * a - ma * b) / safe).detach()
    through = torch.cat([z_re * a - z_im * b, z_im * a + z_re * b], 1)
    straight = moved + (ab - ab.detach())
    return torch.where(norm > NEAR_GRAY, through, straight)


class Projection(nn.Module):
    """The projected generator's last layer: (L, ab, c) → ab on the asked targets. No parameters;
    the fixed targets are a buffer (saved with the weights)."""

    def __init__(self, loss_cfg: LossConfig):
        super().__init__()
        controlled = loss_cfg.controlled()
        self.fixed = tuple(controlled)
        # a buffer, not Python floats: packed trials (trainable.packed) stack it, each its own targets
        self.register_buffer("fixed_targets", torch.tensor([c.target for c in controlled.values()]))
        self.conditioned = tuple(loss_cfg.conditioned())

    def targets(self, lab: torch.Tensor, condition: torch.Tensor | None) -> dict[str, torch.Tensor]:
        batch = lab.shape[0]
        fixed = self.fixed_targets.to(lab.dtype)
        targets = {name: fixed[i].expand(batch) for i, name in enumerate(self.fixed)}
        if condition is None or not self.conditioned:
            return targets
        values, present = requested_targets(condition, self.conditioned)
        own = image_statistics(lab_normalized_to_rgb(lab), self.conditioned)
        for i, name in enumerate(self.conditioned):
            targets[name] = torch.where(present[:, i] > 0, values[:, i], own[name])
        return targets

    def forward(self, lightness: torch.Tensor, ab: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(lightness.device.type, enabled=False):     # the adjustment needs fp32
            ab = ab.float() if ab.dtype in HALF else ab
            lab = torch.cat([lightness.to(ab.dtype), ab], 1)
            targets = self.targets(lab.detach(), condition)
            if not targets:
                return ab
            moved = adjust_to_targets(lab, targets)[:, 1:]
            return similarity_through(ab, moved)
