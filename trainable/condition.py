"""Per-image targets of a conditioned generator: the condition vector, drawing targets, the loss.

The condition vector c has a fixed layout over CONTROL_NAMES, whatever a model is conditioned on:
per statistic its target (as 2σ − 1, centred like the hue's cos and sin of the angle, so 0.99 and
0.01 turns are neighbours) and a presence bit; an absent statistic is all zeros, left free.

While training, each image gets targets drawn on the device from uniforms drawn per epoch on the
host (`condition_noise`), so the step never waits for the host and a resumed run draws the same:
a share `own_fraction` of the images is conditioned on its own ground-truth statistics, the rest on
targets uniform in each range (hue circular), and each present statistic is hidden with probability
`drop` (Zhang et al. 2017 hide their global hints at random for the same reason).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from trainable.color import batch_mean, distance, image_statistics, lab_normalized_to_rgb
from trainable.config import CONTROL_NAMES, LossConfig

# Hue takes three slots (cos, sin, presence), every other statistic two (value, presence).
SLOTS = {name: 3 if name == "hue" else 2 for name in CONTROL_NAMES}
CONDITION_SIZE = sum(SLOTS.values())
HUE_GRID = (0.0, 0.25, 0.6, 0.85)    # the evaluation grid of a full-circle hue range
GRID_POINTS = 5


@dataclass(frozen=True)
class Targets:
    """Per-image targets (B, S) in the order of `names`, present (B, S) as 0/1 and own (B,) as 0/1.

    own marks the images conditioned on their own statistics (where the ground truth agrees)."""
    names: tuple[str, ...]
    values: torch.Tensor
    present: torch.Tensor
    own: torch.Tensor


def condition_vector(targets: Targets) -> torch.Tensor:
    """Targets → c (B, CONDITION_SIZE) in the fixed layout; statistics not in targets are absent."""
    batch = targets.values.shape[0]
    parts = []
    for name in CONTROL_NAMES:
        if name not in targets.names:
            parts.append(targets.values.new_zeros(batch, SLOTS[name]))
            continue
        index = targets.names.index(name)
        value, present = targets.values[:, index], targets.present[:, index]
        if name == "hue":
            angle = value * (2 * math.pi)
            parts.append(torch.stack([torch.cos(angle) * present, torch.sin(angle) * present, present], 1))
        else:
            parts.append(torch.stack([(2 * value - 1) * present, present], 1))
    return torch.cat(parts, 1)


def fixed_targets(values: Mapping[str, float | torch.Tensor], batch: int,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Targets:
    """The same targets for every image of a batch; a value of None means free (absent)."""
    names = tuple(values)
    columns = [torch.full((batch,), 0.0 if v is None else float(v), device=device, dtype=dtype)
               for v in values.values()]
    present = [torch.full((batch,), 0.0 if v is None else 1.0, device=device, dtype=dtype)
               for v in values.values()]
    empty = torch.zeros(batch, 0, device=device, dtype=dtype)
    return Targets(names, torch.stack(columns, 1) if names else empty,
                   torch.stack(present, 1) if names else empty, torch.ones(batch, device=device, dtype=dtype))


def own_targets(real_rgb: torch.Tensor, names: tuple[str, ...]) -> Targets:
    """Every image conditioned on its own statistics, all present (the faithful mode)."""
    stats = image_statistics(real_rgb, names)
    values = torch.stack([stats[n] for n in names], 1)
    ones = torch.ones_like(values)
    return Targets(names, values, ones, ones[:, 0] if names else real_rgb.new_ones(real_rgb.shape[0]))


def noise_width(loss_cfg: LossConfig) -> int:
    """Uniforms per image: one for own-or-drawn, then per conditioned statistic one for drop, one for value."""
    return 1 + 2 * len(loss_cfg.conditioned())


def condition_noise(steps: int, batch: int, loss_cfg: LossConfig, rng: torch.Generator) -> torch.Tensor | None:
    """(steps, batch, noise_width) uniforms for an epoch, drawn on the host from the trial's generator
    (None for an unconditioned config, which then draws nothing and keeps its data order)."""
    if not loss_cfg.conditioned():
        return None
    return torch.rand(steps, batch, noise_width(loss_cfg), generator=rng)


def range_tensors(loss_cfg: LossConfig, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(low (S,), high (S,), weight (S,)) of the conditioned statistics: per-trial numbers a packed
    step can stack (trials in a pack may differ in ranges and λ, not in which statistics)."""
    controls = list(loss_cfg.conditioned().values())
    columns = ([c.range[0] for c in controls], [c.range[1] for c in controls], [c.weight for c in controls])
    return tuple(torch.tensor(column, dtype=torch.float32, device=device) for column in columns)


