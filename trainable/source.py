"""The one data interface: what the trainer, packed trials, validation, FID and the sweep see of a data set.

A `DataSource` has a fixed validation set `val` (normalized Lab on the device, small by
construction: `data.val_limit`), the number of training images `train_count`, and `plan(...)`,
which draws one epoch for K trainers stepped together from their own generators. An `EpochPlan`
gives batch i of that epoch as one (K, B, 3, H, W) device tensor of normalized Lab, flips applied.

The position contract: a plan is a pure function of the generators' states when it is drawn, and
`plan(..., start=k)` begins at batch k without making batches 0..k-1. So a trainer's `epoch_rng`
(its generator as the epoch began) and `epoch_step` fully determine the next batch, and
`EpochPlan.state_dict()` / `DataSource.resume(state, ...)` carry exactly that. The position lives
in the plan, not the source, because one source is shared by every trial of a pack.

`part=(r, W)` makes rank r's plan of W data-parallel ranks: the same epoch (drawn whole from the
same generators), each batch cut to its r-th of W equal slices. Only that slice is gathered or
decoded, so each rank reads its own part of the data.

Two implementations: in memory (`trainable.data.ColorData`: the whole set one device tensor,
batches gathered by index) and streamed from shards (`trainable.stream.ShardSource`).
`trainable.sources.open_source(cfg.data, ...)` picks one; nothing else knows which it got.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class EpochPlan(ABC):
    """One epoch of K trainers' batches; `batch(i)` is called for i = start, start + 1, …"""

    def __init__(self, states: list[torch.Tensor], start: int):
        self.states, self.position = states, start

    @abstractmethod
    def __len__(self) -> int:
        """Batches in the whole epoch (the last partial one dropped)."""

    @abstractmethod
    def _make(self, step: int) -> torch.Tensor:
        """The (K, B, 3, H, W) batch of this step."""

    def batch(self, step: int) -> torch.Tensor:
        out = self._make(step)
        self.position = step + 1
        return out

    def state_dict(self) -> dict:
        """The exact position: the generators' states the epoch was drawn from, and the next batch."""
        return {"rng": [state.clone() for state in self.states], "step": self.position}


class DataSource(ABC):
    """Training batches by epoch plan, a fixed validation set `val` (N, 3, H, W) on the device."""
    val: torch.Tensor

    @property
    @abstractmethod
    def train_count(self) -> int:
        """Training images in one epoch."""

    @abstractmethod
    def _draw(self, generators: list[torch.Generator], batch_size: int, flip: bool, start: int,
              memory_format: torch.memory_format, states: list[torch.Tensor], part: slice) -> EpochPlan:
        """The epoch drawn from the generators, its batches from `start` on, each cut to `part`."""

    def plan(self, generators: list[torch.Generator], batch_size: int, flip: bool, start: int = 0,
             memory_format: torch.memory_format = torch.contiguous_format,
             part: tuple[int, int] = (0, 1)) -> EpochPlan:
        """One epoch for K trainers (one generator each; every draw of the epoch comes from it)."""
        rank, size = part
        if batch_size % size or not 0 <= rank < size:
            raise ValueError(f"a batch of {batch_size} has no part {rank} of {size} equal parts")
        share = batch_size // size
        states = [generator.get_state() for generator in generators]
        return self._draw(generators, batch_size, flip, start, memory_format, states,
                          slice(rank * share, (rank + 1) * share))

    def resume(self, state: dict, generators: list[torch.Generator], batch_size: int, flip: bool,
               memory_format: torch.memory_format = torch.contiguous_format,
               part: tuple[int, int] = (0, 1)) -> EpochPlan:
        """The plan an `EpochPlan.state_dict()` came from, continuing at its next batch (the
        generators are set back to the epoch's start, then drawn from as then)."""
        for generator, saved in zip(generators, state["rng"], strict=True):
            generator.set_state(saved)
        return self.plan(generators, batch_size, flip, state["step"], memory_format, part)
