"""The original project's open experiments: where the saturation control acts, on CIFAR-10, CPU.

    python -m bench.adjusted --data ../shared/data/cifar10 [--epochs N] [--sigma S ...] [--no-film] [--set k=v ...]

On the same 3,000 training / 500 validation images (model.width 0.25, batch 64, one seed, the same
epochs for every row) it trains, at σ_S = 0.6 and at σ_S = 0.1 (λ_S fixed): the original setup
(L1 toward the original colours + λ on G), L1 toward the images adjusted to σ_S
(`loss.l1_target=adjusted`), adjusted reals shown to D with no λ on G
(`loss.control_on=discriminator`), both, and the plain U-Net (`loss.adversarial_weight=0`, λ on G).
Then a `film` model with saturation conditioned over [0.05, 0.8], with the original and with the
adjusted L1, its columns averaged over σ ∈ {0.1, 0.3, 0.5, 0.7}, and a strip of 4 validation images at
σ = 0.1 … 0.9 for each. Columns: control error |batch-mean saturation − σ|, val_realism_abhist,
val_hue_js, colorfulness ratio and pixel_acc_5 against the original images. It also times a training
step with and without the adjustment. One table on stdout, the same in
bench/results/adjusted.txt, the rows in adjusted.json, the strips as PNG.
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

from trainable.color import lab_normalized_to_rgb
from trainable.condition import condition_vector, fixed_targets
from trainable.config import ControlConfig, load_config
from trainable.sources import open_source
from trainable.engine import Trainer, resolve_device, resolve_memory_format, setup_process
from trainable.files import write_text_atomic
from trainable.loop import train_epoch
from trainable.metrics import MetricAccumulator

SIGMAS = (0.6, 0.1)
FILM_GRID = (0.1, 0.3, 0.5, 0.7)
STRIP_SATURATIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
VARIANTS = {"original L1 + λ on G": [],
            "adjusted L1 + λ on G": ["loss.l1_target=adjusted"],
            "adjusted reals on D only": ["loss.control_on=discriminator"],
            "both": ["loss.l1_target=adjusted", "loss.control_on=both"],
            "U-Net (adversarial_weight 0)": ["loss.adversarial_weight=0"]}
FILM = {"film, original L1": [], "film, adjusted L1": ["loss.l1_target=adjusted"]}
COLUMNS = (("control error", "val_control_error"), ("realism_abhist", "val_realism_abhist"),
           ("hue_js", "val_hue_js"), ("colorful ratio", "val_colorfulness_ratio"),
           ("pixel_acc_5", "val_pixel_acc_5"))
RESULTS = Path(__file__).resolve().parent / "results"


def metrics_at(trainer: Trainer, sigma: float, condition: bool) -> dict[str, float]:
    """Validation metrics against the original images with the saturation target σ (given to G as
    its condition when `condition`)."""
    accumulator = MetricAccumulator({"saturation": ControlConfig(weight=1.0, target=sigma)})
    size = trainer.cfg.train.eval_batch_size
    for start in range(0, len(trainer.data.val), size):
        real = trainer.data.val[start:start + size]
        vector = condition_vector(fixed_targets({"saturation": sigma}, len(real), real.device)) if condition else None
        fake = trainer.colorize(real[:, :1], vector)
        accumulator.update(fake, real, lab_normalized_to_rgb(fake), lab_normalized_to_rgb(real))
    return accumulator.finalize()


def train(cfg_items: list[str], data, epochs: int, label: str) -> Trainer:
    trainer = Trainer(load_config(None, cfg_items), data)
    started = time.perf_counter()
    for _ in range(epochs):
        losses = train_epoch(trainer)[0]
    print(f"  {label}: {epochs} epochs in {time.perf_counter() - started:.0f}s, "
          f"last loss_g={losses['loss_g']:.3f} loss_l1={losses['loss_l1']:.4f}", flush=True)
    return trainer


def step_seconds(cfg_items: list[str], data, steps: int = 6) -> float:
    """Median seconds of one training step (after one warm-up step) for this config."""
    trainer = Trainer(load_config(None, cfg_items), data)
    batch = data.plan([torch.Generator().manual_seed(0)], trainer.cfg.train.batch_size, False).batch(0)[0]
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        float(trainer.scheduled_step(batch)["loss_g"])          # read back: the step has finished
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def table(rows: dict[str, dict[str, float]]) -> str:
    header = f"{'row':44s}" + "".join(f"{name:>16s}" for name, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for label, row in rows.items():
        cells = "".join(f"{'n/a':>16s}" if row is None else f"{row[key]:16.4f}" for _, key in COLUMNS)
        lines.append(f"{label:44s}{cells}" + ("   not available" if row is None else ""))
    return "\n".join(lines)


def film_rows(base: list[str], data, epochs: int, lambda_s: float, out: Path) -> dict[str, dict | None]:
    try:
        from bench.conditioned import strip
    except ImportError:                    # the conditioned bench is not in this checkout
        return {f"{label} (σ 0.1–0.7 mean)": None for label in FILM}
    rows = {}
    film = ["model.conditioning=film", "loss.saturation.range=[0.05,0.8]", f"loss.saturation.weight={lambda_s}"]
    for label, extra in FILM.items():
        trainer = train(base + film + extra, data, epochs, label)
        per_sigma = [metrics_at(trainer, sigma, condition=True) for sigma in FILM_GRID]
        rows[f"{label} (σ 0.1–0.7 mean)"] = {k: float(np.mean([m[k] for m in per_sigma])) for k in per_sigma[0]}
        slug = label.split(", ")[1].replace(" ", "_")
        strip(trainer, "saturation", STRIP_SATURATIONS, out / f"adjusted_strip_{slug}.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 folder (any layout data.dataset=cifar10 reads)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per row (the same for every row)")
    parser.add_argument("--lambda-s", type=float, default=20.0, help="λ_S of the fixed-target rows")
    parser.add_argument("--lambda-film", type=float, default=100.0, help="λ_S of the film rows")
    parser.add_argument("--sigma", dest="sigmas", type=float, action="append", default=[],
                        help=f"σ_S of the fixed-target rows (repeatable; default {', '.join(map(str, SIGMAS))})")
    parser.add_argument("--no-film", action="store_true", help="leave out the two film rows")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    base = ["data.dataset=cifar10", f"data.path={args.data}", "data.train_limit=3000", "data.val_limit=500",
            "model.width=0.25", "train.batch_size=64", "train.seed=0", f"train.epochs={args.epochs}",
            *args.overrides]
    cfg = load_config(None, base)
    setup_process(cfg)
    device = resolve_device(cfg.train.device)
    data = open_source(cfg.data, device, resolve_memory_format(cfg, device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"data: {data.train_count} train / {len(data.val)} val images; {args.epochs} epochs per row; "
          f"λ_S={args.lambda_s:g} (film {args.lambda_film:g})", flush=True)
    fixed = [f"loss.saturation.weight={args.lambda_s}", "loss.saturation.target=0.6"]
    plain, adjusted = step_seconds(base + fixed, data), step_seconds(base + fixed + ["loss.l1_target=adjusted"], data)
    rows: dict[str, dict | None] = {}
    for sigma in args.sigmas or SIGMAS:
        for label, extra in VARIANTS.items():
            items = base + [f"loss.saturation.weight={args.lambda_s}", f"loss.saturation.target={sigma}", *extra]
            trainer = train(items, data, args.epochs, f"{label} σ_S={sigma}")
            rows[f"{label}, σ_S={sigma}"] = metrics_at(trainer, sigma, condition=False)
    if not args.no_film:
        rows.update(film_rows(base, data, args.epochs, args.lambda_film, out))
    text = (f"bench.adjusted: CIFAR-10 {data.train_count}/{len(data.val)} images, width 0.25, batch 64, seed 0, "
            f"{args.epochs} epochs per row, λ_S={args.lambda_s:g} (film {args.lambda_film:g}), {device}\n"
            f"training step: {plain * 1000:.0f} ms plain, {adjusted * 1000:.0f} ms with the adjustment "
            f"(+{(adjusted - plain) * 1000:.0f} ms, ×{adjusted / plain:.2f})\n\n{table(rows)}\n")
    print("\n" + text)
    write_text_atomic(out / "adjusted.txt", text)
    write_text_atomic(out / "adjusted.json", json.dumps({"base": base, "rows": rows}, indent=1))
    print(f"wrote {out / 'adjusted.txt'}, adjusted.json and the strips in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
