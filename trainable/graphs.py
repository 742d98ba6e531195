"""The whole packed D+G step captured in one CUDA graph (CUDA only).

At batch 128 the eager step is launch-bound (about 9,000 img/s fp32 on an H200 against a compute
limit near 269,000): one graph replay issues every kernel of both updates at once. Requirements the
packed step already meets: static shapes (the last partial batch is dropped), no host sync inside
the step, Adam written with device tensors (lr, betas and step live on the device), and half
precision as explicit casts (no autocast weight cache). Batches and lr factors are copied into static tensors before each replay.

Warm-up runs a few real steps on a side stream (as the CUDA-graph docs ask) on a snapshot of the
state, which is put back afterwards, so capturing does not advance training.
"""
from __future__ import annotations

import torch

from trainable.packed import PackedTrainer

WARMUP_STEPS = 3


def _state_tensors(pack: PackedTrainer) -> list[torch.Tensor]:
    tensors = [*pack.g_params.values(), *pack.g_buffers.values(), *pack.d_params.values(),
               *pack.d_buffers.values()]
    for adam in (pack.opt_g, pack.opt_d):
        tensors += [adam.step, *adam.exp_avg.values(), *adam.exp_avg_sq.values()]
    return tensors


def warm_up(pack: PackedTrainer, batch: torch.Tensor, lr_factor: torch.Tensor, steps: int = WARMUP_STEPS) -> None:
    """Run `steps` real steps (capture needs them first), then put every state tensor back."""
    snapshot = [t.detach().clone() for t in _state_tensors(pack)]
    for _ in range(steps):
        pack.step(batch, lr_factor)
    with torch.no_grad():
        for tensor, saved in zip(_state_tensors(pack), snapshot):
            tensor.copy_(saved)


class GraphedStep:
    """Callable with PackedTrainer.step's signature that replays a captured graph."""

    def __init__(self, pack: PackedTrainer, batch: torch.Tensor):
        if pack.device.type != "cuda":
            raise ValueError("train.cuda_graph: CUDA graphs need a CUDA device")
        self.pack = pack
        self.static_batch = batch.clone()
        self.static_lr = pack.lr_factors()[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            warm_up(pack, self.static_batch, self.static_lr)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_losses = pack.step(self.static_batch, self.static_lr)

    def __call__(self, batch: torch.Tensor, lr_factor: torch.Tensor) -> dict[str, torch.Tensor]:
        self.static_batch.copy_(batch, non_blocking=True)
        self.static_lr.copy_(lr_factor, non_blocking=True)
        self.graph.replay()
        return {key: value.clone() for key, value in self.static_losses.items()}


def graphed_train_epoch(pack: PackedTrainer, cache: dict) -> list[dict[str, float]]:
    """PackedTrainer.train_epoch with the step replayed from a graph captured on first use."""

    def step(batch: torch.Tensor, lr_factor: torch.Tensor) -> dict[str, torch.Tensor]:
        if "graph" not in cache:
            cache["graph"] = GraphedStep(pack, batch)
        return cache["graph"](batch, lr_factor)

    return pack.train_epoch(step_fn=step)
