"""Training speed of one trial: the naive eager loop vs colorsweep's trainer, in the same run.

    python bench/train_speed.py                       # CPU: width 0.25, batch 32
    python bench/train_speed.py --device cuda --width 1 --batch-size 128 --steps 200

Prints img/s of each, the ratio and (CUDA) peak memory and the card's name. On CUDA "ours" is timed
plain (fused Adam, data resident, no per-step sync) in fp32 and bf16, NCHW and channels_last, and
(CUDA, --graph) captured in one CUDA graph; last, with every switch left at `auto`.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, Python puts bench/ first on sys.path, where concurrent.py shadows the standard
# library's `concurrent` (torch imports it): import from the project root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time

import numpy as np
import torch

from bench.naive import naive_images_per_second, peak_memory_gb, peak_text, synchronize
from trainable.config import load_config
from trainable.data import ColorData, to_lab
from trainable.engine import Trainer, resolve_memory_format, setup_process
from trainable.loop import steps_for, train_epoch


def ours_images_per_second(overrides: list[str], images: np.ndarray, steps: int, device: torch.device) -> float:
    cfg = load_config(None, overrides)
    lab = to_lab(images, device).contiguous(memory_format=resolve_memory_format(cfg, device))  # as load_data
    setup_process(cfg)
    trainer = Trainer(cfg, ColorData(train=lab[: steps * cfg.train.batch_size], val=lab[-64:]))
    group = steps_for([trainer])                       # kept: a CUDA graph is captured once
    train_epoch(group)                                 # warm-up (and graph capture when on)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    train_epoch(group)
    synchronize(device)
    return trainer.step // 2 * cfg.train.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--graph", action="store_true", help="also time the CUDA-graph step")
    parser.add_argument("--data", default="", help="an .npz with uint8 NHWC images (default: synthetic)")
    args = parser.parse_args()
    device = torch.device(args.device)
    base = [f"model.width={args.width}", f"train.batch_size={args.batch_size}", f"train.device={args.device}",
            "loss.saturation.weight=20", "loss.saturation.target=0.6", "data.flip=true"]
    if args.data:
        images = np.load(args.data)["images"]
    else:
        from trainable.datasets import make_synthetic
        images = make_synthetic(args.steps * args.batch_size + 64, 32, 0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; width {args.width}, batch {args.batch_size}, {args.steps} timed steps")
    naive = naive_images_per_second(load_config(None, base), images, args.steps, device)
    print(f"{'naive eager fp32':28s} {naive:10.0f} img/s  1.00×{peak_text(peak_memory_gb(device))}")
    if device.type == "cpu":
        torch.set_flush_denormal(True)                 # what our trainer does on the CPU
        flushed = naive_images_per_second(load_config(None, base), images, args.steps, device)
        print(f"{'naive, denormals flushed':28s} {flushed:10.0f} img/s  {flushed / naive:.2f}×")
    plain = ["train.cuda_graph=off"]
    variants = [("ours fp32", plain + ["train.precision=fp32", "train.channels_last=off"]),
                ("ours fp32 channels_last", plain + ["train.precision=fp32", "train.channels_last=on"]),
                ("ours bf16", plain + ["train.precision=bf16", "train.channels_last=off"]),
                ("ours bf16 channels_last", plain + ["train.precision=bf16", "train.channels_last=on"])]
    if device.type == "cuda" and args.graph:
        graph = ["train.cuda_graph=on", "train.channels_last=off"]
        variants += [("ours graph fp32", graph + ["train.precision=fp32"]),
                     ("ours graph bf16", graph + ["train.precision=bf16"]),
                     ("ours graph bf16 chan_last", ["train.cuda_graph=on", "train.precision=bf16",
                                                    "train.channels_last=on"])]
    variants.append(("ours, defaults (auto)", []))
    for label, extra in variants:
        speed = ours_images_per_second(base + extra, images, args.steps, device)
        print(f"{label:28s} {speed:10.0f} img/s  {speed / naive:.2f}×{peak_text(peak_memory_gb(device))}")


if __name__ == "__main__":
    main()
