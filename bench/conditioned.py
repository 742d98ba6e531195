"""One generator, targets as inputs: FiLM-conditioned saturation and hue on CIFAR-10, CPU.

    python -m bench.conditioned --data ../shared/data/cifar10 [--epochs N] [--set k=v ...]

Trains, on the same 3,000 training / 500 validation images (model.width 0.25, batch 64, one seed,
the same epochs, one thread: on this shared 2-core machine two threads ran 6× slower per step): the
unconditioned GAN; a `film` model with saturation conditioned over [0.05, 0.8]; a `film` model
with hue conditioned over the full circle; with `--l1 adjusted` (or `both`) the film models use
(or add) `loss.l1_target=adjusted`, L1 toward each image moved to its requested targets. It
prints per model: per-image saturation error and batch-mean error at σ_S ∈ {0.1, 0.3, 0.5, 0.7},
the share of images whose saturation rises at every step 0.1 → 0.7, the per-image circular hue
error on the grid 0, .25, .6, .85, faithful-mode val_pixel_acc_5 (each image conditioned on its own
statistics) against the unconditioned GAN's, and val_hue_js where the metrics have it. It writes
`bench/results/conditioned.json` and one strip per film model (4 validation images; columns gray,
then σ = 0.1 … 0.9 or the hue grid, then the real image) as PNG.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, Python puts bench/ first on sys.path, where concurrent.py shadows the standard
# library's `concurrent` (torch imports it): import from the project root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

from trainable.color import batch_mean, distance, lab_normalized_to_uint8
from trainable.condition import HUE_GRID, condition_vector, fixed_targets, grid_metrics, grid_statistics
from trainable.config import load_config
from trainable.sources import open_source
from trainable.engine import Trainer, resolve_device, resolve_memory_format, setup_process
from trainable.files import write_atomic, write_text_atomic
from trainable.loop import train_epoch

SATURATION_GRID = (0.1, 0.3, 0.5, 0.7)
STRIP_SATURATIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
STRIP_IMAGES = 4
RESULTS = Path(__file__).resolve().parent / "results"


def model_overrides(lambda_s: float, lambda_h: float, l1: str) -> dict[str, list[str]]:
    film = {"film saturation": ["model.conditioning=film", "loss.saturation.range=[0.05,0.8]",
                                f"loss.saturation.weight={lambda_s}"],
            "film hue": ["model.conditioning=film", "loss.hue.range=[0,1]", f"loss.hue.weight={lambda_h}"]}
    models = {"unconditioned": []}
    for label, extra in film.items():
        if l1 in ("original", "both"):
            models[label] = extra
        if l1 in ("adjusted", "both"):
            models[f"{label}, adjusted L1"] = extra + ["loss.l1_target=adjusted"]
    return models


def train(trainer: Trainer, epochs: int, label: str) -> float:
    started = time.perf_counter()
    for _ in range(epochs):
        losses = train_epoch(trainer)[0]
        print(f"  {label}: epoch {trainer.epoch}/{epochs} loss_g={losses['loss_g']:.3f} "
              f"loss_control={losses['loss_control']:.4f} [{time.perf_counter() - started:.0f}s]", flush=True)
    return time.perf_counter() - started


def colorizer(trainer: Trainer):
    return lambda gray, condition: trainer.colorize(gray, condition)


def saturation_rows(trainer: Trainer) -> dict[str, float]:
    batch = trainer.cfg.train.eval_batch_size
    stats = grid_statistics(colorizer(trainer), trainer.data.val, "saturation", SATURATION_GRID, batch)
    out = grid_metrics("saturation", SATURATION_GRID, stats)
    for sigma, row in zip(SATURATION_GRID, stats):
        out[f"error_at_{sigma}"] = float(distance("saturation", row, sigma).mean())
        out[f"batch_error_at_{sigma}"] = float(distance("saturation", batch_mean("saturation", row), sigma))
    return out


def hue_rows(trainer: Trainer) -> dict[str, float]:
    stats = grid_statistics(colorizer(trainer), trainer.data.val, "hue", HUE_GRID, trainer.cfg.train.eval_batch_size)
    return grid_metrics("hue", HUE_GRID, stats)


def strip(trainer: Trainer, name: str, values: tuple[float, ...], path: Path, count: int = STRIP_IMAGES) -> None:
    """Rows: `count` validation images; columns: gray, one per target value, real. 2× size."""
    real = trainer.data.val[:count]
    gray = real[:, :1]
    columns = [torch.cat([gray, torch.zeros_like(real[:, 1:])], 1)]
    for value in values:
        columns.append(trainer.colorize(gray, condition_vector(fixed_targets({name: value}, len(gray), gray.device))))
    columns.append(real)
    tiles = np.stack([lab_normalized_to_uint8(column) for column in columns], 1)     # (rows, cols, H, W, 3)
    rows, cols, height, width, _ = tiles.shape
    image = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * height, cols * width, 3)
    image = image.repeat(2, 0).repeat(2, 1)
    write_atomic(path, lambda handle: Image.fromarray(image).save(handle, format="PNG"))


def evaluate(trainer: Trainer, label: str, out: Path) -> dict[str, float]:
    row = {k: v for k, v in trainer.evaluate().items() if not k.startswith("val_control")}
    conditioned = trainer.cfg.loss.conditioned()
    slug = label.replace(", ", "_").replace(" ", "_")
    if "saturation" in conditioned:
        row.update(saturation_rows(trainer))
        strip(trainer, "saturation", STRIP_SATURATIONS, out / f"strip_{slug}.png")
    if "hue" in conditioned:
        row.update(hue_rows(trainer))
        strip(trainer, "hue", HUE_GRID, out / f"strip_{slug}.png")
    return row


def report(label: str, row: dict, plain: dict) -> None:
    parts = [f"faithful val_pixel_acc_5={row['val_pixel_acc_5']:.3f} "
             f"(unconditioned {plain['val_pixel_acc_5']:.3f}, diff {row['val_pixel_acc_5'] - plain['val_pixel_acc_5']:+.3f})",
             f"val_saturation={row['val_saturation']:.3f}", f"val_realism_abhist={row['val_realism_abhist']:.3f}",
             f"val_hue_js={row['val_hue_js']:.3f}" if "val_hue_js" in row else "val_hue_js=n/a"]
    print(f"{label}: " + "  ".join(parts))
    if "val_control_error_saturation" in row:
        per_image = [row[f"error_at_{s}"] for s in SATURATION_GRID]
        batch = [row[f"batch_error_at_{s}"] for s in SATURATION_GRID]
        print("  saturation per-image error at σ " + ", ".join(f"{s}: {e:.3f}" for s, e in zip(SATURATION_GRID, per_image))
              + f"  → mean {np.mean(per_image):.3f} (target ≤ 0.05)")
        print("  saturation batch-mean error at σ " + ", ".join(f"{s}: {e:.3f}" for s, e in zip(SATURATION_GRID, batch))
              + f"  → max {max(batch):.3f} (target ≤ 0.03 each)")
        print(f"  monotonic 0.1 → 0.7: {row['val_control_monotonic_saturation']:.1%} of images (target ≥ 95%)")
    if "val_control_error_hue" in row:
        print(f"  hue per-image circular error on {HUE_GRID}: {row['val_control_error_hue']:.3f} turns "
              f"(target ≤ 0.06), batch-mean {row['val_control_error_hue_batch']:.3f}, "
              f"each output nearest its own target: {row['val_control_monotonic_hue']:.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 folder (any layout data.dataset=cifar10 reads)")
    parser.add_argument("--epochs", type=int, default=4,
                        help="epochs per model, at most 10 (4: about 12 min here with three models)")
    parser.add_argument("--lambda-s", type=float, default=100.0)
    parser.add_argument("--lambda-h", type=float, default=50.0)
    parser.add_argument("--l1", choices=("original", "adjusted", "both"), default="original",
                        help="the film models' L1 target (loss.l1_target)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    if not 1 <= args.epochs <= 10:
        parser.error("--epochs must be in 1..10")
    base = ["data.dataset=cifar10", f"data.path={args.data}", "data.train_limit=3000", "data.val_limit=500",
            "model.width=0.25", "train.batch_size=64", f"train.epochs={args.epochs}", "train.threads=1",
            *args.overrides]
    cfg = load_config(None, base)
    setup_process(cfg)
    device = resolve_device(cfg.train.device)
    data = open_source(cfg.data, device, resolve_memory_format(cfg, device))
    out = Path(args.out)
    print(f"data: {data.train_count} train / {len(data.val)} val images; {args.epochs} epochs per model; "
          f"λ_S={args.lambda_s:g}, λ_H={args.lambda_h:g}")
    results = {}
    for label, extra in model_overrides(args.lambda_s, args.lambda_h, args.l1).items():
        trainer = Trainer(load_config(None, base + extra), data)
        seconds = train(trainer, args.epochs, label)
        results[label] = {"seconds": seconds, "overrides": extra, **evaluate(trainer, label, out)}
        report(label, results[label], results["unconditioned"])
    write_text_atomic(out / "conditioned.json", json.dumps({"epochs": args.epochs, "base": base, "results": results},
                                                           indent=1))
    print(f"wrote {out / 'conditioned.json'} and the strips in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