def draw_targets(noise: torch.Tensor, real_stats: torch.Tensor, names: tuple[str, ...], low: torch.Tensor,
                 high: torch.Tensor, own_fraction: float, drop: float) -> Targets:
    """Per-image targets from one step's uniforms (B, noise_width) and the batch's own statistics
    (B, S), all on the device: own images take their statistics, the rest uniform in [low, high]
    (hue wrapped to [0, 1)); each statistic present unless its drop uniform falls below `drop`."""
    own = (noise[:, 0] < own_fraction).to(real_stats.dtype)
    drawn = low + noise[:, 2::2] * (high - low)
    # column by column: no tensor made from host data inside a step that a CUDA graph may capture
    drawn = torch.stack([drawn[:, i] % 1.0 if n == "hue" else drawn[:, i] for i, n in enumerate(names)], 1)
    values = torch.where(own[:, None] > 0, real_stats, drawn.to(real_stats.dtype))
    present = (noise[:, 1::2] >= drop).to(real_stats.dtype)
    return Targets(names, values, present, own)


def per_image_control_loss(fake_rgb: torch.Tensor, targets: Targets, weights: torch.Tensor,
                           gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Σ_p λ_p · mean over images where p is present of d_p(p(fake_i), σ_i) (hue: shortest arc).

    Returns {"loss_control": scalar, "control_error_<p>": that mean, detached}."""
    stats = image_statistics(fake_rgb, targets.names)
    total = fake_rgb.new_zeros(())
    terms = {}
    for index, name in enumerate(targets.names):
        present = targets.present[:, index]
        gaps = distance(name, stats[name], targets.values[:, index])
        if gather is not None:                   # one rank of several: the global batch's ratio
            gaps, present = gather(gaps), gather(present)
        error = (gaps * present).sum() / present.sum().clamp_min(1)
        total = total + weights[index] * error
        terms[f"control_error_{name}"] = error.detach()
    return {"loss_control": total, **terms}


class Conditioning:
    """One trainer's conditioned statistics with its per-trial numbers on the device, and the two
    things a training step asks of them: the batch's targets, and the generator's conditioned terms."""

    def __init__(self, loss_cfg: LossConfig, device: torch.device | str):
        self.names = tuple(loss_cfg.conditioned())
        self.low, self.high, self.weights = range_tensors(loss_cfg, device)
        self.own_fraction, self.drop = loss_cfg.condition.own_fraction, loss_cfg.condition.drop

    def draw(self, real_lab: torch.Tensor, noise: torch.Tensor) -> tuple[Targets, Targets]:
        """(requested targets, each image's own statistics with the same presence) for a batch of
        normalized Lab and its (B, noise_width) uniforms."""
        real_rgb = lab_normalized_to_rgb(real_lab.float())
        stats = image_statistics(real_rgb, self.names)
        real = torch.stack([stats[n] for n in self.names], 1)
        targets = draw_targets(noise, real, self.names, self.low, self.high, self.own_fraction, self.drop)
        return targets, Targets(self.names, real, targets.present, torch.ones_like(targets.own))

    def generator_terms(self, fake_rgb: torch.Tensor, fake_ab: torch.Tensor, reference_ab: torch.Tensor,
                        targets: Targets, l1_everywhere: bool,
                        gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The per-image control loss and the L1 term: over the own-statistics images (where the
        ground truth agrees with the target), or over every image when `reference_ab` is the
        ground truth adjusted to each image's targets (`l1_everywhere`)."""
        per_image = (fake_ab - reference_ab).abs().mean(dim=(1, 2, 3))
        share = torch.ones_like(targets.own) if l1_everywhere else targets.own
        if gather is not None:
            per_image, share = gather(per_image), gather(share)
        l1 = (per_image * share).sum() / share.sum().clamp_min(1)
        return {"loss_l1": l1, **per_image_control_loss(fake_rgb, targets, self.weights, gather)}


def control_grid(name: str, bounds: tuple[float, float]) -> tuple[float, ...]:
    """The evaluation targets of a conditioned statistic: GRID_POINTS across its range; a full hue
    circle gets HUE_GRID (0 and 1 are the same hue)."""
    low, high = bounds
    if name == "hue" and high - low >= 1:
        return HUE_GRID
    return tuple(low + (high - low) * i / (GRID_POINTS - 1) for i in range(GRID_POINTS))


@torch.no_grad()
def grid_statistics(colorize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], images: torch.Tensor,
                    name: str, grid: Sequence[float], batch: int) -> torch.Tensor:
    """(len(grid), N) statistic `name` of `images` (normalized Lab) colorized with only `name` present
    at each grid target; colorize(L, c) returns normalized Lab."""
    rows = []
    for target in grid:
        parts = []
        for start in range(0, len(images), batch):
            gray = images[start:start + batch, :1]
            condition = condition_vector(fixed_targets({name: target}, len(gray), gray.device))
            fake = colorize(gray, condition)
            parts.append(image_statistics(lab_normalized_to_rgb(fake.float()), (name,))[name])
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def grid_metrics(name: str, grid: Sequence[float], stats: torch.Tensor) -> dict[str, float]:
    """val_control_error_<p> (mean per-image distance), _batch (distance of the batch mean, averaged
    over the grid) and val_control_monotonic_<p>: the share of images whose statistic rises at every
    grid step (hue: whose output at each target is the nearest of its outputs to that target)."""
    targets = torch.tensor(grid, dtype=stats.dtype, device=stats.device)
    per_image = distance(name, stats, targets[:, None])
    batch = torch.stack([distance(name, batch_mean(name, row), t) for row, t in zip(stats, targets)])
    if name == "hue":
        nearest = distance(name, stats[None], targets[:, None, None]).argmin(1)     # (target, image)
        ordered = (nearest == torch.arange(len(grid), device=stats.device)[:, None]).all(0)
    else:
        ordered = (stats[1:] > stats[:-1]).all(0)
    return {f"val_control_error_{name}": float(per_image.mean()), f"val_control_error_{name}_batch": float(batch.mean()),
            f"val_control_monotonic_{name}": float(ordered.float().mean())}


def faithful_condition(real_lab: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """c of each image conditioned on its own statistics, all present (the faithful mode)."""
    return condition_vector(own_targets(lab_normalized_to_rgb(real_lab.float()), names))


def conditioned_metrics(colorize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], images: torch.Tensor,
                        loss_cfg: LossConfig, batch: int, fixed: Mapping[str, float]) -> dict[str, float]:
    """The grid metrics of every conditioned statistic, and val_control_error as the mean of their
    per-image errors and the `fixed` controlled statistics' errors ({name: error})."""
    out: dict[str, float] = {}
    for name, control in loss_cfg.conditioned().items():
        grid = control_grid(name, control.range)
        out.update(grid_metrics(name, grid, grid_statistics(colorize, images, name, grid, batch)))
    errors = [out[f"val_control_error_{n}"] for n in loss_cfg.conditioned()] + list(fixed.values())
    out["val_control_error"] = sum(errors) / len(errors)
    return out
