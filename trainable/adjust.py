"""Real images moved to meet target statistics: the adjusted ground truth.

`adjust_to_targets(lab, targets)` changes only the ab channels of normalized-Lab images (L is kept
bit for bit) so that each image's statistics, measured with the control terms' own functions
(`trainable.color.image_statistics`), meet its targets while the image changes as little as
possible, and every pixel stays inside the sRGB gamut at its own L:
- saturation: each pixel's chroma scaled by one factor per image, found by a secant search on the exact
  statistic; a pixel whose scaled chroma leaves the gamut stops at the gamut bound;
- hue: ab rotated by the circular difference to the target, re-measured and corrected a few times
  (the saturation-weighted HSV hue is not exactly the Lab hue angle);
- the others (red, green, blue, value, colorfulness): projected gradient steps on |p(y') − σ|, with
  Polyak's step size |p − σ| / |∇p|², starting at y: the first-order smallest move that meets σ.
Unreachable targets end at the gamut bound. Everything is batched, runs where the images are and
never reads a value back to the host, so it can sit inside a training step or a CUDA graph.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import kornia.color
import torch

from trainable.color import (AB_SCALE, distance, image_statistics, l_from_normalized, lab_normalized_to_rgb,
                             saturation_from_linear)
from trainable.condition import Targets
from trainable.config import Config, LossConfig

GAMUT_TOLERANCE = 1e-4        # linear RGB: float error of real pixels, well under an 8-bit step
MAX_CHROMA = 1.5              # normalized ab; no sRGB color has |ab| above ~134 Lab units (1.22)
CHROMA_BISECTIONS = 11        # gamut bound to 1.5 / 2^11 normalized ab (0.08 Lab units)
SCALE_STEPS = 6               # secant steps on the saturation factor, the closed-form first guess included
LOG2_SCALE_RANGE = (-16.0, 6.0)   # chroma factors 2^-16 (gray) … 64 (every pixel at the gamut bound)
HUE_ROUNDS = 8
GRADIENT_STEPS = 12
STEP_RADIUS = 0.05            # normalized ab a pixel may move per gradient step (5.5 Lab units)
GRADIENT_NAMES = ("value", "red", "green", "blue", "colorfulness")
EPS = 1e-12


def unclipped_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Normalized Lab → sRGB without clipping, so out-of-gamut colors show as values outside [0, 1]."""
    raw = torch.cat([l_from_normalized(lab[:, :1]), lab[:, 1:] * AB_SCALE], dim=1)
    return kornia.color.lab_to_rgb(raw, clip=False)


def _linear_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Normalized Lab → linear RGB (D65), kornia's formulas without the sRGB gamma: the gamut test
    needs only the sign of linear RGB and of 1 − it, and the gamma curve is the costly part."""
    fy = (l_from_normalized(lab[:, :1]) + 16.0) / 116.0
    return _linear_rgb_from(fy, lab[:, 1:2], lab[:, 2:3])


def _linear_rgb_from(fy: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) linear RGB from f(Y) = (L + 16)/116 and normalized a, b, each (N,1,H,W)."""
    # D65 white (0.95047, 1, 1.08883) folded in as Python floats: no host-to-device copy in a CUDA graph
    fxyz = torch.cat([fy + a * (AB_SCALE / 500.0), fy, (fy - b * (AB_SCALE / 200.0)).clamp(min=0.0)], 1)
    xyz = torch.where(fxyz > 0.2068966, fxyz * fxyz * fxyz, (fxyz - 4.0 / 29.0) / 7.787)
    return kornia.color.xyz_to_rgb(torch.cat([xyz[:, :1] * 0.95047, xyz[:, 1:2], xyz[:, 2:] * 1.08883], 1))


def _inside(rgb: torch.Tensor) -> torch.Tensor:
    return ((rgb >= -GAMUT_TOLERANCE) & (rgb <= 1 + GAMUT_TOLERANCE)).all(dim=1, keepdim=True)


def _in_gamut(lab: torch.Tensor) -> torch.Tensor:
    """(N,1,H,W) bool: the pixel's linear RGB lies in [0, 1] (within GAMUT_TOLERANCE)."""
    return _inside(_linear_rgb(lab))


