"""Data-parallel scaling: steps/s and images/s of 1 and 2 workers (trainable.parallel's RankStep: DDP,
synced BatchNorm and control means), and the share of a step that gradient communication takes.

    python -m bench.ddp                                   # CPU, gloo: widths 0.25 and 0.5
    python -m bench.ddp --device cuda --workers 1,2,4,8 --width 1 --batch-size 128 --steps 200

Each worker is one process (torch.multiprocessing, the process group Ray Train would set up: gloo on
CPUs, NCCL with one GPU each on CUDA); the batch is --batch-size per worker, so the global batch grows
with the workers. On the CPU the cores are split between the workers (--threads each, default cores /
workers): 1 worker gets them all, so the ratio shows what a second process costs or buys on the same
cores. The communication share is 1 − (time with DDP's gradient all-reduce skipped by no_sync ÷ time
with it); synced BatchNorm's small all-reduces stay in both. Each is the fastest of --repeats epochs.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainable.config import load_config
from trainable.data import ColorData, to_lab
from trainable.engine import Trainer, setup_process
from trainable.loop import train_epoch
from trainable.parallel import RankStep


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_epoch(group: RankStep, device: torch.device, skip_sync: bool) -> float:
    with contextlib.ExitStack() as stack:
        if skip_sync:
            stack.enter_context(group.nets.generator.no_sync())
            stack.enter_context(group.nets.discriminator.no_sync())
        _synchronize(device)
        dist.barrier()
        started = time.perf_counter()
        train_epoch(group)
        _synchronize(device)
        dist.barrier()
        return time.perf_counter() - started


def _worker(rank: int, workers: int, args: argparse.Namespace, port: int, out: str) -> None:
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=workers)
    try:
        threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
        cfg = load_config(None, [f"model.width={args.width}", f"train.batch_size={args.batch_size}",
                                 f"train.device={device}", f"train.threads={threads}",
                                 "loss.saturation.weight=20", "loss.saturation.target=0.6"])
        setup_process(cfg)
        images = np.random.default_rng(0).integers(0, 256, (args.steps * args.batch_size * workers + 64, 32, 32, 3),
                                                   dtype=np.uint8)
        lab = to_lab(images, device)
        trainer = Trainer(cfg, ColorData(train=lab[:-64], val=lab[-64:]))
        group = RankStep(trainer, args.batch_size * workers)
        train_epoch(group)                                   # warm-up: allocations, DDP's buckets
        # alternated, the fastest of each: a shared machine's other load only ever adds time
        times = [(_timed_epoch(group, device, skip_sync=False), _timed_epoch(group, device, skip_sync=True))
                 for _ in range(args.repeats)]
        synced, unsynced = min(t[0] for t in times), min(t[1] for t in times)
        if rank == 0:
            Path(out).write_text(json.dumps({"seconds": synced, "unsynced": unsynced, "threads": threads}))
    finally:
        dist.destroy_process_group()


def measure(workers: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "result.json")
        mp.spawn(_worker, args=(workers, args, _free_port(), out), nprocs=workers, join=True)
        result = json.loads(Path(out).read_text())
    steps_per_s = args.steps / result["seconds"]
    return {"steps_per_s": steps_per_s, "images_per_s": steps_per_s * args.batch_size * workers,
            "communication": max(0.0, 1 - result["unsynced"] / result["seconds"]), "threads": result["threads"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ddp", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--width", default="0.25,0.5", help="model widths, comma-separated")
    parser.add_argument("--batch-size", type=int, default=16, help="per worker")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (one epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each kind; the fastest counts")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per worker; 0 = cores / workers")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    if args.device == "cuda" and max(counts) > torch.cuda.device_count():
        parser.error(f"--workers {max(counts)}: this machine has {torch.cuda.device_count()} GPUs")
    print(f"{args.device}, {os.cpu_count()} cores; batch {args.batch_size} per worker, {args.steps} steps")
    print(f"{'width':>6} {'workers':>7} {'threads':>7} {'steps/s':>8} {'images/s':>9} {'comm':>6} {'× 1 worker':>10}")
    for width in (float(w) for w in args.width.split(",")):
        args.width = width
        base = None
        for workers in counts:
            row = measure(workers, args)
            base = base or row["images_per_s"]
            print(f"{width:>6g} {workers:>7} {row['threads']:>7} {row['steps_per_s']:>8.2f} "
                  f"{row['images_per_s']:>9.1f} {row['communication']:>6.0%} {row['images_per_s'] / base:>9.2f}×",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
