"""Data-parallel training in pure torch: what one rank of a process group does so that W ranks with
batch b take the same steps as one process with batch W·b (the launcher is sweep/distributed.py).

- The plan is the one-process plan. Every rank draws the epoch's order, flips and condition noise
  for the global batch from the same generator (the same seed, the same checkpointed state), and
  reads only its own slice of each global batch: rank r the images r·b … (r+1)·b − 1 (the source's
  `part`; from shards a rank decodes only those).
- G and D are each wrapped in `DistributedDataParallel`, which averages their gradients over the
  ranks; a loss that is a mean over the batch then has the gradient of the global batch's mean.
- Two kinds of term are not such means, and are made exact rather than approximated:
  * BatchNorm: each rank would normalize by its own half's statistics. `SyncedBatchNorm` replaces
    every BatchNorm2d of G and D and normalizes by the global batch's mean and variance (one
    all-reduce per layer and call, differentiable), on CPUs (gloo) as on GPUs; torch's own
    SyncBatchNorm refuses CPU tensors. Its running statistics then equal the one-process ones.
  * The control terms λ·|mean p(G(x)) − σ|: |mean of 2b| is not the mean of the halves' |mean|.
    `Trainer.gather` puts every rank's per-image statistics into one global vector (in rank
    order, differentiable) before the batch mean, so each rank computes the global term.
  A term every rank computes identically from all-reduced values has, summed over the ranks by
  the all-reduce's backward and averaged by DDP, exactly the gradient of the one-process term.
- The discriminator is called three times a step (reals and fakes for its update, fakes for G's
  update, when its parameters do not require gradients). DDP registers its gradient hooks per
  parameter, and G's backward reaches none of D's, so D's DDP needs no find_unused_parameters;
  D's update is its own backward and optimizer step, then G's, in the one-process order.
- DDP sends rank 0's weights and buffers to every rank once, at the start, and the buffers never
  again (forward_sync_buffers=False): SyncedBatchNorm keeps the running statistics equal.

Not exact, and said so in docs/scaling.md: `data.adjust_fraction` replaces the first rows of each
rank's slice rather than of the global batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainable.condition import condition_noise
from trainable.config import Config, apply_overrides, from_dict
from trainable.engine import Trainer
from trainable.gan_step import gan_step
from trainable.interval import Clock
from trainable.source import EpochPlan
from trainable.steps import EagerStep


class _AllReduce(torch.autograd.Function):
    """The sum over ranks; its backward is the sum over ranks of the gradients (each rank's loss
    depends on every rank's values). torch.distributed.nn's own is deprecated in torch 2.13."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduce.apply(grad)


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _AllReduce.apply(x)


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SyncedBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d normalized, in training, by the statistics of the batch of every rank together."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(x)
        values = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        channels = values.shape[1]
        count = values.new_full((1,), values.numel() / channels)
        local = torch.cat([values.sum((0, 2, 3)), (values * values).sum((0, 2, 3)), count])
        total = all_reduce(local)             # differentiable: its backward sums over ranks
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), self.momentum)
        shape = (1, channels, 1, 1)
        out = (values - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def synced_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below `module` (in place) by a SyncedBatchNorm holding the same
    parameter and buffer objects, so optimizers built on `module` keep working and state dict keys
    stay those of BatchNorm2d (a checkpoint or export reads the same either way)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = SyncedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            for key, value in [*child._parameters.items(), *child._buffers.items()]:
                setattr(synced, key, value)
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            synced_batchnorm(child)
    return module


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """Every rank's (b, ...) tensor as one (W·b, ...) tensor in rank order, differentiable: each
    rank writes its slot of a zero tensor and one all-reduce sums them (gloo has no reduce-scatter
    for all_gather's backward)."""
    rank, size = world()
    slots = x.new_zeros((size, *x.shape))
    slots = slots.index_copy(0, torch.tensor([rank], device=x.device), x.unsqueeze(0))
    return all_reduce(slots).flatten(0, 1)


class RankNets:
    """The Nets of `gan_step` for one rank: the trainer's modules called through their DDP wrappers
    (under the trainer's autocast), updated by the trainer's optimizers."""

    def __init__(self, trainer: Trainer, device_ids: list[int] | None):
        self.trainer = trainer
        # rank 0's weights and buffers at the start; buffers never again (SyncedBatchNorm keeps them equal)
        options = {"device_ids": device_ids, "forward_sync_buffers": False}
        self.generator = DistributedDataParallel(trainer.generator, **options)
        self.discriminator = DistributedDataParallel(trainer.discriminator, **options)

    def generate(self, gray, condition):
        with self.trainer._autocast():
            return self.generator(gray, condition)

    def discriminate(self, real, real_condition, fake, fake_condition):
        with self.trainer._autocast():
            return self.discriminator(real, real_condition), self.discriminator(fake, fake_condition)

    def judge(self, fake, condition):
        self.discriminator.requires_grad_(False)          # G's backward leaves D's grads alone
        with self.trainer._autocast():
            return self.discriminator(fake, condition)

    def update_discriminator(self, losses):
        self.trainer.update_discriminator(losses)

    def update_generator(self, losses):
        self.trainer.update_generator(losses)             # also gives D its requires_grad back


class RankStep(EagerStep):
    """One trainer's steps as one rank of W: the global batch's plan, this rank's slice of it, the
    step through DDP, and the epoch's loss means averaged over the ranks (every rank then steps its
    plateau schedule with the same value)."""

    def __init__(self, trainer: Trainer, global_batch: int, exact: bool = True):
        """`exact=False` keeps each rank's own BatchNorm statistics and control means: what the
        known-answer test shows the synced terms change."""
        super().__init__(trainer)
        self.rank, self.size = world()
        if global_batch % self.size:
            raise ValueError(f"the global batch {global_batch} does not split into {self.size} equal parts")
        self.global_batch, self.local_batch = global_batch, global_batch // self.size
        if self.data.train_count < global_batch:
            raise ValueError(f"{self.data.train_count} training images are fewer than one global batch "
                             f"of {global_batch}")
        if exact:
            synced_batchnorm(trainer.generator)
            synced_batchnorm(trainer.discriminator)
        trainer.gather = gather_batch if exact and self.size > 1 else None
        device_ids = [trainer.device.index or 0] if trainer.device.type == "cuda" else None
        self.nets = RankNets(trainer, device_ids)

    def plan_epoch(self, start: int = 0) -> EpochPlan:
        """The one-process plan of the global batch (every rank draws the same), cut to this rank's slice."""
        trainer = self.trainers[0]
        return self.data.plan([trainer.rng], self.global_batch, trainer.cfg.data.flip, start, self.memory_format,
                              part=(self.rank, self.size))

    def plan_conditions(self, steps: int) -> torch.Tensor | None:
        trainer = self.trainers[0]
        draws = condition_noise(steps, self.global_batch, trainer.cfg.loss, trainer.rng)
        return None if draws is None else draws[:, None].to(self.device)

    def step(self, batch: torch.Tensor, lr_factor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        trainer = self.trainers[0]
        trainer.set_lr(lr_factor[0])
        local_noise = None if noise is None else noise[0][self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
        images = batch[0].contiguous(memory_format=self.memory_format)
        losses, = gan_step(self.nets, [trainer], images, local_noise)
        return {key: value.detach().unsqueeze(0) for key, value in losses.items()}

    def end_epoch(self, sums: dict[str, torch.Tensor], steps: int) -> list[dict[str, float]]:
        if self.size > 1:
            keys = sorted(sums)
            stacked = torch.cat([sums[key].double() for key in keys])
            dist.all_reduce(stacked)
            sums = {key: stacked[i:i + 1] / self.size for i, key in enumerate(keys)}
        return super().end_epoch(sums, steps)


class RankClock:
    """A Clock every rank agrees with, so that all pause inside the epoch at the same step (a rank
    that paused alone would wait forever in its next collective). Step counts agree by themselves;
    a duration is rank 0's reading, broadcast after each step."""

    def __init__(self, clock: Clock, device: torch.device):
        self.clock, self.device = clock, device

    def due(self) -> bool:
        if not self.clock.interval.seconds or world()[1] == 1:
            return self.clock.due()
        flag = torch.tensor([float(self.clock.due())], device=self.device)
        dist.broadcast(flag, 0)
        return bool(flag.item())

    def reset(self) -> None:
        self.clock.reset()


def share_partial_sums(trainer: Trainer) -> None:
    """Every rank's loss sums of the epoch so far replaced by their mean over the ranks, so rank 0's
    checkpoint carries the whole batch's sums: after a resume the epoch's loss means are those of
    an uninterrupted run (end_epoch averages the ranks' sums again, and the mean of means of equal
    parts is the mean)."""
    rank, size = world()
    if size == 1 or not trainer.epoch_sums:
        return
    keys = sorted(trainer.epoch_sums)
    values = torch.tensor([trainer.epoch_sums[key] for key in keys], dtype=torch.float64, device=trainer.device)
    dist.all_reduce(values)
    trainer.epoch_sums = {key: value / size for key, value in zip(keys, values.tolist())}


class PositionError(ValueError):
    """A mid-epoch checkpoint whose data position cannot be mapped onto this run's global batch."""


def global_batch(cfg: Config, workers: int) -> int:
    """The batch every step takes across `workers` ranks: train.batch_size_total, else batch_size × workers."""
    total = cfg.train.batch_size_total or cfg.train.batch_size * workers
    if total % workers:
        raise ValueError(f"train.batch_size_total={total} does not split into {workers} equal parts")
    if total // workers < 2:
        raise ValueError(f"train.batch_size_total={total} leaves {total // workers} image per worker; "
                         "BatchNorm needs at least 2")
    return total


def rank_config(cfg: Config, workers: int) -> Config:
    """The config every rank trains: with train.scale_lr, both lrs × global batch / batch_size."""
    if not cfg.train.scale_lr:
        return cfg
    factor = global_batch(cfg, workers) / cfg.train.batch_size
    return apply_overrides(cfg, {"optim.lr_generator": cfg.optim.lr_generator * factor,
                                 "optim.lr_discriminator": cfg.optim.lr_discriminator * factor,
                                 "train.scale_lr": False})


def with_world(state: dict, workers: int, batch: int) -> dict:
    """A trainer state marked with the world it was saved in (a resume maps its data position)."""
    return {**state, "world_size": workers, "global_batch": batch}


def check_position(state: dict, workers: int, batch: int, restart_epoch: bool) -> dict:
    """The state to resume with `workers` ranks at global batch `batch`. Between epochs any world
    size resumes; mid-epoch the position is a step of the saved global batch's plan, which maps only
    onto the same global batch; `restart_epoch` starts that epoch over (weights as saved)."""
    saved_batch = state.get("global_batch", from_dict(state["config"]).train.batch_size)
    if not state.get("epoch_step") or saved_batch == batch:
        return state
    if restart_epoch:
        return {**state, "epoch_step": 0, "rng": state["epoch_rng"], "epoch_rng": None, "epoch_sums": {}}
    raise PositionError(
        f"the checkpoint stopped at step {state['epoch_step']} of epoch {state['epoch'] + 1} with a global "
        f"batch of {saved_batch} ({state.get('world_size', 1)} worker(s)); {workers} worker(s) take "
        f"{batch}, so its data position cannot be mapped: rerun with --restart-epoch to start epoch "
        f"{state['epoch'] + 1} over, or with --workers {state.get('world_size', 1)}")
