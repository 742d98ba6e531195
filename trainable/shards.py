"""`python -m trainable.shards SRC DST`: convert an image set once into shards (trainable.shard_format).

The images of SRC (trainable.shard_sources) are put in one order shuffled with `--seed`; its first
`--val-fraction` become the validation shards, the rest the training shards, `--shard-images` per
shard. Each image is made RGB (trainable.images), resized and center-cropped to `--size`, dropped
when gray (data.GRAY_CHROMA, as the in-memory path does), and stored as JPEG bytes (a JPEG already
at the size is kept as it is) or, with `--codec raw`, as uint8 pixels.

Each shard is written whole under a temp name and renamed, then listed in index.json; a killed
conversion continues when the same command runs again, writing only the shards not listed, so the
result is the same as one uninterrupted run. Unreadable images are skipped and named at the end.
Bad input is one line and exit 2, before anything is written.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import io
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from trainable.data import GRAY_CHROMA, mean_chroma, to_lab, val_count
from trainable.download import DataError
from trainable.files import write_bytes_atomic, write_text_atomic
from trainable.images import UNREADABLE, fit_square, open_image, to_rgb
from trainable.shard_format import (CODECS, INDEX, ShardError, check_shard, encode_shard, index_text,
                                    read_index, shard_name)
from trainable.shard_sources import find_source

GRAY_CHECK_SIZE = 32     # the gray test runs on a thumbnail: mean chroma barely depends on resolution
FULL_DISK = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
NAMED_SKIPS = 20         # unreadable images named in the last line; index.json lists them all

# trainable.files' temp names for our files: a kill between writing and renaming leaves one behind
OUR_TEMP = re.compile(r"^\.(index\.json|(train|val)-\d{6}\.bin)\..+\.tmp$")

_source = None           # the source being converted; set before the pool forks, so workers inherit it


def _encode(item, size: int, codec: str, quality: int) -> tuple[bytes, np.ndarray]:
    """One source item → (stored bytes, (size, size, 3) uint8 pixels); raises UNREADABLE errors."""
    if isinstance(item, np.ndarray):
        image = Image.fromarray(item)
        original = None
    else:
        opened = open_image(item, size)
        unchanged = (opened.format == "JPEG" and opened.mode == "RGB" and opened.size == (size, size)
                     and not opened.getexif().get(0x0112))
        original = item if unchanged else None     # already what we'd store: no second JPEG generation
        image = to_rgb(opened)
    pixels = np.asarray(fit_square(image, size))
    if codec == "raw":
        return pixels.tobytes(), pixels
    if original is None:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        original = buffer.getvalue()
    return original, pixels


def _gray(thumbs: list[np.ndarray]) -> np.ndarray:
    """Which of these (GRAY_CHECK_SIZE², 3) uint8 thumbnails are gray by the in-memory path's rule."""
    if not thumbs:
        return np.zeros(0, dtype=bool)
    return (mean_chroma(to_lab(np.stack(thumbs), "cpu")) < GRAY_CHROMA).numpy()


