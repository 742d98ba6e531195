"""Shared fixtures: a tiny config that trains in seconds on the CPU."""
from __future__ import annotations

import pytest
import torch

from trainable.config import Config, load_config

TINY = ["model.width=0.125", "data.dataset=synthetic", "data.synthetic_size=160", "train.batch_size=16",
        "train.epochs=2", "train.eval_batch_size=64", "train.device=cpu", "train.threads=1"]


def tiny_config(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