def _polar(ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,2,H,W) ab → chroma (N,1,H,W) and unit direction (N,2,H,W); gray pixels point along +a."""
    chroma = ab.norm(dim=1, keepdim=True)
    fallback = torch.zeros_like(ab)
    fallback[:, 0] = 1.0
    direction = torch.where(chroma > EPS, ab / chroma.clamp_min(EPS), fallback)
    return chroma, direction


def max_chroma(lightness: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """(N,1,H,W) the largest chroma along each pixel's ab direction that stays in gamut at its L.

    Bisection per pixel: the sRGB gamut's slice at one L is star-shaped around the gray axis.
    """
    fy = (l_from_normalized(lightness) + 16.0) / 116.0
    cos, sin = direction[:, :1], direction[:, 1:]
    low = torch.zeros_like(lightness)
    high = torch.full_like(lightness, MAX_CHROMA)
    for _ in range(CHROMA_BISECTIONS):
        middle = (low + high) / 2
        inside = _inside(_linear_rgb_from(fy, cos * middle, sin * middle))
        low = torch.where(inside, middle, low)
        high = torch.where(inside, high, middle)
    return low


def project_to_gamut(lab: torch.Tensor) -> torch.Tensor:
    """Pixels outside the gamut pulled radially (same L, same Lab hue) onto its bound."""
    lightness, ab = lab[:, :1], lab[:, 1:]
    chroma, direction = _polar(ab)
    bound = direction * torch.minimum(chroma, max_chroma(lightness, direction))
    return torch.cat([lightness, torch.where(_in_gamut(lab), ab, bound)], dim=1)


def _per_image(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A target as an (N,) tensor on the images' device."""
    if isinstance(value, torch.Tensor):
        return value.to(like.dtype)
    return torch.full((like.shape[0],), float(value), dtype=like.dtype, device=like.device)


def _statistic(lab: torch.Tensor, name: str) -> torch.Tensor:
    return image_statistics(lab_normalized_to_rgb(lab), (name,))[name]


