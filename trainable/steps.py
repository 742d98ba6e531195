"""K trainers that train on the same data, and how one step of theirs is taken.

A `StepGroup` plans an epoch for each of its trainers (its own order and flips, from its own
generator) through the trainers' shared data source (`trainable.source`), takes the
(K, B, 3, H, W) batch of one step from it, builds the per-step lr factors and does
the bookkeeping at the end of an epoch (step and epoch counts, the schedule, the mean losses).
Subclasses only say how a step is taken: `EagerStep` (K = 1: the trainer's own `train_step`),
`trainable.packed.PackedTrainer` (K models stacked under vmap) and `trainable.graphs.GraphedTrainer`
(the packed step replayed from a CUDA graph). `trainable.loop.steps_for` picks one; the epoch that
drives them is `trainable.loop.train_epoch`.
"""
from __future__ import annotations

import math

import torch

from trainable.condition import condition_noise
from trainable.engine import Trainer
from trainable.source import EpochPlan


class StepGroup:
    def __init__(self, trainers: list[Trainer]):
        self.trainers = trainers
        lead = trainers[0]
        self.device, self.data, self.memory_format = lead.device, lead.data, lead.memory_format

    def step(self, batch: torch.Tensor, lr_factor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One D then G update of every trainer; batch is (K, B, 3, H, W), noise (K, B, W) the
        condition draws of conditioned trainers (plan_conditions). Returns (K,) losses, NaN where a
        trainer has no such loss (control_<p> of a statistic it does not control)."""
        raise NotImplementedError

    def sync(self) -> list[Trainer]:
        """Write state held outside the trainers back into them (nothing here)."""
        return self.trainers

    def lr_table(self, steps: int) -> list[list[float]]:
        return [[t.schedule.factor(t.step + i) for t in self.trainers] for i in range(steps)]

    def lr_factors(self, steps: int = 1) -> torch.Tensor:
        """(steps, K) lr multipliers for the next `steps` steps, built on the host and copied once."""
        return torch.tensor(self.lr_table(steps), device=self.device)

    def plan_epoch(self, start: int = 0) -> EpochPlan:
        """Every trainer's epoch at once, each drawn from its own generator (the data source's
        `plan`), its batches from `start` on."""
        flip = self.trainers[0].cfg.data.flip          # data.* is shared by a pack
        batch_size = self.trainers[0].cfg.train.batch_size
        return self.data.plan([t.rng for t in self.trainers], batch_size, flip, start, self.memory_format)

    def plan_conditions(self, steps: int) -> torch.Tensor | None:
        """(steps, K, B, W) uniforms for conditioned trainers' per-image targets, drawn after
        plan_epoch from each trainer's own generator and moved to the device once; None when
        unconditioned (pack trials are all conditioned on the same statistics, or none)."""
        draws = [condition_noise(steps, t.cfg.train.batch_size, t.cfg.loss, t.rng) for t in self.trainers]
        return None if draws[0] is None else torch.stack(draws, 1).to(self.device)

    def next_batch(self, plan: EpochPlan, step: int) -> torch.Tensor:
        """The (K, B, 3, H, W) batch of this step of the plan."""
        return plan.batch(step)

    def end_epoch(self, sums: dict[str, torch.Tensor], steps: int) -> list[dict[str, float]]:
        """Count the epoch's steps in every trainer, step its schedule; → each one's mean losses
        and the generator's lr of the epoch's last step."""
        host = {key: [v / steps for v in value.tolist()] for key, value in sums.items()}   # one sync
        results = []
        for k, trainer in enumerate(self.trainers):
            trainer.step += steps
            trainer.epoch += 1
            means = {key: values[k] for key, values in host.items() if _owns(trainer, key, values[k])}
            means["lr_generator"] = trainer.cfg.optim.lr_generator * trainer.schedule.factor(trainer.step - 1)
            trainer.schedule.end_epoch(means["loss_l1"])
            results.append(means)
        return results


def _owns(trainer: Trainer, key: str, value: float) -> bool:
    """False for the NaN a packed step puts where this trainer has no such loss."""
    return not (math.isnan(value) and key.startswith("control_")
                and key.removeprefix("control_") not in trainer.cfg.loss.generator_controls())


class EagerStep(StepGroup):
    """One trainer stepped by its own `train_step` (autocast, torch's Adam, a scaler for fp16)."""

    def __init__(self, trainer: Trainer):
        super().__init__([trainer])

    def lr_factors(self, steps: int = 1) -> list[list[float]]:
        return self.lr_table(steps)          # host floats: setting an optimizer's lr reads them there

    def step(self, batch: torch.Tensor, lr_factor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        trainer = self.trainers[0]
        trainer.set_lr(lr_factor[0])
        losses = trainer.train_step(batch[0], None if noise is None else noise[0])
        return {key: value.unsqueeze(0) for key, value in losses.items()}
