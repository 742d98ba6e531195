"""The whole packed D+G step captured in one CUDA graph (CUDA only).

The eager step at batch 128 is launch-bound; one graph replay issues every kernel of both updates
at once. Requirements the packed step already meets: static shapes (the last partial batch is
dropped), no host sync inside the step, Adam written with device tensors (lr, betas and step live
on the device), and half precision as explicit casts (no autocast weight cache). Batches and lr
factors are copied into static tensors before each replay.

Warm-up runs a few real steps on a side stream (as the CUDA-graph docs ask) on a snapshot of the
state, which is put back afterwards, so capturing does not advance training.
"""
from __future__ import annotations

import torch

from trainable.engine import Trainer
from trainable.packed import PackedTrainer

WARMUP_STEPS = 3


def _state_tensors(pack: PackedTrainer) -> list[torch.Tensor]:
    tensors = [*pack.g_params.values(), *pack.g_buffers.values(), *pack.d_params.values(),
               *pack.d_buffers.values()]
    for adam in (pack.opt_g, pack.opt_d):
        tensors += [adam.step, *adam.exp_avg.values(), *adam.exp_avg_sq.values()]
    return tensors


def warm_up(pack: PackedTrainer, batch: torch.Tensor, lr_factor: torch.Tensor, noise: torch.Tensor | None = None,
            steps: int = WARMUP_STEPS) -> None:
    """Run `steps` real packed steps (capture needs them first), then put every state tensor back."""
    snapshot = [t.detach().clone() for t in _state_tensors(pack)]
    for _ in range(steps):
        PackedTrainer.step(pack, batch, lr_factor, noise)
    with torch.no_grad():
        for tensor, saved in zip(_state_tensors(pack), snapshot):
            tensor.copy_(saved)


class GraphedTrainer(PackedTrainer):
    """A PackedTrainer whose step replays one CUDA graph, captured at its first step."""

    def __init__(self, trainers: list[Trainer]):
        if trainers[0].device.type != "cuda":
            raise ValueError("train.cuda_graph: CUDA graphs need a CUDA device")
        super().__init__(trainers)
        self.graph: torch.cuda.CUDAGraph | None = None

    def _capture(self, batch: torch.Tensor, lr_factor: torch.Tensor, noise: torch.Tensor | None) -> None:
        self.static_batch, self.static_lr = batch.clone(), lr_factor.clone()
        self.static_noise = None if noise is None else noise.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            warm_up(self, self.static_batch, self.static_lr, self.static_noise)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_losses = PackedTrainer.step(self, self.static_batch, self.static_lr, self.static_noise)

    def step(self, batch: torch.Tensor, lr_factor: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.graph is None:
            self._capture(batch, lr_factor, noise)
        self.static_batch.copy_(batch, non_blocking=True)
        self.static_lr.copy_(lr_factor, non_blocking=True)
        if noise is not None:
            self.static_noise.copy_(noise, non_blocking=True)
        self.graph.replay()
        return {key: value.clone() for key, value in self.static_losses.items()}
