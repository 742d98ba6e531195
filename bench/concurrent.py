"""N trials on one device: N naive processes side by side vs N trials packed into one process.

    python bench/concurrent.py --device cuda --trials 10 --width 1 --batch-size 128 --steps 100 --graph
    python bench/concurrent.py                       # CPU smoke: 2 trials, width 0.125

Naive: N processes, each the plain eager loop of bench/naive.py, started together; their img/s add
up (the GPU time-slices them). Ours: the N trials' models stacked and stepped together by
trainable.packed.PackedTrainer (optionally captured in one CUDA graph), each trial with its own
config (here its own saturation target). Prints aggregate img/s, the ratio, and peak memory per trial.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, Python puts bench/ first on sys.path, where concurrent.py shadows the standard
# library's `concurrent` (torch imports it): import from the project root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from bench.naive import naive_images_per_second, peak_memory_gb, peak_text, synchronize  # noqa: E402
from trainable.config import load_config  # noqa: E402
from trainable.data import ColorData, to_lab  # noqa: E402
from trainable.datasets import make_synthetic  # noqa: E402
from trainable.engine import Trainer, resolve_memory_format, setup_process  # noqa: E402
from trainable.graphs import GraphedTrainer  # noqa: E402
from trainable.loop import train_epoch  # noqa: E402
from trainable.packed import PackedTrainer  # noqa: E402


def base_overrides(args, trial: int) -> list[str]:
    return [f"model.width={args.width}", f"train.batch_size={args.batch_size}", f"train.device={args.device}",
            f"train.seed={trial}", "loss.saturation.weight=20", f"loss.saturation.target={0.1 + 0.08 * trial}"]


def one_naive(args) -> None:
    """Child process: time the naive loop and print one JSON line."""
    images = make_synthetic(args.batch_size * 8, 32, args.trial)
    device = torch.device(args.device)
    if device.type == "cpu":      # as our trainer does: the CPU ratio then measures packing alone
        torch.set_flush_denormal(True)
        # the cores shared out, as Ray does for CPU trials (OMP_NUM_THREADS): N processes with every
        # core each spin against each other and swing between 20 and 530 img/s here
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.trials))
    speed = naive_images_per_second(load_config(None, base_overrides(args, args.trial)), images, args.steps, device)
    print(json.dumps({"img_s": speed, "peak_gb": peak_memory_gb(device)}))


def naive_processes(args) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__)), "--child", "--trials", str(args.trials),
           "--device", args.device, "--width", str(args.width),
           "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    children = [subprocess.Popen(cmd + ["--trial", str(i)], stdout=subprocess.PIPE, text=True)
                for i in range(args.trials)]
    return [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]


def packed(args) -> tuple[float, float]:
    device = torch.device(args.device)
    images = make_synthetic(args.batch_size * args.steps + 64, 32, 0)
    layout = resolve_memory_format(load_config(None, base_overrides(args, 0)), device)
    lab = to_lab(images, device).contiguous(memory_format=layout)          # as load_data gives it
    data = ColorData(train=lab[: args.batch_size * args.steps], val=lab[-64:])
    precision = "bf16" if args.bf16 else "fp32"
    setup_process(load_config(None, base_overrides(args, 0)))
    trainers = [Trainer(load_config(None, base_overrides(args, i) + [f"train.precision={precision}"]), data)
                for i in range(args.trials)]
    pack = (GraphedTrainer if args.graph else PackedTrainer)(trainers)
    run = lambda: train_epoch(pack)  # noqa: E731
    run()                                                    # warm-up / capture
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    total = args.trials * args.steps * args.batch_size / (time.perf_counter() - started)
    return total, peak_memory_gb(device) / args.trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--graph", action="store_true", help="capture the packed step in a CUDA graph")
    parser.add_argument("--bf16", action="store_true", help="bf16 for the packed trials")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trial", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return one_naive(args)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device: {name}; {args.trials} trials, width {args.width}, batch {args.batch_size}, {args.steps} steps")
    naive = naive_processes(args)
    naive_total = sum(r["img_s"] for r in naive)
    print(f"{'naive: N processes':30s} {naive_total:10.0f} img/s total  1.00×  "
          f"{peak_text(max(r['peak_gb'] for r in naive), 'peak/trial')}  (each {[round(r['img_s']) for r in naive]})")
    total, per_trial_gb = packed(args)
    label = "ours: packed" + (" + graph" if args.graph else "") + (" bf16" if args.bf16 else "")
    print(f"{label:30s} {total:10.0f} img/s total  {total / naive_total:.2f}×{peak_text(per_trial_gb, 'peak/trial')}")


if __name__ == "__main__":
    main()