def build_shard(dst: Path, settings: dict, split: str, number: int, items: np.ndarray) -> tuple[str, dict]:
    """Write one shard of these source items; → (its name, its index entry)."""
    blobs, thumbs, unreadable = [], [], []
    for item in items.tolist():
        try:
            blob, pixels = _encode(_source.read(item), settings["image_size"], settings["codec"], settings["quality"])
        except UNREADABLE:
            unreadable.append(_source.names[item])
            continue
        blobs.append(blob)
        thumbs.append(np.asarray(Image.fromarray(pixels).resize((GRAY_CHECK_SIZE,) * 2, Image.Resampling.BILINEAR)))
    gray = _gray(thumbs)
    data = encode_shard([blob for blob, is_gray in zip(blobs, gray) if not is_gray])
    name = shard_name(split, number)
    write_bytes_atomic(dst / name, data)
    entry = {"split": split, "count": int((~gray).sum()), "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "gray": int(gray.sum()), "unreadable": unreadable}
    return name, entry


def plan(count: int, seed: int, val_fraction: float, per_shard: int) -> list[tuple[str, int, np.ndarray]]:
    """(split, number, source items) of every shard: one seeded shuffle, its head to validation."""
    order = np.random.default_rng(seed).permutation(count)
    val = val_count(count, val_fraction)
    tasks = []
    for split, part in (("val", order[:val]), ("train", order[val:])):
        tasks += [(split, k, part[start:start + per_shard]) for k, start in enumerate(range(0, len(part), per_shard))]
    return tasks


def _die_with_parent() -> None:
    """A worker ends when the converter is killed, instead of writing shards nobody lists."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_task(task) -> tuple[str, dict]:
    return build_shard(*task)


def _check_destination(src: Path, dst: Path) -> None:
    src_resolved, dst_resolved = src.resolve(), dst.resolve()
    if src.is_dir() and (dst_resolved == src_resolved or src_resolved in dst_resolved.parents):
        raise ShardError(f"{dst}: inside the source folder {src}; put the shards outside it")
    if dst.exists() and not dst.is_dir():
        raise ShardError(f"{dst}: a file, not a folder; give a new or empty folder for the shards")
    if dst.is_dir() and any(not OUR_TEMP.match(p.name) for p in dst.iterdir()) and not (dst / INDEX).is_file():
        raise ShardError(f"{dst}: not empty and holds no {INDEX}; give a new or empty folder for the shards")


def _settings(args, source) -> dict:
    listing = hashlib.sha256("\n".join(source.names).encode()).hexdigest()
    return {"source": str(Path(args.src).expanduser().resolve()), "kind": source.kind,
            "images": len(source.names), "listing_sha256": listing, "image_size": args.size,
            "codec": args.codec, "quality": args.quality, "seed": args.seed,
            "val_fraction": args.val_fraction, "shard_images": args.shard_images}


def _done_shards(dst: Path, settings: dict) -> dict:
    """The shards an earlier run of this same conversion finished (checked), or {} for a new one."""
    index = read_index(dst)
    if index is None:
        return {}
    if index.settings != settings:
        changed = sorted(k for k in settings if index.settings.get(k) != settings[k])
        raise ShardError(f"{dst}: holds a conversion with other {', '.join(changed)}; "
                         f"give a new folder or repeat that conversion's command")
    present = {name: entry for name, entry in index.shards.items() if (dst / name).is_file()}
    for name, entry in present.items():   # a missing one is written again; a damaged one is refused
        check_shard(dst / name, entry, checksum=True)
    return present


def _summary(dst: Path, shards: dict, seconds: float, converted: int) -> str:
    unreadable = sorted(name for entry in shards.values() for name in entry["unreadable"])
    gray = sum(entry["gray"] for entry in shards.values())
    counts = {split: sum(e["count"] for e in shards.values() if e["split"] == split) for split in ("train", "val")}
    megabytes = sum(e["bytes"] for e in shards.values()) / 1e6
    rate = f"{converted / max(seconds, 1e-9):.0f} images/s this run" if converted else "all checked, nothing left to do"
    line = (f"{dst}: {counts['train']} train + {counts['val']} val images in {len(shards)} shards, "
            f"{megabytes:.1f} MB ({rate}); "
            f"dropped {gray} gray; skipped {len(unreadable)} unreadable")
    if unreadable:
        more = f" … (+{len(unreadable) - NAMED_SKIPS}, all in {INDEX})" if len(unreadable) > NAMED_SKIPS else ""
        line += ": " + ", ".join(unreadable[:NAMED_SKIPS]) + more
    return line


def _progress(show: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    return Progress(TextColumn("converting"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                    TimeRemainingColumn(), transient=True, disable=not show)


def convert(src: Path, dst: Path, args, show: bool = True) -> str:
    """Convert SRC into DST (continuing an earlier run of the same command); → the summary line."""
    global _source
    if not src.exists():
        raise ShardError(f"{src}: no such file or folder; give the images to convert")
    _check_destination(src, dst)
    source = find_source(src)
    settings = _settings(args, source)
    shards = _done_shards(dst, settings)
    every = plan(len(source.names), args.seed, args.val_fraction, args.shard_images)
    tasks = [(dst, settings, split, k, items) for split, k, items in every if shard_name(split, k) not in shards]
    dst.mkdir(parents=True, exist_ok=True)
    for stale in (p for p in dst.iterdir() if OUR_TEMP.match(p.name)):
        stale.unlink()
    write_text_atomic(dst / INDEX, index_text(settings, shards, complete=not tasks))
    _source, start = source, time.perf_counter()
    planned = len(shards) + len(tasks)
    converted = sum(len(task[-1]) for task in tasks)
    with _progress(show) as bar:
        bar_task = bar.add_task("", total=len(source.names), completed=len(source.names) - converted)
        for name, entry in _results(tasks, args.workers):
            shards[name] = entry
            write_text_atomic(dst / INDEX, index_text(settings, shards, complete=len(shards) == planned))
            bar.advance(bar_task, entry["count"] + entry["gray"] + len(entry["unreadable"]))
    return _summary(dst, shards, time.perf_counter() - start, converted)


def _results(tasks: list, workers: int):
    """Each task's (name, entry) as it finishes: in this process, or from a pool of forked workers."""
    if workers <= 1 or len(tasks) <= 1:
        yield from (_run_task(task) for task in tasks)
        return
    with multiprocessing.get_context("fork").Pool(workers, initializer=_die_with_parent) as pool:
        yield from pool.imap_unordered(_run_task, tasks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainable.shards", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="image folder, Places365 folder or .tar, CIFAR-10 folder/archive, or .npz")
    parser.add_argument("dst", help="folder for the shards (new, empty, or an unfinished conversion)")
    parser.add_argument("--size", type=int, default=256, help="stored image side in pixels")
    parser.add_argument("--codec", choices=CODECS, default="jpeg", help="JPEG bytes or raw uint8 pixels")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="share of images held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the global shuffle and the split")
    parser.add_argument("--shard-images", type=int, default=1024, help="images per shard")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="conversion processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size < 8 or args.shard_images < 1 or not 0 < args.val_fraction < 1 or not 1 <= args.quality <= 100:
        parser.error("--size must be >= 8, --shard-images >= 1, --val-fraction in (0, 1), --quality in 1..100")
    src, dst = Path(args.src).expanduser(), Path(args.dst).expanduser()
    try:
        print(convert(src, dst, args, show=not args.quiet))
    except DataError as err:
        print(err, file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in FULL_DISK:
            raise
        print(f"{dst}: disk full while writing ({err.strerror}); the shards written so far are kept — "
              f"free space and run the same command again to continue", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
