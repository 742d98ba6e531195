"""The in-memory data source: the whole set converted once to normalized Lab on the device, batches by index.

`load_data` reads the raw images (datasets.py), converts them to normalized Lab on the device,
drops pure-gray images, holds out a validation split fixed by `split_seed` and applies the limits.
Batches are index tensors from `batch_indices`; `apply_flip` flips the subset of a batch that
`epoch_plan`'s mask picks, in one op on the batch's device (airbench's CifarLoader style: no DataLoader workers).
`ColorData` is this set as a `trainable.source.DataSource`; no other module indexes its tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainable.color import AB_SCALE, rgb_to_lab_normalized
from trainable.config import DataConfig
from trainable.datasets import has_test_split, load_raw
from trainable.download import DataError
from trainable.source import DataSource, EpochPlan

# An image whose mean chroma sqrt(a² + b²) (Lab units) is below this is gray and dropped. Exactly
# gray images score ~0.003; JPEG noise lifts gray photos to ~0.5-2 (the CIFAR-10 JPEG mirror's test
# split: 113 below 0.01, 223 of 10,000 below 2.0; the median image scores ~12.6).
GRAY_CHROMA = 2.0
CONVERT_PIXELS = 1 << 22  # pixels converted to Lab at once (4,096 CIFAR images)


@dataclass(frozen=True)
class ColorData(DataSource):
    """Normalized-Lab float32 image tensors (N, 3, H, W) on the training device."""
    train: torch.Tensor
    val: torch.Tensor

    @property
    def train_count(self) -> int:
        return len(self.train)

    def _draw(self, generators: list[torch.Generator], batch_size: int, flip: bool, start: int,
              memory_format: torch.memory_format, states: list[torch.Tensor], part: slice) -> EpochPlan:
        orders, flips = [], []
        for generator in generators:
            order, flip_mask = epoch_plan(len(self.train), batch_size, generator, flip)
            orders.append(order[:, part])
            flips.append(flip_mask[:, part] if flip_mask is not None else torch.zeros_like(order[:, part], dtype=torch.bool))
        device = self.train.device
        return MemoryPlan(self.train, torch.stack(orders, 1).to(device), torch.stack(flips, 1).to(device),
                          memory_format, states, start)


class MemoryPlan(EpochPlan):
    """An epoch as (steps, K, B) indices and flips on the device, moved there once: a small
    host-to-device copy inside the step would make the host wait for the GPU every step."""

    def __init__(self, train: torch.Tensor, order: torch.Tensor, flips: torch.Tensor,
                 memory_format: torch.memory_format, states: list[torch.Tensor], start: int):
        super().__init__(states, start)
        self.train, self.order, self.flips, self.memory_format = train, order, flips, memory_format

    def __len__(self) -> int:
        return len(self.order)

    def _make(self, step: int) -> torch.Tensor:
        order = self.order[step]
        batch = self.train[order.flatten()]
        # no copy when the data came from load_data in this memory format (gathers keep the layout)
        batch = apply_flip(batch, self.flips[step].flatten()).contiguous(memory_format=self.memory_format)
        return batch.view(*order.shape, *batch.shape[1:])


def to_lab(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB → float32 (N, 3, H, W) normalized Lab on device, in chunks."""
    count, height, width = images.shape[:3]
    lab = torch.empty((count, 3, height, width), dtype=torch.float32, device=device)
    chunk = max(1, CONVERT_PIXELS // (height * width))
    for start in range(0, count, chunk):
        rgb = torch.from_numpy(images[start:start + chunk]).to(device).permute(0, 3, 1, 2)
        lab[start:start + chunk] = rgb_to_lab_normalized(rgb.float() / 255)
    return lab


def mean_chroma(lab: torch.Tensor) -> torch.Tensor:
    """Per-image mean chroma sqrt(a² + b²) in Lab units, (N,), of normalized-Lab images."""
    return torch.hypot(lab[:, 1], lab[:, 2]).mean(dim=(1, 2)) * AB_SCALE


def _colored_lab(images: np.ndarray, device: torch.device | str, where: str) -> torch.Tensor:
    lab = to_lab(images, device)
    colored = lab[mean_chroma(lab) >= GRAY_CHROMA]
    if len(colored) < 2:
        raise DataError(f"{where}: only {len(colored)} of {len(images)} images have color "
                        f"(mean chroma >= {GRAY_CHROMA}); need at least 2")
    return colored


def val_count(count: int, val_fraction: float) -> int:
    """round(val_fraction · count) images to validation, at least 1 and at most count − 1."""
    return min(count - 1, max(1, round(val_fraction * count)))


def split_indices(count: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) index tensors: a permutation of range(count) seeded by split_seed, its first
    val_count to validation."""
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(count, generator=generator)
    val = val_count(count, val_fraction)
    return order[val:], order[:val]


def _take(lab: torch.Tensor, indices: torch.Tensor, limit: int) -> torch.Tensor:
    if limit:
        indices = indices[:limit]
    return lab[indices.to(lab.device)]


def _where(cfg: DataConfig) -> str:
    return cfg.path or f"data.dataset={cfg.dataset}"


def load_data(cfg: DataConfig, device: torch.device | str,
              memory_format: torch.memory_format = torch.contiguous_format) -> ColorData:
    """Train and validation images as normalized Lab on device, in memory_format (batches gathered
    from them keep it, so the step never converts).

    Gray images (mean chroma < GRAY_CHROMA) are dropped first; then a permutation seeded by
    cfg.split_seed sends cfg.val_fraction of the rest to validation, so every trial with the same
    split_seed sees the same validation images; then train_limit / val_limit (0 = all) cut each
    part. cifar10's test split is never used here (see load_test_split).
    """
    lab = _colored_lab(load_raw(cfg, "train"), device, _where(cfg)).contiguous(memory_format=memory_format)
    train_indices, val_indices = split_indices(len(lab), cfg.val_fraction, cfg.split_seed)
    return ColorData(train=_take(lab, train_indices, cfg.train_limit),
                     val=_take(lab, val_indices, cfg.val_limit))


def validation_images(images: np.ndarray, cfg: DataConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """The validation split `load_data` makes of these raw training images, as normalized Lab."""
    lab = _colored_lab(images, device, _where(cfg))
    _, val_indices = split_indices(len(lab), cfg.val_fraction, cfg.split_seed)
    return _take(lab, val_indices, cfg.val_limit)


def load_test_split(cfg: DataConfig, device: torch.device | str) -> torch.Tensor:
    """Held-out test images as normalized Lab on device, gray ones dropped, val_limit not applied.

    cifar10 (every layout) returns its test split. npz, folder and synthetic have no test split:
    they return the whole validation split of load_data instead (same split_seed, no val_limit).
    """
    if has_test_split(cfg):
        return _colored_lab(load_raw(cfg, "test"), device, _where(cfg))
    lab = _colored_lab(load_raw(cfg, "train"), device, _where(cfg))
    _, val_indices = split_indices(len(lab), cfg.val_fraction, cfg.split_seed)
    return _take(lab, val_indices, 0)


def batch_indices(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled CPU index batches drawn with generator: count // batch_size full
    batches (the last partial one dropped), or a single batch of all when count < batch_size."""
    order = torch.randperm(count, generator=generator)
    if count < batch_size:
        return [order]
    full = count // batch_size * batch_size
    return list(order[:full].split(batch_size))


def epoch_plan(count: int, batch_size: int, generator: torch.Generator,
               flip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A whole epoch drawn at once on the CPU: (batches, B) indices and, with flip, a (batches, B)
    flip mask. The trainer moves both to the device once per epoch, not once per step: a small
    host-to-device copy inside the step would make the host wait for the GPU every step."""
    order = torch.stack(batch_indices(count, batch_size, generator))
    flips = torch.rand(order.shape, generator=generator) < 0.5 if flip else None
    return order, flips


def apply_flip(batch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip the (N, C, H, W) batch's items where the (N,) mask is true, in one op."""
    return torch.where(mask.view(-1, 1, 1, 1), batch.flip(-1), batch)

