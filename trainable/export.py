"""A trained generator as one file, and loading a generator from such a file or a checkpoint.

The export holds plain data only (tensors, numbers, strings): the generator's weights, the full
config it was trained with, the targets of its controlled statistics and the ranges of its
conditioned ones. Everything is read with `torch.load(weights_only=True)`: a file that tries to run
code while unpickling is refused.
"""
from __future__ import annotations

from pathlib import Path

import torch

from trainable.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, safe_load
from trainable.config import Config, ConfigError, from_dict, to_dict
from trainable.engine import STATE_FORMAT
from trainable.layout import CHECKPOINT_DIR, GENERATOR, LATEST, PREVIOUS
from trainable.models import Generator, build_generator

EXPORT_FORMAT = "colorsweep-generator"


class ModelError(ValueError):
    """Not a usable colorsweep model; the message names the file."""


def controlled_targets(cfg: Config) -> dict[str, dict[str, float]]:
    return {name: {"target": c.target, "weight": c.weight} for name, c in cfg.loss.controlled().items()}


def conditioned_ranges(cfg: Config) -> dict[str, list[float]]:
    """The inputs of a conditioned generator and their training ranges ({} when unconditioned)."""
    return {name: list(c.range) for name, c in cfg.loss.conditioned().items()}


def export_generator(weights: dict[str, torch.Tensor], cfg: Config, epoch: int, path: str | Path) -> Path:
    """Write a generator's weights (its state dict), its config, its targets and the epoch it was
    trained to, to `path` (atomically)."""
    weights = {k: v.detach().cpu() for k, v in weights.items()}
    payload = {"format": EXPORT_FORMAT, "version": 1, "config": to_dict(cfg),
               "targets": controlled_targets(cfg), "ranges": conditioned_ranges(cfg),
               "epoch": epoch, "generator": weights}
    atomic_torch_save(payload, Path(path))
    return Path(path)


def _read_payload(path: Path) -> dict:
    if path.is_dir():
        for folder in (path, path / CHECKPOINT_DIR):
            if (folder / LATEST).exists() or (folder / PREVIOUS).exists():
                try:
                    return load_checkpoint(folder)
                except CheckpointError as err:
                    raise ModelError(str(err)) from None
        if (path / GENERATOR).exists():
            return _read_payload(path / GENERATOR)
        raise ModelError(f"{path}: no checkpoint (latest.pt) or generator.pt in this folder")
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    try:
        return safe_load(path)
    except Exception as err:   # weights_only refuses code-running pickles; other files fail to parse
        raise ModelError(f"{path}: not a colorsweep model (safe loading refused it: "
                         f"{type(err).__name__})") from None


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[Generator, Config, dict]:
    """(generator in eval mode, its config, its targets) from an export file or checkpoint folder."""
    path = Path(path)
    payload = _read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") not in (EXPORT_FORMAT, STATE_FORMAT):
        raise ModelError(f"{path}: not a colorsweep model (no colorsweep format marker)")
    try:
        cfg = from_dict(payload["config"])
    except (ConfigError, KeyError, TypeError) as err:
        raise ModelError(f"{path}: model config unreadable: {err}") from None
    generator = build_generator(cfg)
    try:
        generator.load_state_dict(payload["generator"])
    except (RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise ModelError(f"{path}: weights do not fit the generator its config describes ({first})") from None
    return generator.to(device).eval(), cfg, controlled_targets(cfg)
