"""Checkpoint files: written atomically, the previous one kept, loaded without running code.

`save_checkpoint` writes to a temp name in the same folder, moves the old `latest.pt` to
`previous.pt`, then fsyncs the temp file and renames it to `latest.pt` (trainable.files), so a crash
at any moment leaves at least one whole checkpoint. `load_checkpoint` reads with `torch.load(weights_only=True)`, which
refuses pickles that would construct arbitrary objects, and falls back to `previous.pt` with a
warning when `latest.pt` is missing or unreadable.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from trainable.files import replacing, write_atomic
from trainable.layout import LATEST, PREVIOUS


class CheckpointError(RuntimeError):
    """No usable checkpoint although files are there."""


def atomic_torch_save(obj: object, path: Path) -> None:
    """torch.save to `path` via a temp file and a rename."""
    write_atomic(path, lambda handle: torch.save(obj, handle))


def save_checkpoint(directory: str | Path, state: dict) -> Path:
    directory = Path(directory)
    with replacing(directory / LATEST) as temp:
        torch.save(state, temp)
        if (directory / LATEST).exists():
            os.replace(directory / LATEST, directory / PREVIOUS)
    return directory / LATEST


def safe_load(path: str | Path) -> object:
    """torch.load that never executes code from the file."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(directory: str | Path) -> dict | None:
    """The newest readable checkpoint in `directory`, or None when there is none at all."""
    directory = Path(directory)
    candidates = [directory / LATEST, directory / PREVIOUS]
    present = [path for path in candidates if path.exists()]
    if not present:
        return None
    for path in present:
        try:
            state = safe_load(path)
        except Exception as err:  # a torn or foreign file: try the previous one
            warnings.warn(f"checkpoint {path} is unreadable ({type(err).__name__}); trying the previous one",
                          stacklevel=2)
            continue
        if path.name == PREVIOUS and (directory / LATEST).exists():
            warnings.warn(f"using the previous checkpoint {path}", stacklevel=2)
        return state
    raise CheckpointError(f"{directory}: no readable checkpoint ({', '.join(p.name for p in present)} all failed)")