def adjust_saturation(lab: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale each image's chroma by the factor that meets its saturation target: a safeguarded
    secant search in log2 of the factor on the exact statistic (Dekker's method), pixels stopping
    at the gamut bound. Its first point is closed-form, the factor σ / p(image) (HSV saturation
    grows about in proportion to chroma), so a few secant steps suffice; the bracket [1, the range's
    end] keeps it safe, and an image already on target stays as it is."""
    lightness, ab = lab[:, :1], lab[:, 1:]
    chroma, direction = _polar(ab)
    limit = torch.maximum(max_chroma(lightness, direction), chroma)   # real pixels are in gamut
    fy = (l_from_normalized(lightness) + 16.0) / 116.0

    def scaled_ab(log2_factor: torch.Tensor) -> torch.Tensor:
        return direction * torch.minimum(chroma * torch.exp2(log2_factor).view(-1, 1, 1, 1), limit)

    def scaled(log2_factor: torch.Tensor) -> torch.Tensor:
        return torch.cat([lightness, scaled_ab(log2_factor)], dim=1)

    def gap(log2_factor: torch.Tensor) -> torch.Tensor:
        moved = scaled_ab(log2_factor)
        return saturation_from_linear(_linear_rgb_from(fy, moved[:, :1], moved[:, 1:])) - target

    zero = torch.zeros_like(target)
    now = gap(zero)
    raise_it = now < 0
    far = torch.where(raise_it, zero + LOG2_SCALE_RANGE[1], zero + LOG2_SCALE_RANGE[0])
    far_gap = gap(far)
    low, high = torch.where(raise_it, zero, far), torch.where(raise_it, far, zero)
    gap_low, gap_high = torch.where(raise_it, now, far_gap), torch.where(raise_it, far_gap, now)
    reachable = (gap_low <= 0) & (gap_high >= 0)
    previous, previous_gap = zero, now
    guess = torch.log2(target.clamp_min(EPS) / (now + target).clamp_min(EPS))
    for _ in range(SCALE_STEPS):
        inside = (guess > low) & (guess < high)
        guess = torch.where(inside, guess, (low + high) / 2)
        value = gap(guess)
        below = value < 0
        low, gap_low = torch.where(below, guess, low), torch.where(below, value, gap_low)
        high, gap_high = torch.where(below, high, guess), torch.where(below, gap_high, value)
        span = value - previous_gap
        secant = guess - value * (guess - previous) / torch.where(span.abs() > EPS, span, torch.ones_like(span))
        previous, previous_gap = guess, value
        guess = torch.where(span.abs() > EPS, secant, (low + high) / 2)
    best = torch.where(gap_high.abs() < gap_low.abs(), high, low)
    unreachable_end = torch.where(gap_high < 0, high, low)      # whole bracket on one side of σ
    return scaled(torch.where(reachable, best, unreachable_end))


def _rotated(lab: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    angle = (turns * 2 * math.pi).view(-1, 1, 1)
    a, b = lab[:, 1], lab[:, 2]
    ab = torch.stack([a * torch.cos(angle) - b * torch.sin(angle), a * torch.sin(angle) + b * torch.cos(angle)], 1)
    return project_to_gamut(torch.cat([lab[:, :1], ab], dim=1))


def _arc(turns: torch.Tensor) -> torch.Tensor:
    """Signed shortest arc in turns, in [−½, ½)."""
    return (turns + 0.5) % 1.0 - 0.5


def adjust_hue(lab: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rotate ab toward the target hue (turns): secant steps on the rotation angle, because the
    saturation-weighted HSV hue turns faster or slower than the Lab angle depending on the colors."""
    total = torch.zeros_like(target)
    gap = _arc(target - _statistic(lab, "hue"))
    slope = torch.ones_like(target)
    adjusted = lab
    for _ in range(HUE_ROUNDS):
        step = gap / slope
        total = total + step
        adjusted = _rotated(lab, total)
        new_gap = _arc(target - _statistic(adjusted, "hue"))
        measured = (gap - new_gap) / torch.where(step.abs() > 1e-6, step, torch.ones_like(step))
        slope = torch.where(step.abs() > 1e-6, measured.clamp(0.25, 4.0), slope)
        gap = new_gap
    return adjusted


def _residuals(lab: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(N, k) signed p(image) − σ per target, hue by the signed shortest arc."""
    achieved = image_statistics(lab_normalized_to_rgb(lab), tuple(targets))
    gaps = [achieved[n] - t if n != "hue" else _arc(achieved[n] - t) for n, t in targets.items()]
    return torch.stack(gaps, dim=1)


def adjust_by_gradient(lab: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Projected Gauss–Newton steps, L fixed, back in gamut after each: the smallest ab move that
    zeroes the linearized residuals r, δ = −Jᵀ(JJᵀ)⁻¹r per image. For one statistic this is gradient
    descent on |p − σ| with Polyak's step |p − σ| / |∇p|²."""
    lightness, ab = lab[:, :1], lab[:, 1:].detach()
    for _ in range(GRADIENT_STEPS):
        with torch.enable_grad():
            variable = ab.clone().requires_grad_(True)
            residual = _residuals(torch.cat([lightness, variable], dim=1), targets)
            rows = [torch.autograd.grad(residual[:, j].sum(), variable, retain_graph=True)[0].flatten(1)
                    for j in range(residual.shape[1])]
        jacobian = torch.stack(rows, dim=1)                                     # (N, k, 2·H·W)
        gram = jacobian @ jacobian.transpose(1, 2)
        damping = 1e-6 * gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(EPS)  # nearly dependent rows
        gram = gram + damping.view(-1, 1, 1) * torch.eye(gram.shape[1], device=gram.device, dtype=gram.dtype)
        coefficients = torch.linalg.solve_ex(gram, residual.detach().unsqueeze(-1))[0]  # (N, k, 1); no sync
        step = (jacobian.transpose(1, 2) @ coefficients).view_as(ab)
        # trust region: the statistics are piecewise (HSV's max and min), a long linear step overshoots
        longest = step.norm(dim=1).amax(dim=(1, 2)).clamp_min(EPS)
        step = step * (STEP_RADIUS / longest).clamp(max=1.0).view(-1, 1, 1, 1)
        ab = project_to_gamut(torch.cat([lightness, ab - step], dim=1))[:, 1:]
    return torch.cat([lightness, ab], dim=1)


def adjust_to_targets(lab: torch.Tensor, targets: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    """(N,3,H,W) normalized Lab with each image's ab moved to meet `targets` ({statistic: (N,) tensor
    or float}; hue in turns). L is unchanged; the result is detached. The closed forms run first
    (hue, then saturation: scaling chroma keeps the Lab hue), then the gradient steps; with more
    than one target those steps take all of them at once, so the closed forms' results hold."""
    unknown = [name for name in targets if name not in GRADIENT_NAMES + ("hue", "saturation")]
    if unknown:
        raise ValueError(f"adjust_to_targets: unknown statistic(s) {unknown}")
    adjusted = lab.detach()
    per_image = {name: _per_image(value, adjusted) for name, value in targets.items()}
    if "hue" in per_image:
        adjusted = adjust_hue(adjusted, per_image["hue"])
    if "saturation" in per_image:
        adjusted = adjust_saturation(adjusted, per_image["saturation"])
    if len(per_image) > 1 or not {"hue", "saturation"} & set(per_image):
        adjusted = adjust_by_gradient(adjusted, per_image)
    return torch.cat([lab[:, :1].detach(), adjusted[:, 1:]], dim=1)


def target_error(lab: torch.Tensor, targets: Mapping[str, torch.Tensor | float]) -> dict[str, torch.Tensor]:
    """Per-image distance to each target (hue by the shortest arc), {name: (N,)}."""
    achieved = image_statistics(lab_normalized_to_rgb(lab), tuple(targets))
    return {name: distance(name, achieved[name], _per_image(t, achieved[name])) for name, t in targets.items()}


REACH_TOLERANCE = 0.01        # |p(adjusted) − σ| that counts as reached (hue: turns of arc)


def reachable_share(lab: torch.Tensor, name: str, targets: torch.Tensor | list[float]) -> float:
    """The share of (image, target) pairs for which adjust_to_targets moves an image of `lab` to
    within REACH_TOLERANCE of a target of statistic `name`: how much of a range the projection
    (model.output=projected) can meet on such images."""
    reached = []
    for target in torch.as_tensor(targets, dtype=lab.dtype).tolist():
        error = target_error(adjust_to_targets(lab, {name: target}), {name: target})[name]
        reached.append(error <= REACH_TOLERANCE)
    return float(torch.cat(reached).float().mean())


def batch_targets(loss_cfg: LossConfig, requested: Targets | None = None,
                  own: Targets | None = None) -> dict[str, torch.Tensor | float]:
    """What a training batch is adjusted to: a conditioned trainer's per-image requested targets (a
    hidden statistic keeps the image's own value), else the fixed targets of the controlled ones."""
    if requested is not None and requested.names:
        return {name: torch.where(requested.present[:, i] > 0, requested.values[:, i], own.values[:, i])
                for i, name in enumerate(requested.names)}
    return {name: control.target for name, control in loss_cfg.controlled().items()}


def uses_adjusted(cfg: Config) -> bool:
    """Whether any switch of where the control acts (l1_target, control_on, adjust_fraction) asks for
    adjusted images."""
    return cfg.loss.l1_target == "adjusted" or cfg.loss.control_on != "generator" or cfg.data.adjust_fraction > 0


def replaced_rows(cfg: Config, batch_size: int) -> int:
    """How many of a batch's first images data.adjust_fraction replaces by their adjusted versions."""
    return round(cfg.data.adjust_fraction * batch_size)


def real_targets(cfg: Config, requested: Targets, own: Targets) -> Targets:
    """The statistics D's real images carry, for its condition: the requested ones where the reals
    were adjusted to them (loss.control_on=discriminator|both; data.adjust_fraction's rows), else
    the images' own."""
    if cfg.loss.control_on != "generator":
        return requested
    replaced = replaced_rows(cfg, own.values.shape[0])
    if not replaced:
        return own
    return replace(own, values=torch.cat([requested.values[:replaced], own.values[replaced:]]))


def training_views(batch: torch.Tensor, cfg: Config,
                   targets: Mapping[str, torch.Tensor | float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the batch to train on, the ab the L1 term pulls toward, the ab D is shown as real).

    data.adjust_fraction replaces the batch's first images (batches are drawn in random order, so a
    random share of each epoch) by their adjusted versions; loss.l1_target=adjusted and
    loss.control_on=discriminator|both use the adjusted ab. Without targets nothing changes."""
    loss_cfg = cfg.loss
    if not uses_adjusted(cfg) or not targets:
        return batch, batch[:, 1:], batch[:, 1:]
    adjusted = adjust_to_targets(batch.float(), targets).to(batch.dtype)
    replaced = replaced_rows(cfg, batch.shape[0])
    if replaced:
        batch = torch.cat([adjusted[:replaced], batch[replaced:]])
    l1_ab = adjusted[:, 1:] if loss_cfg.l1_target == "adjusted" else batch[:, 1:]
    real_ab = adjusted[:, 1:] if loss_cfg.control_on != "generator" else batch[:, 1:]
    return batch, l1_ab, real_ab
