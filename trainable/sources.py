"""Which data source a data config names, and the held-out images a report or a final test reads.

data.dataset=shards streams from data.path (`trainable.stream.ShardSource`); every other set is
loaded into memory (`trainable.data.load_data`). The modules are imported only when named, so a
config that names one never imports the other's dependencies.
"""
from __future__ import annotations

import torch

from trainable.config import DataConfig
from trainable.source import DataSource


def open_source(cfg: DataConfig, device: torch.device | str,
                memory_format: torch.memory_format = torch.contiguous_format) -> DataSource:
    """The source data.dataset names: shards streamed from data.path, any other set in memory.
    Bad data raises DataError, one line naming it."""
    if cfg.dataset == "shards":
        from trainable.stream import ShardSource
        return ShardSource(cfg.path, cfg.image_size, device, workers=cfg.loader_workers,
                           train_limit=cfg.train_limit, val_limit=cfg.val_limit, memory_format=memory_format)
    from trainable.data import load_data
    return load_data(cfg, device, memory_format)


def held_out_images(cfg: DataConfig, device: torch.device | str) -> torch.Tensor:
    """The images a final run is tested on: the test split where the set has one (cifar10), else
    the validation split, whole in memory, its first data.val_limit images for shards."""
    if cfg.dataset == "shards":
        from trainable.stream import ShardSource
        return ShardSource(cfg.path, cfg.image_size, device, workers=0, val_limit=cfg.val_limit).val
    from trainable.data import load_test_split
    return load_test_split(cfg, device)


def validation_sample(cfg: DataConfig, count: int) -> torch.Tensor:
    """The first `count` validation images of cfg on the CPU (the gallery's rows)."""
    if cfg.dataset == "shards":
        from trainable.stream import ShardSource
        limit = min(count, cfg.val_limit) if cfg.val_limit else count
        return ShardSource(cfg.path, cfg.image_size, "cpu", workers=0, val_limit=limit).val
    from trainable.data import load_data
    return load_data(cfg, "cpu").val[:count]
