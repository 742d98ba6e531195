"""Pure GAN losses: each function takes tensors and config and returns a dict of named scalars.

Discriminator: BCE-with-logits with one-sided label smoothing. Generator: loss.adversarial_weight ×
non-saturating adversarial BCE + λ_L1·L1(ab) + Σ_p λ_p·|batch mean of per-image p(G(L)) − σ_p| over
the controlled statistics (hue by the shortest arc; none when loss.control_on leaves them to D).
Nothing is stored: the trainer decides what to log and what to step.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from trainable.color import batch_mean, distance, image_statistics
from trainable.config import ControlConfig, LossConfig

Gather = Callable[[torch.Tensor], torch.Tensor]     # a rank's (b,) values → the global batch's (W·b,)


def _bce_to(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       real_label: float = 0.9) -> dict[str, torch.Tensor]:
    """BCE on real (target real_label, one-sided smoothing; 1.0 turns it off) and fake (target 0)."""
    loss_real = _bce_to(real_logits, real_label)
    loss_fake = _bce_to(fake_logits, 0.0)
    return {"loss_d": loss_real + loss_fake, "loss_d_real": loss_real, "loss_d_fake": loss_fake}


def control_loss(fake_rgb: torch.Tensor, controls: Mapping[str, ControlConfig],
                 gather: Gather | None = None) -> dict[str, torch.Tensor]:
    """Σ_p weight_p · distance(p, batch mean of p(fake_rgb), target_p), plus each achieved mean.
    `gather` (one rank of several, trainable.parallel) makes the per-image values the global batch's.

    Returns {"loss_control": 0-dim tensor (0 when nothing is controlled), "control_<p>": achieved
    batch mean of p, detached}.
    """
    total = fake_rgb.new_zeros(())
    terms: dict[str, torch.Tensor] = {}
    per_image = image_statistics(fake_rgb, tuple(controls)) if controls else {}
    if gather is not None:
        per_image = {name: gather(values) for name, values in per_image.items()}
    for name, control in controls.items():
        achieved = batch_mean(name, per_image[name])
        total = total + control.weight * distance(name, achieved, control.target)
        terms[f"control_{name}"] = achieved.detach()
    return {"loss_control": total, **terms}


def generator_loss(fake_logits: torch.Tensor, fake_ab: torch.Tensor, real_ab: torch.Tensor,
                   fake_rgb: torch.Tensor | None, loss_cfg: LossConfig,
                   conditioned: Mapping[str, torch.Tensor] | None = None,
                   gather: Gather | None = None) -> dict[str, torch.Tensor]:
    """adversarial_weight·non-saturating BCE + l1_weight·mean|fake_ab − real_ab| + the control terms
    (the fixed-target ones unless loss.control_on leaves them to D).

    fake_ab and real_ab are normalized ab; fake_rgb is the generated Lab image converted to RGB,
    which only the control terms need (None is accepted when nothing is controlled). A conditioned
    generator's terms (trainable.condition.Conditioning.generator_terms) bring their own L1, which
    replaces the plain one, and a per-image control loss, which is added.
    """
    adversarial = _bce_to(fake_logits, 1.0)
    l1 = (fake_ab - real_ab).abs().mean() if conditioned is None else conditioned["loss_l1"]
    controlled = loss_cfg.generator_controls()
    controls = control_loss(fake_rgb, controlled, gather) if controlled else {"loss_control": l1.new_zeros(())}
    if conditioned is not None:
        controls = {**controls, **{k: v for k, v in conditioned.items() if k.startswith("control_")},
                    "loss_control": controls["loss_control"] + conditioned["loss_control"]}
    total = loss_cfg.adversarial_weight * adversarial + loss_cfg.l1_weight * l1 + controls["loss_control"]
    return {"loss_g": total, "loss_g_adv": adversarial, "loss_l1": l1, **controls}
