"""Images/s delivered as device Lab batches: a plain ImageFolder + DataLoader vs colorsweep's shards.

    python -m bench.data                       # 20,000 synthetic 256×256 JPEGs, 2 loader workers
    python -m bench.data --images 2000 --batches 30

Makes a folder of N procedural JPEGs (trainable.datasets.make_synthetic), converts it to shards
with `python -m trainable.shards` (JPEG and raw codecs; conversion rate and size on disk), then for
256-px and 64-px random crops times, with the same loader workers: (a) a Dataset that opens each
file with PIL, crops, flips, and a DataLoader that collates, then Lab on the device; (b) ShardStream.
Prints images/s, the ratio (b)/(a) and the peak memory (PSS, summed over the process and its loader
workers, so pages shared after fork count once) of each. `--images 20000 100000` runs each size in
turn, each in a fresh process, and ends with the peak memory of each. `--distinct M` makes only M
procedural images and hard-links them over and over up to N (for 100,000: generating is
single-threaded and slow, and the loaders' memory depends on how many files and index entries
there are, not on what they hold). `--train-width W` also times training steps at 256 px
on the shards (a model of width W, data.dataset=shards, loader workers as above) and says what
that rate means for an epoch of Places365.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainable.color import rgb_to_lab_normalized
from trainable.datasets import make_synthetic
from trainable.files import is_image_name
from trainable.stream import ShardStream

SIZE = 256
PLACES365_TRAIN = 1_803_460   # Places365-standard's training images
TRAIN_STEPS = 4               # training steps timed after a warm-up step
MAKE_CHUNK = 256      # synthetic images generated at once
PEAK_LINE = "peak MB of any loader:"
GRAIN = 6.0           # std of the per-pixel noise that gives the smooth procedural images a photo's texture


def _path(folder: Path, index: int) -> Path:
    return folder / f"{index // 100:04d}" / f"{index:06d}.jpg"


def make_folder(folder: Path, count: int, seed: int, distinct: int = 0) -> None:
    """count 256×256 JPEGs (quality 90) with film grain, in 100-image subfolders; skipped when
    already there. Without the grain they compress to a few kB, and decode faster than photos.
    With 0 < distinct < count, image i is a hard link to image i mod distinct of the `distinct`
    folder beside this one (made first)."""
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == count:
        return
    shutil.rmtree(folder, ignore_errors=True)
    if 0 < distinct < count:
        base = folder.parent.parent / str(distinct) / folder.name
        make_folder(base, distinct, seed)
        for index in range(count):
            _path(folder, index).parent.mkdir(parents=True, exist_ok=True)
            _path(folder, index).hardlink_to(_path(base, index % distinct))
        return
    rng = np.random.default_rng(seed)
    for start in range(0, count, MAKE_CHUNK):
        images = make_synthetic(min(MAKE_CHUNK, count - start), SIZE, seed + start)
        for offset, image in enumerate(images):
            path = _path(folder, start + offset)
            path.parent.mkdir(parents=True, exist_ok=True)
            grainy = image + rng.normal(0, GRAIN, image.shape).astype(np.float32)
            Image.fromarray(np.clip(grainy, 0, 255).astype(np.uint8)).save(path, quality=90)


class ImageFiles(torch.utils.data.Dataset):
    """The plain baseline: one file per item, PIL decode, random crop and flip, uint8 CHW."""

    def __init__(self, root: Path, crop: int):
        self.files = sorted(p for p in root.rglob("*") if is_image_name(p))
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.files[index]) as image:
            rgb = np.asarray(image.convert("RGB"))
        top, left = np.random.randint(0, rgb.shape[0] - self.crop + 1, 2)
        window = rgb[top:top + self.crop, left:left + self.crop]
        if np.random.rand() < 0.5:
            window = window[:, ::-1]
        return torch.from_numpy(window.copy()).permute(2, 0, 1)


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [p for child in children for p in _tree(int(child))]


class PeakMemory:
    """Peak PSS of this process and its descendants, sampled by a thread while the block runs."""

    def __enter__(self):
        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        import os
        while not self._stop.wait(0.05):
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in _tree(os.getpid())))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def megabytes(self) -> float:
        return self.peak_kb / 1024


def _timed(batches, limit: int, to_lab) -> float:
    """Images/s over batches 2..limit+1 (the first one pays worker start-up and is not timed)."""
    iterator = iter(batches)
    to_lab(next(iterator))
    images, started = 0, time.perf_counter()
    for _, batch in zip(range(limit), iterator):
        images += len(to_lab(batch))
    return images / (time.perf_counter() - started)


def plain_rate(folder: Path, crop: int, args, device: torch.device) -> float:
    loader = torch.utils.data.DataLoader(ImageFiles(folder, crop), batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True, prefetch_factor=2)

    def to_lab(batch: torch.Tensor) -> torch.Tensor:
        return rgb_to_lab_normalized(batch.to(device).float() / 255)
    return _timed(loader, args.batches, to_lab)


def shard_rate(shards: Path, crop: int, args, device: torch.device) -> float:
    stream = ShardStream(shards, args.batch_size, crop, device, workers=args.workers, val_limit=1)
    return _timed(stream, args.batches, lambda batch: batch)


def convert(folder: Path, shards: Path, codec: str, workers: int) -> tuple[float, float]:
    """(images/s, MB on disk) of one conversion into a fresh folder, by the command a user runs (in
    this process, its forked workers would inherit the loaders' torch threads and can hang)."""
    shutil.rmtree(shards, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "trainable.shards", str(folder), str(shards), "--codec", codec,
                           "--workers", str(workers), "--quiet"])
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.returncode)
    count = sum(1 for _ in folder.rglob("*.jpg"))
    return count / seconds, sum(p.stat().st_size for p in shards.iterdir()) / 1e6


