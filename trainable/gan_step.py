"""The one GAN training step: each trial's targets and adjusted views, a discriminator update, then a
generator update (pix2pix order), with the losses of `trainable.losses`.

Written once for K trials side by side. `Nets` says how the networks are called and updated: a
`Trainer` calls its own modules on one trial's (B, 3, H, W) batch under autocast and steps torch's
Adam (the eager step); a `PackedTrainer` calls K stacked models under vmap on a (K, B, 3, H, W)
batch and steps its stacked Adam (the packed step, and the graphed step that captures it). Each
trial's inputs and losses are computed by pure functions of its tensors and its config.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from trainable.adjust import batch_targets, real_targets, training_views, uses_adjusted
from trainable.color import lab_normalized_to_rgb
from trainable.condition import Conditioning, Targets, condition_vector
from trainable.config import Config
from trainable.losses import discriminator_loss, generator_loss

Tensor = torch.Tensor


class Trial(Protocol):        # a Trainer: its config, its conditioned statistics, its rank's gather
    cfg: Config
    conditioning: Conditioning | None
    gather: Callable[[Tensor], Tensor] | None


class Nets(Protocol):
    """How a step calls its networks and updates them. `discriminate` gives D's logits of real and
    of detached fake pairs, for D's update; `judge` those of fake pairs, for G's (no D gradients)."""
    def generate(self, gray: Tensor, condition: Tensor | None) -> Tensor: ...
    def discriminate(self, real: Tensor, real_condition: Tensor | None,
                     fake: Tensor, fake_condition: Tensor | None) -> tuple[Tensor, Tensor]: ...
    def update_discriminator(self, losses: list[Tensor]) -> None: ...
    def judge(self, fake: Tensor, condition: Tensor | None) -> Tensor: ...
    def update_generator(self, losses: list[Tensor]) -> None: ...


def full_precision(x: Tensor) -> Tensor:
    """Half tensors back to fp32 for losses and color math; fp32/fp64 pass through."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _per_trial(x: Tensor, stacked: bool) -> Sequence[Tensor]:
    return x.unbind(0) if stacked else (x,)


def _joined(parts: Sequence[Tensor], stacked: bool) -> Tensor:
    return torch.stack(parts) if stacked else parts[0]


def generator_losses(trial: Trial, fake_logits: Tensor, fake_ab: Tensor, fake_rgb: Tensor | None,
                     l1_ab: Tensor, targets: Targets | None) -> dict[str, Tensor]:
    """One trial's generator losses; a conditioned trial's own L1 and per-image control terms."""
    loss_cfg = trial.cfg.loss
    conditioned = None if targets is None else trial.conditioning.generator_terms(
        fake_rgb, fake_ab, l1_ab, targets, l1_everywhere=loss_cfg.l1_target == "adjusted", gather=trial.gather)
    return generator_loss(full_precision(fake_logits), fake_ab, l1_ab, fake_rgb, loss_cfg, conditioned,
                          gather=trial.gather)


def _conditions(trials: Sequence[Trial], drawn: list, stacked: bool) -> tuple[Tensor | None, Tensor | None]:
    """The c of G's fakes and of D's reals (the asked c where the reals were adjusted to it)."""
    if drawn[0][0] is None:        # the trials of a pack are all conditioned, or none
        return None, None
    fakes = [condition_vector(targets) for targets, _ in drawn]
    reals = [condition_vector(real_targets(t.cfg, *d)) for t, d in zip(trials, drawn)]
    return _joined(fakes, stacked), _joined(reals, stacked)


def _views(trials: Sequence[Trial], batch: Tensor, drawn: list, stacked: bool) -> tuple[Tensor, Tensor]:
    """(the ab each trial's L1 pulls toward, the ab its D sees as real): the batch's own, or adjusted
    to the trial's targets (trainable.adjust.training_views)."""
    if not any(uses_adjusted(t.cfg) for t in trials):
        return batch[..., 1:, :, :], batch[..., 1:, :, :]
    views = [training_views(images, t.cfg, batch_targets(t.cfg.loss, *d))
             for images, t, d in zip(_per_trial(batch, stacked), trials, drawn)]
    return _joined([v[1] for v in views], stacked), _joined([v[2] for v in views], stacked)


def gan_step(nets: Nets, trials: Sequence[Trial], batch: Tensor, noise: Tensor | None) -> list[dict[str, Tensor]]:
    """One D then one G update of every trial on its normalized-Lab batch, (B, 3, H, W) for one
    trial or (K, B, 3, H, W) for K; conditioned trials draw their per-image targets from `noise`
    (B or K, B, noise_width). Returns each trial's named losses (not detached)."""
    stacked = batch.dim() == 5
    gray = batch[..., :1, :, :]
    noises = _per_trial(noise, stacked) if noise is not None else [None] * len(trials)
    drawn = [(None, None) if t.conditioning is None else t.conditioning.draw(images, n)
             for t, images, n in zip(trials, _per_trial(batch, stacked), noises)]
    condition, real_condition = _conditions(trials, drawn, stacked)
    l1_ab, real_ab = _views(trials, batch, drawn, stacked)

    fake_ab = nets.generate(gray, condition)
    real_logits, fake_logits = nets.discriminate(torch.cat([gray, real_ab], -3), real_condition,
                                                 torch.cat([gray, fake_ab.detach()], -3), condition)
    d_losses = [discriminator_loss(full_precision(real), full_precision(fake), t.cfg.loss.real_label)
                for real, fake, t in zip(_per_trial(real_logits, stacked), _per_trial(fake_logits, stacked), trials)]
    nets.update_discriminator([d["loss_d"] for d in d_losses])

    fake_logits = nets.judge(torch.cat([gray, fake_ab], -3), condition)   # G's own dtype: autocast's rounding
    fake_ab = full_precision(fake_ab)
    fake_rgb = [None] * len(trials)                     # only control terms need RGB
    if drawn[0][0] is not None or any(t.cfg.loss.controlled() for t in trials):
        fake_lab = torch.cat([gray, fake_ab], -3)
        fake_rgb = _per_trial(lab_normalized_to_rgb(fake_lab.flatten(0, -4)).view_as(fake_lab), stacked)
    g_losses = [generator_losses(t, logits, ab, rgb, l1, targets) for t, logits, ab, rgb, l1, (targets, _)
                in zip(trials, _per_trial(fake_logits, stacked), _per_trial(fake_ab, stacked), fake_rgb,
                       _per_trial(l1_ab, stacked), drawn)]
    nets.update_generator([g["loss_g"] for g in g_losses])
    return [{**d, **g} for d, g in zip(d_losses, g_losses)]
