"""The same grayscale validation images colorized by each of the top trials.

Each trial's generator is loaded from its last checkpoint (weights only, no code runs) and applied
to the first validation images of the sweep's data split, which every trial shares (same
`data.split_seed`). A trial whose checkpoint cannot be read falls back to the middle row of its
`samples.png` (rows gray / ours / real, written by the trainer at every report).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from analysis.rank import param_label
from trainable.color import lab_normalized_to_uint8
from trainable.config import Config
from trainable.export import ModelError, load_generator
from trainable.layout import SAMPLES
from trainable.names import control_symbol
from trainable.sources import validation_sample


def control_label(cfg: Config) -> str:
    """'σ_saturation=0.9 λ_saturation=20' for every controlled statistic (hue σ in turns)."""
    parts = [f"{control_symbol(f'loss.{name}.target')}={c.target:.3g} {control_symbol(f'loss.{name}.weight')}={c.weight:.3g}"
             for name, c in cfg.loss.controlled().items()]
    return "  ".join(parts) or "no control term (λ = 0)"


def _split_samples_png(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """samples.png (rows gray / ours / real, square images) → three (n, h, h, 3) arrays."""
    image = np.asarray(Image.open(path).convert("RGB"))
    height = image.shape[0] // 3
    rows = [image[i * height:(i + 1) * height] for i in range(3)]
    count = rows[0].shape[1] // height
    return tuple(np.stack(np.split(row[:, :count * height], count, axis=1)) for row in rows)


class Gallery:
    """Collects the rows; validation images are loaded once per data config."""

    def __init__(self, count: int):
        self.count = count
        self.gray: np.ndarray | None = None
        self.real: np.ndarray | None = None
        self.rows: list[tuple[str, np.ndarray]] = []
        self._images: dict[str, torch.Tensor] = {}

    def _validation(self, cfg: Config) -> torch.Tensor:
        key = repr(cfg.data)
        if key not in self._images:
            self._images[key] = validation_sample(cfg.data, self.count)
        return self._images[key]

    @torch.no_grad()
    def add_checkpoint(self, title: str, checkpoint: str | Path) -> None:
        generator, cfg, _ = load_generator(checkpoint)
        real = self._validation(cfg)
        fake = torch.cat([real[:, :1], generator(real[:, :1]).float()], 1)
        if self.gray is None:
            self.gray = lab_normalized_to_uint8(torch.cat([real[:, :1], torch.zeros_like(real[:, 1:])], 1))
            self.real = lab_normalized_to_uint8(real)
        self.rows.append((f"{title}\n{control_label(cfg)}", lab_normalized_to_uint8(fake)))

    def add_samples_png(self, title: str, path: Path, label: str) -> None:
        gray, ours, real = _split_samples_png(path)
        if self.gray is None:
            self.gray, self.real = gray[:self.count], real[:self.count]
        self.rows.append((f"{title} (samples.png)\n{label}", ours[:self.count]))


def params_label(row: pd.Series) -> str:
    """σ/λ from the searched parameters of a table row (when the checkpoint cannot be read)."""
    parts = [f"{param_label(k)}={row[k]:.3g}" for k in row.index
             if k.startswith("loss.") and param_label(k) != k and isinstance(row[k], (int, float))]
    return "  ".join(sorted(parts, key=lambda p: (p[2:], p[0] != "σ")))


def _samples_png(row: pd.Series) -> Path | None:
    for folder in (row["checkpoint"], row["path"]):
        if folder and (Path(folder) / SAMPLES).exists():
            return Path(folder) / SAMPLES
    return None


def gallery_for(ranked: pd.DataFrame, top: int, count: int = 8) -> Gallery | None:
    """Rows for the `top` best-ranked trials, or None when no trial has anything to show."""
    gallery = Gallery(count)
    for _, row in ranked[ranked["rank"].notna()].head(top).iterrows():
        title = f"#{row['rank']} {row['trial_id']}"
        try:
            if not row["checkpoint"]:
                raise ModelError("no checkpoint")
            gallery.add_checkpoint(title, row["checkpoint"])
        except ModelError:
            png = _samples_png(row)
            if png is not None:
                gallery.add_samples_png(title, png, params_label(row))
    return gallery if gallery.rows else None
