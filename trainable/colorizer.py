"""Colorizing with an exported generator: a loaded model, its targets checked, and images in,
colorized images out (uint8 RGB arrays). The one inference path of `sweep.colorize` (the CLI), the
MLflow model (`sweep.serving`), the Gradio page (`sweep.app`) and the benchmarks.

By default (`scale="train"`) ab is predicted on the L channel downscaled so its short side is the
training image size (aspect kept) and upsampled bilinearly onto the full-resolution L (Zhang et al.
2016): a model keeps its control at the scale it learned it. `"native"` runs the fully
convolutional net on the full image.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainable.color import lab_normalized_to_uint8, rgb_to_lab_normalized
from trainable.condition import condition_vector, fixed_targets
from trainable.config import Config
from trainable.export import load_generator

SCALES = ("train", "native")
BATCH = 16


class TargetError(ValueError):
    """Targets the model cannot take; the message names the statistic and what the model accepts."""


@dataclass(frozen=True)
class ColorModel:
    """A loaded generator with what colorizing needs: its config and its conditioned ranges."""
    generator: torch.nn.Module
    cfg: Config
    ranges: dict[str, tuple[float, float]]

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def describe(self) -> str:
        if self.ranges:
            return "model inputs: " + ", ".join(f"{n} in [{lo:g}, {hi:g}]" + (" (turns, circular)" if n == "hue" else "")
                                                for n, (lo, hi) in self.ranges.items())
        fixed = ", ".join(f"{n} {c.target:g} (λ={c.weight:g})" for n, c in self.cfg.loss.controlled().items())
        return f"model trained for: {fixed or 'no controlled statistic'} (takes no targets)"


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ColorModel:
    generator, cfg, _ = load_generator(path, device)
    return ColorModel(generator, cfg, {n: tuple(c.range) for n, c in cfg.loss.conditioned().items()})


def check_targets(model: ColorModel, targets: Mapping[str, float | None] | None) -> list[str]:
    """Raise TargetError for a statistic the model does not take; return warnings for values outside
    the training range (they run anyway)."""
    warnings = []
    for name, value in (targets or {}).items():
        if value is None:
            continue
        if name not in model.ranges:
            accepts = ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in model.ranges.items())
            why = f"accepts {accepts}" if accepts else "is unconditioned and takes no targets"
            raise TargetError(f"--{name}: this model was not trained with {name} as an input; it {why}")
        low, high = model.ranges[name]
        if not low <= value <= high:
            warnings.append(f"warning: --{name} {value:g} is outside the training range [{low:g}, {high:g}]; running anyway")
    return warnings


def working_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the short side at `short_side`, aspect kept."""
    factor = short_side / min(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


@torch.no_grad()
def predict_ab(model: ColorModel, gray: torch.Tensor, condition: torch.Tensor | None, scale: str) -> torch.Tensor:
    """Normalized L (N,1,H,W) → normalized ab (N,2,H,W); at `train` scale predicted on L resized to
    the training size and upsampled bilinearly. The net wants sizes that are multiples of half the
    training size: the input is padded (replicate) and the output cropped back."""
    height, width = gray.shape[-2:]
    size = model.cfg.data.image_size
    work = gray
    if scale == "train":
        work = F.interpolate(gray, working_size(height, width, size), mode="bilinear", antialias=True,
                             align_corners=False)
    multiple = size // 2
    h, w = work.shape[-2:]
    padded = F.pad(work, (0, -w % multiple, 0, -h % multiple), mode="replicate")
    ab = model.generator(padded, condition) if model.ranges else model.generator(padded)
    ab = ab[..., :h, :w].float()
    if (h, w) != (height, width):
        ab = F.interpolate(ab, (height, width), mode="bilinear", align_corners=False)
    return ab


def _condition(model: ColorModel, targets: Sequence[Mapping[str, float | None] | None]) -> torch.Tensor | None:
    if not model.ranges:
        return None
    vectors = [condition_vector(fixed_targets({n: (t or {}).get(n) for n in model.ranges}, 1, model.device))
               for t in targets]
    return torch.cat(vectors)


def _gray(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255).to(device)
    return rgb_to_lab_normalized(image)[:, :1]


def colorize_array(model: ColorModel, rgb: np.ndarray, targets: Mapping[str, float | None] | None = None,
                   scale: str = "train") -> np.ndarray:
    """uint8 HWC RGB (or gray L channel source) → uint8 HWC RGB colorized from its L channel with
    `targets` ({statistic: value}, missing or None = free). Raises TargetError for targets the model
    does not take (check_targets)."""
    return colorize_variants(model, rgb, [targets], scale)[0]


def colorize_variants(model: ColorModel, rgb: np.ndarray, targets: Sequence[Mapping[str, float | None] | None],
                      scale: str = "train") -> list[np.ndarray]:
    """One image colorized once per target set, in batches."""
    for wanted in targets:
        check_targets(model, wanted)
    gray = _gray(rgb, model.device)
    out = []
    for start in range(0, len(targets), BATCH):
        chunk = targets[start:start + BATCH]
        batch = gray.expand(len(chunk), -1, -1, -1)
        ab = predict_ab(model, batch, _condition(model, chunk), scale)
        out.extend(lab_normalized_to_uint8(torch.cat([batch, ab], 1)))
    return out


def colorize_many(model: ColorModel, images: Sequence[np.ndarray], targets: Mapping[str, float | None] | None,
                  scale: str = "train") -> list[np.ndarray]:
    """Many images with the same targets; images of one size run as one batch."""
    check_targets(model, targets)
    out: list[np.ndarray | None] = [None] * len(images)
    by_shape: dict[tuple, list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(image.shape[:2], []).append(index)
    for indices in by_shape.values():
        for start in range(0, len(indices), BATCH):
            chunk = indices[start:start + BATCH]
            gray = torch.cat([_gray(images[i], model.device) for i in chunk])
            ab = predict_ab(model, gray, _condition(model, [targets] * len(chunk)), scale)
            for i, colored in zip(chunk, lab_normalized_to_uint8(torch.cat([gray, ab], 1))):
                out[i] = colored
    return out


def strip_image(columns: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(columns, axis=1)