def train_rate(shards: Path, args) -> float:
    """Images/s of training steps at 256 px on shards: the median step after a warm-up step."""
    import statistics

    from trainable.config import load_config
    from trainable.engine import Trainer, setup_process
    from trainable.loop import train_epoch
    cfg = load_config(None, ["data.dataset=shards", f"data.path={shards}", f"data.image_size={SIZE}",
                             f"data.loader_workers={args.workers}", "data.val_limit=8",
                             f"data.train_limit={args.batch_size * (TRAIN_STEPS + 1)}",
                             f"model.width={args.train_width}", f"train.batch_size={args.batch_size}",
                             f"train.device={args.device}"])
    setup_process(cfg)
    stamps = [time.perf_counter()]
    train_epoch(Trainer(cfg), lambda done, total: stamps.append(time.perf_counter()))
    gaps = [later - earlier for earlier, later in zip(stamps[1:], stamps[2:])]
    return args.batch_size / statistics.median(gaps)


def run(count: int, args, device: torch.device) -> float:
    """One size's rows; → the peak memory (MB) of any loader."""
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-data-")) / str(count)
    folder = work / "images"
    make_folder(folder, count, seed=1, distinct=args.distinct)
    source_mb = sum(p.stat().st_size for p in folder.rglob("*.jpg")) / 1e6
    linked = f", {args.distinct} distinct" if 0 < args.distinct < count else ""
    print(f"{count} images{linked} of {SIZE}px in {folder} ({source_mb:.0f} MB); {args.workers} workers, "
          f"batch {args.batch_size}, {args.batches} batches timed, device {device}")
    for codec in args.codecs:
        rate, megabytes = convert(folder, work / f"shards-{codec}", codec, args.workers)
        print(f"convert --codec {codec}: {rate:.0f} images/s, {megabytes:.0f} MB on disk")
    print(f"{'crop':>5} {'loader':<16} {'images/s':>9} {'ratio':>6} {'peak MB':>8}")
    peak = 0.0
    for crop in (256, 64):
        with PeakMemory() as memory:
            base = plain_rate(folder, crop, args, device)
        print(f"{crop:>5} {'(a) ImageFolder':<16} {base:>9.0f} {1:>6.2f} {memory.megabytes:>8.0f}")
        peak = max(peak, memory.megabytes)
        for codec in args.codecs:
            with PeakMemory() as memory:
                rate = shard_rate(work / f"shards-{codec}", crop, args, device)
            print(f"{crop:>5} {'(b) shards ' + codec:<16} {rate:>9.0f} {rate / base:>6.2f} {memory.megabytes:>8.0f}")
            peak = max(peak, memory.megabytes)
    if args.train_width:
        rate = train_rate(work / f"shards-{args.codecs[0]}", args)
        print(f"training at {SIZE}px from shards ({args.codecs[0]}), width {args.train_width}, batch "
              f"{args.batch_size}: {rate:.1f} images/s; a Places365 epoch ({PLACES365_TRAIN:,} images) "
              f"takes {PLACES365_TRAIN / rate / 3600:.0f} h at this rate")
    if not args.work:
        shutil.rmtree(work.parent)
    return peak


def each_size(count: int, args: argparse.Namespace) -> float:
    """One size's rows in a fresh process (one process measuring size after size carries the
    earlier sizes' heap into the later peaks); → its peak MB."""
    command = [sys.executable, "-m", "bench.data", "--images", str(count), "--workers", str(args.workers),
               "--batch-size", str(args.batch_size), "--batches", str(args.batches), "--device", args.device,
               "--codecs", *args.codecs, "--train-width", str(args.train_width), "--distinct", str(args.distinct)]
    if args.work:
        command += ["--work", args.work]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode:
        raise SystemExit(done.returncode)
    return float(done.stdout.rsplit(PEAK_LINE, 1)[1].split()[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[20_000], help="set sizes, each run in turn")
    parser.add_argument("--distinct", type=int, default=0,
                        help="make only this many images and hard-link them up to each size (0: all distinct)")
    parser.add_argument("--workers", type=int, default=2, help="loader (and conversion) workers, both sides")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40, help="batches timed per row")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default="", help="folder for the images and shards (default: a temp folder)")
    parser.add_argument("--codecs", nargs="+", default=["jpeg", "raw"])
    parser.add_argument("--train-width", type=float, default=0.0,
                        help="also time training steps at 256 px on the shards at this model.width")
    args = parser.parse_args(argv)
    if len(args.images) == 1:
        print(f"{PEAK_LINE} {run(args.images[0], args, torch.device(args.device)):.0f}")
        return 0
    peaks = [(count, each_size(count, args)) for count in args.images]
    if len(peaks) > 1:
        print("peak MB by size: " + ", ".join(f"{count} images: {peak:.0f}" for count, peak in peaks)
              + f" (largest / smallest {max(p for _, p in peaks) / min(p for _, p in peaks):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
