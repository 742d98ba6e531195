"""Which control looks real: learned vs projected output × transposed vs resize upsampling, on CIFAR-10.

    python -m bench.realism --data DIR [--epochs 10] [--out bench/results] [--strips docs/realism]

Four rows, one `film` generator each, saturation conditioned over the judged range of the
validation split (the targets with `train.realism_images` natural reference images,
trainable.realism), λ_S 100, width 0.25, batch 64, one thread; the same 3,000 training images,
validation images, seed and epochs for every row. Per row, after the last epoch, over the judged
range (5 grid points across it): the per-image saturation error, the share of images whose
saturation rises at every grid step, val_hue_js, val_kid_controlled, val_artefact, and
val_pixel_acc_5 with each image conditioned on its own statistics. The rows are ranked as a sweep
ranks trials (analysis.pareto) on control error, val_kid_controlled and val_artefact.

Writes `realism.json` and `realism.md` (the table) to --out after every row, and one strip per row
to --strips: 8 validation images, columns gray, σ at STRIP_POINTS points across the judged range,
real.
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
import pandas as pd

from analysis.pareto import Objective, rank_table
from bench.conditioned import strip
from trainable.config import load_config
from trainable.data import load_data
from trainable.engine import Trainer, resolve_device, resolve_memory_format, setup_process
from trainable.files import write_text_atomic
from trainable.loop import train_epoch
from trainable.realism import NaturalReference

ROWS = {"learned, transposed": ["model.output=learned", "model.upsample=transposed"],
        "learned, resize": ["model.output=learned", "model.upsample=resize"],
        "projected, transposed": ["model.output=projected", "model.upsample=transposed"],
        "projected, resize": ["model.output=projected", "model.upsample=resize"]}
OBJECTIVES = (Objective("val_control_error", "min"), Objective("val_kid_controlled", "min"),
              Objective("val_artefact", "min"))
# (column title, metric, format)
COLUMNS = (("per-image error", "val_control_error_saturation", "{:.3f}"),
           ("monotonic", "val_control_monotonic_saturation", "{:.1%}"),
           ("hue JS", "val_hue_js", "{:.3f}"),
           ("KID ×10³", "val_kid_controlled", "{:.1f}"),
           ("artefact", "val_artefact", "{:.3f}"),
           ("pixel_acc_5 (own)", "val_pixel_acc_5", "{:.3f}"))
STRIP_IMAGES = 8
STRIP_POINTS = 6
PROVISIONAL_RANGE = "[0.05,0.7]"    # a film config needs a range to load; the judged one replaces it


def slug(label: str) -> str:
    return label.replace(", ", "_")


def judged_saturation(count: int, data) -> tuple[float, float]:
    """The saturation targets the validation split has `count` natural reference images for."""
    judged = NaturalReference(data.val).judged_range("saturation", count)
    if judged is None:
        raise SystemExit(f"no saturation target has {count} validation images within the band: raise data.val_limit")
    return judged


def train_row(cfg_overrides: list[str], data, epochs: int, label: str) -> tuple[Trainer, float]:
    trainer = Trainer(load_config(None, cfg_overrides), data)
    started = time.perf_counter()
    for _ in range(epochs):
        losses = train_epoch(trainer)[0]
        print(f"  {label}: epoch {trainer.epoch}/{epochs} loss_g={losses['loss_g']:.3f} "
              f"loss_control={losses['loss_control']:.4f} [{time.perf_counter() - started:.0f}s]", flush=True)
    return trainer, time.perf_counter() - started


def ranked(results: dict[str, dict]) -> pd.DataFrame:
    """The rows in a sweep's rank order (Pareto layer, then normalized score) on OBJECTIVES."""
    table = pd.DataFrame([{"trial_id": label, "status": "TERMINATED", **row} for label, row in results.items()])
    return rank_table(table, OBJECTIVES)


def markdown(results: dict[str, dict], judged: tuple[float, float], note: str) -> str:
    table = ranked(results)
    lines = [f"Saturation over the judged range [{judged[0]:g}, {judged[1]:g}]; {note}", "",
             "| rank | row | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for _, row in table.iterrows():
        cells = []
        for _, metric, form in COLUMNS:
            value = row[metric] * (1e3 if metric == "val_kid_controlled" else 1)
            cells.append(form.format(value))
        lines.append(f"| {row['rank']}{' (front)' if row['pareto'] else ''} | {row['trial_id']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realism", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 folder (any layout data.dataset=cifar10 reads)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--val-images", type=int, default=2000,
                        help="validation images (more widen the judged range; each costs evaluation time)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), metavar="ROW",
                        help=f"rows to train (default all: {', '.join(ROWS)})")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--strips", default=str(Path(__file__).resolve().parents[1] / "docs" / "realism"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.val_images < 2:
        parser.error("--epochs must be at least 1 and --val-images at least 2")
    base = ["data.dataset=cifar10", f"data.path={args.data}", "data.train_limit=3000",
            f"data.val_limit={args.val_images}", "model.width=0.25", "model.conditioning=film",
            "loss.saturation.weight=100", "train.batch_size=64", f"train.epochs={args.epochs}", "train.threads=1",
            "train.kid_every=1", "train.realism_images=50", "train.kid_input_size=128", *args.overrides]
    cfg = load_config(None, base + [f"loss.saturation.range={PROVISIONAL_RANGE}"])    # until the data says
    setup_process(cfg)
    device = resolve_device(cfg.train.device)
    data = load_data(cfg.data, device, resolve_memory_format(cfg, device))
    judged = judged_saturation(cfg.train.realism_images, data)
    base.append(f"loss.saturation.range=[{judged[0]},{judged[1]}]")
    note = (f"{len(data.train)} training / {len(data.val)} validation images, {args.epochs} epochs, width 0.25, "
            f"λ_S 100, batch 64, seed {cfg.train.seed}; KID at {cfg.train.kid_input_size} px, {cfg.train.realism_images} images per grid point")
    print(f"data: {note}; judged saturation range {judged}", flush=True)
    out, strips = Path(args.out), Path(args.strips)
    points = tuple(float(v) for v in np.linspace(judged[0], judged[1], STRIP_POINTS).round(3))
    results: dict[str, dict] = {}
    for label in args.rows:
        trainer, seconds = train_row(base + ROWS[label], data, args.epochs, label)
        metrics = trainer.evaluate()
        strip(trainer, "saturation", points, strips / f"{slug(label)}.png", count=STRIP_IMAGES)
        results[label] = {"seconds": seconds, "steps": trainer.step, "overrides": ROWS[label], **metrics}
        print(f"{label}: " + "  ".join(f"{metric}={metrics[metric]:.4f}" for _, metric, _ in COLUMNS), flush=True)
        write_text_atomic(out / "realism.json", json.dumps(
            {"base": base, "judged_saturation": judged, "strip_saturations": points, "results": results}, indent=1))
        write_text_atomic(out / "realism.md", markdown(results, judged, note))
    print(markdown(results, judged, note))
    print(f"wrote {out / 'realism.json'}, {out / 'realism.md'} and the strips in {strips}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
